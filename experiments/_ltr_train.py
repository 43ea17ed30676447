"""COS-DPO learning-to-rank training: the rankers, the methods' objectives, one host loop per run, evaluation.

:class:`Experiment` holds the task, the mesh, the base ranker and the compiled steps; it trains the base (ListNet
on relevance), builds every fine-tuning model from one initialisation, runs DPO-LS / W-COS-DPO and scores and
evaluates test fronts. The method-level protocol is :mod:`experiments.cos_dpo_ltr`.
"""

from __future__ import annotations

import dataclasses
import functools
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
from mojax.losses import rescale_temperature
from mojax.metrics import ndcg
from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig, num_params
from mojax.simplex import simplex_sampler, simplex_weights
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.objectives import (
    COSDPOSampling,
    ltr_cos_dpo_objective,
    ltr_listnet_objective,
    ltr_modpo_objective,
    ltr_scalarized_dpo_objective,
)
from mojax.train.objectives.ranking import correction
from mojax.train.state import create_train_state
from mojax.train.step import Objective, OptimizerConfig, jit_train_step, make_optimizer, make_train_step

# Training batches hold ``features [B,L,F]``, ``where [B,L]``, ``labels [B,K,L]`` (the auxiliary objectives; the
# base's ``[B,1,L]`` is the main relevance label), ``ref_scores [B,L]`` and, per method, ``weights [B,K]``
# (W-COS-DPO, drawn on the host) or ``single_diffs [B,K,L]`` (MO-DPO). The objectives are mojax.train's ``ltr_*``.


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
        # f_θ − f_ref: the augmentation network's correction itself, or a fresh ranker against the cached base scores
        self.ref_mode = "model" if config.conditioning == "augment" else "cached"
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

    def fit(self, name: str, model: nnx.Module, objective: Objective, data: Mapping[str, np.ndarray], *,
            steps: int, seed: int, wrt: Any = nnx.Param, tx=None, hparams: Mapping[str, Any] | None = None,
            sampler: Callable[[np.random.Generator, int], Mapping[str, np.ndarray]] | None = None,
            desc: str = "", resume: Trained | None = None) -> Trained:
        """Train ``model`` for ``steps`` steps with the engine's step, jitted once per (``name``, optimizer) and reused.

        ``data`` holds per-query arrays (batches are drawn epoch by epoch in a seeded order); ``hparams`` overrides
        the objective's hyper-parameters (the weight of a DPO-LS run), traced inputs of the same step;
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
                graphdef, state, shardings = create_train_state(model, tx, mesh=self.mesh, rng=seed, wrt=wrt,
                                                                hparams=objective.initial_hparams(hparams))
            else:
                if (name, tx) not in self._steps:
                    raise ValueError(f"resume needs the step of {name!r} compiled by an earlier run")
                graphdef, state, shardings = resume.graphdef, resume.state, None
            batch_size = min(c.batch_size, len(next(iter(data.values()))))
            num = len(next(iter(data.values())))
            rng = np.random.default_rng(seed)
            order = np.concatenate([rng.permutation(num) for _ in range(-(-steps * batch_size // num))])
            # Raw threefry keys drawn on the host: any uint32 pair is a valid key, and jax.random.split(key, steps)
            # would compile a new program for every distinct run length (~0.25 s each, inside the timed run).
            keys = np.random.default_rng([seed, 1]).integers(0, 2**32, size=(steps, 2), dtype=np.uint32)
            draws = np.random.default_rng([seed, 2])
            sample = (lambda: sampler(draws, batch_size)) if sampler is not None else dict
            compile_timer = Timer()
            if (name, tx) not in self._steps:
                with compile_timer:
                    example = {k: v[:batch_size] for k, v in data.items()} | (
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
                batch = {k: v[idx] for k, v in data.items()} | sample()
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
        self.train_data = {"features": self.train.features, "where": self.train.where, "labels": self.train.aux}
        base_data = self.train_data | {"labels": self.train.main[:, None]}
        self.base = self.fit("base", model, ltr_listnet_objective(), base_data, steps=c.base_steps, seed=c.seed,
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
        obj = ltr_scalarized_dpo_objective(weights=tuple(weights[0].tolist()), beta=c.beta, label_norm=c.label_norm,
                                           ref_mode=self.ref_mode)
        seed = c.seed + 1 if seed is None else seed
        runs = []
        for i, w in enumerate(weights):
            model, wrt = self.finetune_model(0)
            runs.append(self.fit("dpo_ls", model, obj, self.train_data, steps=steps or c.run_steps, seed=seed, wrt=wrt,
                                 hparams={"weights": w}, desc=f"DPO-LS {i + 1}/{len(weights)}"))
        return runs

    def run_modpo(self, weights: np.ndarray, singles: list[Trained]) -> list[Trained]:
        """MO-DPO: one run per weight against the single-objective models ``singles`` (one per objective)."""
        c = self.config
        single_diffs = np.stack([self.scores(s, self.train, self.ref_train) for s in singles], 1)  # [Q, K, L]
        data = self.train_data | {"single_diffs": single_diffs}
        obj = ltr_modpo_objective(weights=tuple(weights[0].tolist()), beta=c.beta, label_norm=c.label_norm,
                                  ref_mode=self.ref_mode)
        runs = []
        for i, w in enumerate(weights):
            model, wrt = self.finetune_model(0)
            runs.append(self.fit("mo_dpo", model, obj, data, steps=c.run_steps, seed=c.seed + 1, wrt=wrt,
                                 hparams={"weights": w}, desc=f"MO-DPO {i + 1}/{len(weights)}"))
        return runs

    def train_w_cos(self, beta: float, *, steps: int | None = None, resume: Trained | None = None,
                    seed: int | None = None) -> Trained:
        """The one W-COS-DPO run (``cos_steps`` steps at temperature ``beta``), or ``steps`` more of ``resume``.

        ``seed`` sets the data order and the weight draws (default ``config.seed + 1``); the initialisation is fixed.
        """
        c = self.config
        k = self.num_objectives
        model, wrt = (None, None) if resume is not None else self.finetune_model(k)
        # w comes from the host sampler (batch["weights"]); `sampling` tells the objective K and the scalarisation
        sampling = COSDPOSampling(num_objectives=k, concentration=c.concentration, per_example=c.per_example_weights)
        obj = ltr_cos_dpo_objective(sampling=sampling, beta=c.beta, penalty=c.penalty, label_norm=c.label_norm,
                                    ref_mode=self.ref_mode)
        draw = simplex_sampler(k, c.concentration, per_example=c.per_example_weights,
                               vertex_fraction=c.vertex_fraction)
        sampler = lambda rng, size: {"weights": draw(rng, size)}  # noqa: E731
        # a resumed chunk draws a fresh data order and fresh weights (another seed), as a longer run would
        seed = (c.seed + 1 if seed is None else seed) + (0 if resume is None else int(resume.state.step))
        return self.fit("w_cos_dpo", model, obj, self.train_data, steps=steps or c.cos_steps, seed=seed, wrt=wrt,
                        hparams={"beta": beta}, sampler=sampler, desc=f"W-COS-DPO β={beta:g}",
                        resume=resume)

    def train_t_cos(self) -> Trained:
        """The one T-COS-DPO run: conditioned on (w, β/‖β‖₁), both drawn in the step (one per step), β_k
        log-uniform in ``tcos_beta_range``; objective k trains at K·β·d_k (see ``ltr_cos_dpo_objective``)."""
        c, k = self.config, self.num_objectives
        lo, hi = c.tcos_beta_range
        sampling = COSDPOSampling(num_objectives=k, concentration=c.concentration, temperature=True, beta_min=lo,
                                  beta_max=hi)
        obj = ltr_cos_dpo_objective(sampling=sampling, beta=c.beta, penalty=c.penalty, label_norm=c.label_norm,
                                    ref_mode=self.ref_mode)
        model, wrt = self.finetune_model(2 * k)
        return self.fit("t_cos_dpo", model, obj, self.train_data, steps=c.cos_steps, seed=c.seed + 1, wrt=wrt,
                        desc="T-COS-DPO")

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
                                       split.features, split.where, ref, conds, self.ref_mode))

    def evaluate(self, diff: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean test NDCG@k of each auxiliary label ``[K]`` and of the main label, for scores ``ref + diff``."""
        t = self.test
        values = np.asarray(_mean_ndcgs(jnp.asarray(ref) + jnp.asarray(diff), t.aux, t.main, t.where,
                                        self.config.ndcg_k))
        return values[:-1], float(values[-1])


