"""COS-DPO learning-to-rank training: the rankers, the methods' objectives, one host loop per run, evaluation.

:class:`Experiment` holds the task, the mesh, the base ranker and the compiled steps; it trains the base (ListNet
on relevance), builds every fine-tuning model from one initialisation, runs DPO-LS / W-COS-DPO and scores and
evaluates test fronts. The method-level protocol is :mod:`experiments.cos_dpo_ltr`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from experiments._common import Timer
from experiments._ltr_task import Task, load_task
from mojax.losses import (
    listnet_loss,
    listwise_dpo_loss,
    normalize_temperatures,
    rescale_temperature,
    sample_simplex_weights,
    scalarized_loss,
)
from mojax.metrics import ndcg
from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig, num_params
from mojax.simplex import simplex_sampler, simplex_weights
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.state import create_train_state
from mojax.train.step import OptimizerConfig, jit_train_step, make_optimizer, make_train_step

# Batches hold ``features [B,L,F]``, ``where [B,L]``, ``main [B,L]``, ``aux [B,K,L]``, ``ref_scores [B,L]`` and,
# per method, ``weights [B,K]`` (DPO-LS, MO-DPO) or ``single_diff [B,K,L]`` (MO-DPO).
# ----------------------------------------------------------------------------------------------------------------


def policy_diff(model: nnx.Module, batch: Mapping[str, jax.Array], cond: jax.Array | None) -> jax.Array:
    """``f_θ − f_ref`` on the batch's lists ``[B, L]``.

    For the augmentation network that is exactly the correction ``g_θ`` (the frozen base never runs in training);
    for a ranker trained from scratch the base's cached scores ``batch["ref_scores"]`` are subtracted.
    """
    if isinstance(model, AugmentedRanker):
        return model.delta(batch["features"], where=batch["where"], cond=cond)
    return model(batch["features"], where=batch["where"], cond=cond) - batch["ref_scores"]


def per_objective_losses(diff: jax.Array, batch: Mapping[str, jax.Array], beta: jax.Array | float,
                         label_norm: str) -> jax.Array:
    """Listwise DPO of every auxiliary objective, per list: ``[B, K]``.

    ``beta`` is a scalar or ``[B or 1, K]`` (per-objective temperatures, T-COS-DPO).
    """
    beta = jnp.asarray(beta, jnp.float32)
    beta = beta[..., None] if beta.ndim == 2 else beta
    return listwise_dpo_loss(diff[:, None, :], jnp.zeros((), jnp.float32), batch["aux"], beta=beta,
                             where=batch["where"][:, None, :], label_norm=label_norm, reduce_fn=None)


def _objective_metrics(per_obj: jax.Array) -> dict[str, jax.Array]:
    means = jnp.mean(per_obj, 0)
    return {f"loss_{k}": means[k] for k in range(per_obj.shape[1])}


def listnet_objective(label_key: str = "main") -> Callable:
    """Base ranker: ListNet (softmax label normalisation) on the main relevance label."""

    def objective(model, batch, rng):
        del rng
        scores = model(batch["features"], where=batch["where"])
        return listnet_loss(scores, batch[label_key], where=batch["where"], label_norm="softmax"), {}

    return objective


def fixed_weight_objective(*, beta: float, label_norm: str) -> Callable:
    """DPO-LS: ``Σ_k w_k ℓ_k`` with w read from the batch (``weights [B,K]``), so one compile serves every weight."""

    def objective(model, batch, rng):
        del rng
        per_obj = per_objective_losses(policy_diff(model, batch, None), batch, beta, label_norm)
        return scalarized_loss(per_obj, batch["weights"]), _objective_metrics(per_obj)

    return objective


def modpo_objective(*, beta: float, label_norm: str) -> Callable:
    r"""MO-DPO (Zhou et al. 2023) for lists, docs/methods/cos-dpo.md.

    With k = argmax w and the single-objective models' implicit rewards r_j = β(f_j − f_ref)
    (``batch["single_diff"]`` = f_j − f_ref, ``[B,K,L]``), ListNet on objective k's labels with the scores
    :math:`s = \frac{1}{w_k}\big(\beta(f_θ − f_{ref}) − \sum_{j≠k} w_j r_j\big)` — the listwise form of
    ``mojax.losses.modpo_loss`` (whose pairwise margin is this with L = 2). k = argmax w keeps 1/w_k ≤ K.
    """

    def objective(model, batch, rng):
        del rng
        w = batch["weights"]  # [B, K]
        k = jnp.argmax(w, axis=-1)  # [B]
        w_k = jnp.take_along_axis(w, k[:, None], -1)[:, 0]
        rewards = beta * batch["single_diff"]  # [B, K, L]
        others = jnp.einsum("bk,bkl->bl", w, rewards) - w_k[:, None] * jnp.take_along_axis(
            rewards, k[:, None, None], 1)[:, 0]
        diff = policy_diff(model, batch, None)
        scores = (beta * diff - others) / w_k[:, None]
        labels = jnp.take_along_axis(batch["aux"], k[:, None, None], 1)[:, 0]
        loss = listnet_loss(scores, labels, where=batch["where"], label_norm=label_norm)
        return loss, {}

    return objective


def w_cos_objective(*, label_norm: str, penalty: float, per_example: bool) -> Callable:
    """W-COS-DPO (eq. 12, with the eq. 18 penalty): the model conditioned on w, loss ``Σ_k w_k ℓ_k − μ·cos``.

    w ~ Dirichlet(α·1) is drawn on the host, one per step or one per list (:func:`mojax.simplex.simplex_sampler`), and read from
    ``batch["weights"] [B,K]`` (equal rows for one w per step); the temperature from ``batch["beta"] [B]``, so runs
    at several β (the Prop. 3.1 check) share a compile. Host draws keep ``jax.random.dirichlet``'s rejection-sampling
    loops out of the compiled step, which then compiles like DPO-LS's (docs/benchmarks-pareto-cost.md: ~0.5 s less per W-COS-DPO run
    on CPU, the step no slower).
    """

    def objective(model, batch, rng):
        del rng
        w = batch["weights"]  # [B, K]
        beta = batch["beta"][:, None]  # [B, 1]: one temperature for every objective
        per_obj = per_objective_losses(policy_diff(model, batch, w), batch, beta, label_norm)
        # Per step: the penalty's cosine is of the batch-mean loss vector (eq. 18); per example: of each list's.
        losses = per_obj if per_example else jnp.mean(per_obj, 0)
        loss = scalarized_loss(losses, w if per_example else w[0], penalty=penalty)
        return loss, _objective_metrics(per_obj)

    return objective


def t_cos_objective(*, beta: float, label_norm: str, num_objectives: int, concentration: float, penalty: float,
                    beta_range: tuple[float, float]) -> Callable:
    r"""T-COS-DPO (eqs. 15–16): condition on (w, d), d = β/‖β‖₁, β_k ~ log-uniform(``beta_range``) per step.

    By Prop. 3.1 only the direction d matters: objective k is trained at temperature :math:`s_0 d_k` with the fixed
    scale :math:`s_0 = K·\beta` (so d = 1/K trains every objective at the common β), and the model serves any
    :math:`\beta = s d` by ``rescale_temperature(f, f_ref, s_0, s)``.
    """
    lo, hi = math.log(beta_range[0]), math.log(beta_range[1])
    scale = num_objectives * beta

    def objective(model, batch, rng):
        size = batch["features"].shape[0]
        rng_w, rng_b = jax.random.split(rng)
        w = sample_simplex_weights(rng_w, (), num_objectives, concentration=concentration)
        betas = jnp.exp(jax.random.uniform(rng_b, (num_objectives,), minval=lo, maxval=hi))
        direction, _ = normalize_temperatures(betas)
        cond = jnp.broadcast_to(jnp.concatenate([w, direction]), (size, 2 * num_objectives))
        per_obj = per_objective_losses(policy_diff(model, batch, cond), batch, scale * direction[None], label_norm)
        return scalarized_loss(jnp.mean(per_obj, 0), w, penalty=penalty), _objective_metrics(per_obj)

    return objective


# ----------------------------------------------------------------------------------------------------------------
# Models, training and evaluation
# ----------------------------------------------------------------------------------------------------------------


def ranker_config(config: Any, num_features: int, *, d_model: int, cond_dim: int = 0) -> ListRankerConfig:
    return ListRankerConfig(num_features=num_features, d_model=d_model, num_layers=config.num_layers,
                            num_heads=config.num_heads, mlp_dim=config.mlp_dim, cond_dim=cond_dim)


@dataclasses.dataclass
class Trained:
    """A finished run: the model's graph and train state, the train-loss curve and its wall time (compile included)."""

    graphdef: Any
    state: Any
    losses: np.ndarray
    seconds: float
    compile_seconds: float = 0.0  # the part of ``seconds`` spent compiling the step (first run of a method only)
    cpu_seconds: float = 0.0  # process CPU time of the run (steadier than wall time on a shared machine)
    compile_cpu_seconds: float = 0.0

    @property
    def params(self) -> Any:
        return self.state.params

    @property
    def rest(self) -> Any:
        return self.state.rest