def _compile_options() -> dict[str, Any] | None:
    """XLA options for the train steps on CPU: LLVM at -O1 without its expensive passes, legacy fusion emitters.

    Measured on 2 cores (docs/benchmarks-pareto-cost.md, DPO-LS step): 1.7 s CPU to compile and 2.0–2.3 ms per
    step, against 4.3 s and 2.5 ms at XLA's defaults and 1.9 s and 7.6 ms at backend level 0 (the earlier choice,
    whose unoptimised kernels made every step 3× slower). These tiny steps run ~230 small kernels, so compile time is per-kernel
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


@functools.partial(jax.jit, static_argnums=(0, 7))
def _diff_scores(graphdef, params, rest, features, where, ref, cond, ref_mode):
    # graphdef is static: runs of one architecture share a graph (equal, hashable), so this compiles once per shape.
    model = nnx.merge(graphdef, params, rest)
    return correction(model, {"features": features, "where": where, "ref_scores": ref}, ref_mode=ref_mode, cond=cond)


@functools.partial(jax.jit, static_argnums=4)
def _mean_ndcgs(scores, aux, main, where, k):
    """``[K + 1]``: mean NDCG@k over queries of each auxiliary label, then of the main label."""
    labels = jnp.concatenate([jnp.moveaxis(aux, 1, 0), main[None]], 0)  # [K + 1, Q, L]
    per_query = jax.vmap(lambda lab: ndcg(scores, lab, k=k, where=where))(labels)
    return jnp.mean(per_query.reshape(labels.shape[0], -1), -1)