class Experiment:
    """Holds the data, the mesh, the base ranker and one jitted step per method; runs and evaluates fine-tunings."""

    def __init__(self, config: Any):
        self.config = config
        self.mesh = make_mesh(MeshConfig())
        self.train, self.test, self.objective_names = load_task(config)
        self.num_objectives = self.train.aux.shape[1]
        self.num_features = self.train.features.shape[-1]
        # the weights every method's front is evaluated at
        self.weights = simplex_weights(self.num_objectives, config.num_weights, seed=config.seed).astype(np.float32)
        self.tx = make_optimizer(OptimizerConfig(learning_rate=config.learning_rate))
        self._txs: dict[int, Any] = {}
        self._steps: dict[tuple[str, Any], Callable] = {}

    def finetune_tx(self, steps: int):
        """The fine-tuning optimizer of a run of ``steps`` steps: constant, or cosine-decayed over that budget.

        One object per budget, so the runs of a method that share a budget share its compiled step.
        """
        if self.config.lr_schedule == "constant":
            return self.tx
        if steps not in self._txs:
            self._txs[steps] = make_optimizer(OptimizerConfig(learning_rate=self.config.learning_rate,
                                                              decay_steps=steps))
        return self._txs[steps]

    # -- training ---------------------------------------------------------------------------------------------

    def fit(self, name: str, model: nnx.Module, objective: Callable, data: Mapping[str, np.ndarray], *,
            steps: int, seed: int, wrt: Any = nnx.Param, tx=None, fixed: Mapping[str, np.ndarray] | None = None,
            sampler: Callable[[np.random.Generator, int], Mapping[str, np.ndarray]] | None = None,
            desc: str = "", resume: Trained | None = None) -> Trained:
        """Train ``model`` for ``steps`` steps with the engine's step, jitted once per (``name``, optimizer) and reused.

        ``data`` holds per-query arrays (batches are drawn epoch by epoch in a seeded order); ``fixed`` holds
        per-run entries broadcast over the batch (the weight of a DPO-LS run), traced inputs of the same step;
        ``sampler(rng, batch_size)`` draws per-step entries on the host (W-COS-DPO's weights), seeded from ``seed``.
        ``tx`` defaults to :meth:`finetune_tx` of ``steps``. ``resume`` continues an earlier run of the same method
        with a constant step size (its state is donated: the earlier ``Trained`` is spent); ``model`` and ``wrt``
        are then ignored.
        """
        c = self.config
        if resume is not None and tx is None and c.lr_schedule != "constant":
            raise ValueError("resume continues a constant-step-size run; a decaying schedule ends with its run "
                             "(train one run of the whole budget instead)")
        tx = (self.tx if resume is not None else self.finetune_tx(steps)) if tx is None else tx
        with Timer() as timer:
            if resume is None:
                graphdef, state, shardings = create_train_state(model, tx, mesh=self.mesh, rng=seed, wrt=wrt)
            else:
                if (name, tx) not in self._steps:
                    raise ValueError(f"resume needs the step of {name!r} compiled by an earlier run")
                graphdef, state, shardings = resume.graphdef, resume.state, None
            batch_size = min(c.batch_size, len(next(iter(data.values()))))
            num = len(next(iter(data.values())))
            rng = np.random.default_rng(seed)
            order = np.concatenate([rng.permutation(num) for _ in range(-(-steps * batch_size // num))])
            extra = {k: np.broadcast_to(v, (batch_size, *np.shape(v))) for k, v in (fixed or {}).items()}
            # Raw threefry keys drawn on the host: any uint32 pair is a valid key, and jax.random.split(key, steps)
            # would compile a new program for every distinct run length (~0.25 s each, inside the timed run).
            keys = np.random.default_rng([seed, 1]).integers(0, 2**32, size=(steps, 2), dtype=np.uint32)
            draws = np.random.default_rng([seed, 2])
            sample = (lambda: sampler(draws, batch_size)) if sampler is not None else dict
            compile_timer = Timer()
            if (name, tx) not in self._steps:
                with compile_timer:
                    example = {k: v[:batch_size] for k, v in data.items()} | extra | (
                        sampler(np.random.default_rng(0), batch_size) if sampler is not None else {})
                    jitted = jit_train_step(make_train_step(graphdef, objective, tx), shardings, example, self.mesh)
                    # Compiled ahead of time, once per method and optimizer; every run of the method with the same
                    # budget (every DPO-LS weight) reuses it.
                    self._steps[name, tx] = jitted.lower(state, example, keys[0]).compile(
                        compiler_options=_compile_options())
            step_fn = self._steps[name, tx]
            losses = []
            for i in tqdm(range(steps), desc=desc or name, leave=False, disable=not c.progress, file=sys.stderr):
                idx = order[i * batch_size:(i + 1) * batch_size]
                batch = {k: v[idx] for k, v in data.items()} | extra | sample()
                state, metrics = step_fn(state, batch, keys[i])
                losses.append(metrics["loss"])
            jax.block_until_ready(state)
        return Trained(graphdef, state, np.asarray(jax.device_get(losses)), timer.seconds, compile_timer.total,
                       timer.cpu_seconds, compile_timer.cpu_total)

    # -- the base ranker and the fine-tuning models ----------------------------------------------------------

    def train_base(self) -> Trained:
        """Train the base ranker (ListNet on the main relevance label) and cache its scores as ``f_ref``."""
        c = self.config
        model = ListRanker(ranker_config(c, self.num_features, d_model=c.base_d_model), rngs=nnx.Rngs(c.seed))
        base_tx = make_optimizer(OptimizerConfig(learning_rate=c.base_learning_rate))
        self.train_data = {"features": self.train.features, "where": self.train.where, "main": self.train.main,
                           "aux": self.train.aux}
        self.base = self.fit("base", model, listnet_objective(), self.train_data, steps=c.base_steps, seed=c.seed,
                             tx=base_tx, desc="base (ListNet)")
        self.base_model = nnx.merge(self.base.graphdef, self.base.params, self.base.rest)
        ref_fn = jax.jit(lambda f, w: self.base_model(f, where=w))
        self.ref_train = np.asarray(ref_fn(self.train.features, self.train.where))
        self.ref_test = np.asarray(ref_fn(self.test.features, self.test.where))
        self.train_data["ref_scores"] = self.ref_train
        self.base_point, self.base_main = self.evaluate(np.zeros_like(self.ref_test), self.ref_test)
        self._initial: dict[int, tuple[Any, Any, Any]] = {}
        return self.base

    def finetune_model(self, cond_dim: int) -> tuple[nnx.Module, Any]:
        """A fresh fine-tuning model with ``cond_dim`` conditioning inputs, and its trainable-variable filter.

        Every run of every method starts from the same initialisation (seed + 1) for its shape: soups average runs
        that share their initialisation, and the methods differ only in their objectives. Built once per shape and
        then copied from host arrays, since the train step donates its whole state (frozen base included) and runs
        must not share buffers.
        """
        c = self.config
        if cond_dim not in self._initial:
            cfg = ranker_config(c, self.num_features, d_model=c.d_model, cond_dim=cond_dim)
            rngs = nnx.Rngs(c.seed + 1)
            if c.conditioning == "augment":
                model, wrt = AugmentedRanker(nnx.merge(self.base.graphdef, self.base.params, self.base.rest),
                                             ListRanker(cfg, rngs=rngs)), AugmentedRanker.trainable
            else:
                model, wrt = ListRanker(cfg, rngs=rngs), nnx.Param
            graphdef, state = nnx.split(model)
            self._initial[cond_dim] = (graphdef, jax.device_get(state), wrt)
        graphdef, state, wrt = self._initial[cond_dim]
        return nnx.merge(graphdef, jax.tree.map(np.array, state)), wrt

    def drop_compiled(self, name: str) -> None:
        """Forget the compiled steps of method ``name``, so its next run compiles again (cold-start timing)."""
        self._steps = {key: fn for key, fn in self._steps.items() if key[0] != name}

    def run_dpo_ls(self, weights: np.ndarray, *, seed: int | None = None, steps: int | None = None) -> list[Trained]:
        """DPO-LS: one run of ``run_steps`` (or ``steps``) per weight, all from the same initialisation and data order.

        ``seed`` sets the data order (default ``config.seed + 1``, the experiment's); the initialisation is fixed.
        """
        c = self.config
        obj = fixed_weight_objective(beta=c.beta, label_norm=c.label_norm)
        seed = c.seed + 1 if seed is None else seed
        runs = []
        for i, w in enumerate(weights):
            model, wrt = self.finetune_model(0)
            runs.append(self.fit("dpo_ls", model, obj, self.train_data, steps=steps or c.run_steps, seed=seed, wrt=wrt,
                                 fixed={"weights": w}, desc=f"DPO-LS {i + 1}/{len(weights)}"))
        return runs

    def train_w_cos(self, beta: float, *, steps: int | None = None, resume: Trained | None = None,
                    seed: int | None = None) -> Trained:
        """The one W-COS-DPO run (``cos_steps`` steps at temperature ``beta``), or ``steps`` more of ``resume``.

        ``seed`` sets the data order and the weight draws (default ``config.seed + 1``); the initialisation is fixed.
        """
        c = self.config
        k = self.num_objectives
        model, wrt = (None, None) if resume is not None else self.finetune_model(k)
        obj = w_cos_objective(label_norm=c.label_norm, penalty=c.penalty, per_example=c.per_example_weights)
        draw = simplex_sampler(k, c.concentration, per_example=c.per_example_weights,
                               vertex_fraction=c.vertex_fraction)
        sampler = lambda rng, size: {"weights": draw(rng, size)}  # noqa: E731
        # a resumed chunk draws a fresh data order and fresh weights (another seed), as a longer run would
        seed = (c.seed + 1 if seed is None else seed) + (0 if resume is None else int(resume.state.step))
        return self.fit("w_cos_dpo", model, obj, self.train_data, steps=steps or c.cos_steps, seed=seed, wrt=wrt,
                        fixed={"beta": np.float32(beta)}, sampler=sampler, desc=f"W-COS-DPO β={beta:g}",
                        resume=resume)

    def w_cos_diffs(self, trained: Trained, weights: np.ndarray) -> list[np.ndarray]:
        """Test-set corrections ``f − f_ref`` of a weight-conditioned model at each weight."""
        return [self.scores(trained, self.test, self.ref_test, cond=w) for w in weights]

    def count(self, cond_dim: int) -> int:
        """Trained parameters of one fine-tuning model (the frozen base excluded)."""
        model, wrt = self.finetune_model(cond_dim)
        return num_params(model, wrt)

    def eval_points(self, diffs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Aux NDCG points ``[n, K]`` and main NDCG ``[n]`` of test-set corrections ``f − f_ref`` (one per weight)."""
        pts, mains = zip(*(self.evaluate(d, self.ref_test) for d in diffs))
        return np.stack(pts), np.asarray(mains)

    # -- evaluation -------------------------------------------------------------------------------------------

    def scores(self, trained: Trained, split: Task, ref: np.ndarray, cond: np.ndarray | None = None,
               params: Any = None) -> np.ndarray:
        """``f_θ − f_ref`` on every list of ``split`` ``[Q, L]`` (``cond`` ``[C]`` broadcast to all queries)."""
        conds = None if cond is None else np.broadcast_to(np.asarray(cond, np.float32), (len(split), len(cond)))
        return np.asarray(_diff_scores(trained.graphdef, trained.params if params is None else params, trained.rest,
                                       split.features, split.where, ref, conds))

    def evaluate(self, diff: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean test NDCG@k of each auxiliary label ``[K]`` and of the main label, for scores ``ref + diff``."""
        t = self.test
        values = np.asarray(_mean_ndcgs(jnp.asarray(ref) + jnp.asarray(diff), t.aux, t.main, t.where,
                                        self.config.ndcg_k))
        return values[:-1], float(values[-1])


def _compile_options() -> dict[str, Any] | None:
    """XLA options for the train steps on CPU: LLVM at -O1 without its expensive passes, legacy fusion emitters.

    Measured on 2 cores (docs/benchmarks-pareto-cost.md, DPO-LS step): 1.7 s CPU to compile and 2.0–2.3 ms per step, against 4.3 s
    and 2.5 ms at XLA's defaults and 1.9 s and 7.6 ms at backend level 0 (the earlier choice, whose unoptimised
    kernels made every step 3× slower). These tiny steps run ~230 small kernels, so compile time is per-kernel
    code generation and -O1 is enough for the kernels. Numerics are unchanged (same loss to 1e-6). Other
    backends keep their defaults.
    """
    if jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True,
            "xla_cpu_use_fusion_emitters": False}


@jax.jit
def _soup(weights, params_list):
    """DPO Soup (Rame et al. 2024): ``θ(w) = Σ_k w_k θ_k`` leaf by leaf over the K single-objective models."""
    return jax.tree.map(lambda *leaves: sum(weights[k] * leaf for k, leaf in enumerate(leaves)), *params_list)


_rescale = jax.jit(rescale_temperature)


@functools.partial(jax.jit, static_argnums=0)
def _diff_scores(graphdef, params, rest, features, where, ref, cond):
    # graphdef is static: runs of one architecture share a graph (equal, hashable), so this compiles once per shape.
    model = nnx.merge(graphdef, params, rest)
    return policy_diff(model, {"features": features, "where": where, "ref_scores": ref}, cond)


@functools.partial(jax.jit, static_argnums=4)
def _mean_ndcgs(scores, aux, main, where, k):
    """``[K + 1]``: mean NDCG@k over queries of each auxiliary label, then of the main label."""
    labels = jnp.concatenate([jnp.moveaxis(aux, 1, 0), main[None]], 0)  # [K + 1, Q, L]
    per_query = jax.vmap(lambda lab: ndcg(scores, lab, k=k, where=where))(labels)
    return jnp.mean(per_query.reshape(labels.shape[0], -1), -1)
