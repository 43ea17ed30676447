"""COS-DPO learning-to-rank training: the rankers, the methods' objectives, one host loop per run, evaluation.

:class:`Experiment` holds the task, the mesh, the base ranker and the compiled steps; it trains the base (ListNet
on relevance), builds every fine-tuning model from one initialisation, runs DPO-LS / W-COS-DPO and scores and
evaluates test fronts. The method-level protocol is :mod:`experiments.cos_dpo_ltr`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments._common import Timer
from experiments._ltr_task import Task, load_task
from mojax.losses import rescale_temperature
from mojax.metrics import ndcg
from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig, num_params
from mojax.simplex import simplex_sampler, simplex_weights
from mojax.train import OptimizerConfig, TrainConfig, TrainResult, clear_step_cache, fit, make_optimizer
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.objectives import (
    COSDPOSampling,
    ltr_cos_dpo_objective,
    ltr_listnet_objective,
    ltr_modpo_objective,
    ltr_scalarized_dpo_objective,
)
from mojax.train.objectives.ranking import correction
from mojax.train.step import Objective

# Training batches hold ``features [B,L,F]``, ``where [B,L]``, ``labels [B,K,L]`` (the auxiliary objectives; the
# base's ``[B,1,L]`` is the main relevance label), ``ref_scores [B,L]`` and, per method, ``weights [B,K]``
# (W-COS-DPO, drawn on the host) or ``single_diffs [B,K,L]`` (MO-DPO). The objectives are mojax.train's ``ltr_*``.


LOG_EVERY = 10  # steps between metric fetches (the loss curves): fetching every step would sync the host each step


def ranker_config(config: Any, num_features: int, *, d_model: int, cond_dim: int = 0) -> ListRankerConfig:
    """The ranker shape of the experiment's ``config`` (layers, heads, MLP) at width ``d_model``."""
    return ListRankerConfig(num_features=num_features, d_model=d_model, num_layers=config.num_layers,
                            num_heads=config.num_heads, mlp_dim=config.mlp_dim, cond_dim=cond_dim)


@dataclasses.dataclass
class Trained:
    """A finished run: ``mojax.train.fit``'s result, its train-loss curve (every ``LOG_EVERY`` steps) and its wall
    and process-CPU time (model placement and the step's compilation included; ``compile_*`` the compiling part,
    0 when the method's step was already compiled)."""

    result: TrainResult
    losses: np.ndarray
    seconds: float
    compile_seconds: float = 0.0
    cpu_seconds: float = 0.0  # steadier than wall time on a shared machine
    compile_cpu_seconds: float = 0.0
    wrt: Any = nnx.Param  # the trainable-variable filter (a resumed run keeps it, and so its compiled step)

    @property
    def graphdef(self) -> Any:
        return self.result.graphdef

    @property
    def state(self) -> Any:
        return self.result.state

    @property
    def params(self) -> Any:
        return self.result.state.params

    @property
    def rest(self) -> Any:
        return self.result.state.rest


def compiler_options() -> tuple[str, ...]:
    """XLA options for the train steps on CPU: LLVM at -O1 without its expensive passes, legacy fusion emitters.

    Measured on 2 cores (docs/benchmarks-pareto-cost.md, DPO-LS step): 1.7 s CPU to compile and 2.0–2.3 ms per
    step, against 4.3 s and 2.5 ms at XLA's defaults and 1.9 s and 7.6 ms at backend level 0 (the earlier choice,
    whose unoptimised kernels made every step 3× slower). These tiny steps run ~230 small kernels, so compile time is
    per-kernel code generation and -O1 is enough for the kernels. Numerics are unchanged (same loss to 1e-6). Other
    backends keep their defaults.
    """
    if jax.default_backend() != "cpu":
        return ()
    return ("xla_backend_optimization_level=1", "xla_llvm_disable_expensive_passes=True",
            "xla_cpu_use_fusion_emitters=False")


def host_batches(data: Mapping[str, np.ndarray], *, steps: int, batch_size: int, seed: int,
                 sampler: Callable[[np.random.Generator, int], Mapping[str, np.ndarray]] | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """``steps`` batches of per-query arrays ``data``, epoch by epoch in a ``seed``ed order, plus ``sampler``'s
    per-step host draws (W-COS-DPO's weights, from their own stream of the same seed)."""
    num = len(next(iter(data.values())))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(num) for _ in range(-(-steps * batch_size // num))])
    draws = np.random.default_rng([seed, 2])
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield {k: v[idx] for k, v in data.items()} | (dict(sampler(draws, batch_size)) if sampler else {})


class Experiment:
    """Holds the data, the mesh and the base ranker; runs fine-tunings through :func:`mojax.train.fit` (whose
    process-wide cache keeps one compiled step per method) and evaluates their test fronts."""

    def __init__(self, config: Any):
        self.config = config
        self.mesh = make_mesh(MeshConfig())
        self.train, self.test, self.objective_names, self.data_info = load_task(config)
        self.label_norm = self.data_info["label_norm"]  # `auto` resolved from the labels' sparsity
        self.num_objectives = self.train.aux.shape[1]
        self.num_features = self.train.features.shape[-1]
        # the weights every method's front is evaluated at
        self.weights = simplex_weights(self.num_objectives, config.num_weights, seed=config.seed).astype(np.float32)
        # f_θ − f_ref: the augmentation network's correction itself, or a fresh ranker against the cached base scores
        self.ref_mode = "model" if config.conditioning == "augment" else "cached"
        self._txs: dict[OptimizerConfig, Any] = {}

    def finetune_optimizer(self, steps: int) -> OptimizerConfig:
        """The fine-tuning optimizer of a run of ``steps`` steps: constant, or cosine-decayed over that budget.

        Equal configs share a compiled step (``fit``'s cache keys on the config's value), so every run of a method
        with the same budget reuses one compile.
        """
        decay = steps if self.config.lr_schedule == "cosine" else 0
        return OptimizerConfig(learning_rate=self.config.learning_rate, decay_steps=decay)

    # -- training ---------------------------------------------------------------------------------------------

    def fit(self, model: nnx.Module | None, objective: Objective, data: Mapping[str, np.ndarray], *, steps: int,
            seed: int, wrt: Any = nnx.Param, optimizer: OptimizerConfig | None = None,
            hparams: Mapping[str, Any] | None = None,
            sampler: Callable[[np.random.Generator, int], Mapping[str, np.ndarray]] | None = None, desc: str = "",
            resume: Trained | None = None) -> Trained:
        """Train ``model`` for ``steps`` steps with :func:`mojax.train.fit` (in memory; one compiled step per
        objective, optimizer and batch shape, reused by every run of a method).

        ``data`` holds per-query arrays (see :func:`host_batches`; ``sampler`` adds per-step host draws);
        ``hparams`` sets the objective's traced hyper-parameters for this run (a DPO-LS weight, a β). ``optimizer``
        defaults to :meth:`finetune_optimizer` of ``steps``. ``resume`` continues an earlier run with a constant
        step size (``model`` and ``wrt`` are then the earlier run's).
        """
        c = self.config
        if resume is not None and optimizer is None and c.lr_schedule != "constant":
            raise ValueError("resume continues a constant-step-size run; a decaying schedule ends with its run "
                             "(train one run of the whole budget instead)")
        optimizer = optimizer or self.finetune_optimizer(steps)
        batch_size = min(c.batch_size, len(next(iter(data.values()))))
        start = 0 if resume is None else int(resume.state.step)
        wrt = wrt if resume is None else resume.wrt  # part of fit's step-cache key: the same filter reuses the step
        config = TrainConfig(steps=start + steps, batch_size=batch_size, seed=seed, log_every=LOG_EVERY,
                             progress=c.progress, progress_desc=desc, compiler_options=compiler_options())
        batches = host_batches(data, steps=steps, batch_size=batch_size, seed=seed, sampler=sampler)
        with Timer() as timer:
            result = fit(model if resume is None else resume.result, objective, batches, config=config,
                         optimizer=self._optimizer(optimizer), mesh=self.mesh, hparams=hparams, wrt=wrt, run_dir=None)
            jax.block_until_ready(result.state)
        return Trained(result, result.metrics("loss"), timer.seconds, result.compile_seconds, timer.cpu_seconds,
                       result.compile_cpu_seconds, wrt)

    def _optimizer(self, config: OptimizerConfig) -> Any:
        """One optax transformation per config, passed to ``fit`` as is: its ``init`` is then the same function on
        every run, so ``create_train_state``'s jitted ``tx.init`` compiles once instead of once per run (a fresh
        transformation per run cost ~0.2–0.5 s each — over a 150-step DPO-LS run's own time)."""
        if config not in self._txs:
            self._txs[config] = make_optimizer(config)
        return self._txs[config]

    # -- the base ranker and the fine-tuning models ----------------------------------------------------------

    def train_base(self) -> Trained:
        """Train the base ranker (ListNet on the main relevance label) and cache its scores as ``f_ref``."""
        c = self.config
        model = ListRanker(ranker_config(c, self.num_features, d_model=c.base_d_model), rngs=nnx.Rngs(c.seed))
        self.train_data = {"features": self.train.features, "where": self.train.where, "labels": self.train.aux}
        base_data = self.train_data | {"labels": self.train.main[:, None]}
        self.base = self.fit(model, ltr_listnet_objective(), base_data, steps=c.base_steps, seed=c.seed,
                             optimizer=OptimizerConfig(learning_rate=c.base_learning_rate), desc="base (ListNet)")
        self.base_model = nnx.merge(self.base.graphdef, self.base.params, self.base.rest)
        ref_fn = jax.jit(lambda f, w: self.base_model(f, where=w))
        with jax.set_mesh(self.mesh):
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
        kept on the host; each run gets its own copy (the train step donates its whole state, frozen base
        included, so runs must not share buffers).
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

    @staticmethod
    def drop_compiled() -> None:
        """Forget every compiled train step (``mojax.train.clear_step_cache``): the next run of each method
        compiles again (cold-start timing)."""
        clear_step_cache()

    def run_dpo_ls(self, weights: np.ndarray, *, seed: int | None = None, steps: int | None = None) -> list[Trained]:
        """DPO-LS: one run of ``run_steps`` (or ``steps``) per weight, all from the same initialisation and data order.

        ``seed`` sets the data order (default ``config.seed + 1``, the experiment's); the initialisation is fixed.
        """
        c = self.config
        obj = ltr_scalarized_dpo_objective(weights=tuple(weights[0].tolist()), beta=c.beta, label_norm=self.label_norm,
                                           ref_mode=self.ref_mode)
        seed = c.seed + 1 if seed is None else seed
        runs = []
        for i, w in enumerate(weights):
            model, wrt = self.finetune_model(0)
            runs.append(self.fit(model, obj, self.train_data, steps=steps or c.run_steps, seed=seed, wrt=wrt,
                                 hparams={"weights": w}, desc=f"DPO-LS {i + 1}/{len(weights)}"))
        return runs

    def run_modpo(self, weights: np.ndarray, singles: list[Trained]) -> list[Trained]:
        """MO-DPO: one run per weight against the single-objective models ``singles`` (one per objective)."""
        c = self.config
        single_diffs = np.stack([self.scores(s, self.train, self.ref_train) for s in singles], 1)  # [Q, K, L]
        data = self.train_data | {"single_diffs": single_diffs}
        obj = ltr_modpo_objective(weights=tuple(weights[0].tolist()), beta=c.beta, label_norm=self.label_norm,
                                  ref_mode=self.ref_mode)
        runs = []
        for i, w in enumerate(weights):
            model, wrt = self.finetune_model(0)
            runs.append(self.fit(model, obj, data, steps=c.run_steps, seed=c.seed + 1, wrt=wrt,
                                 hparams={"weights": w}, desc=f"MO-DPO {i + 1}/{len(weights)}"))
        return runs

    def train_w_cos(self, beta: float, *, steps: int | None = None, resume: Trained | None = None,
                    seed: int | None = None, concentration: float | None = None,
                    vertex_fraction: float | None = None) -> Trained:
        """The one W-COS-DPO run (``cos_steps`` steps at temperature ``beta``), or ``steps`` more of ``resume``.

        ``seed`` sets the data order and the weight draws (default ``config.seed + 1``); the initialisation is fixed.
        ``concentration`` and ``vertex_fraction`` override the config's weight sampler (the vertex-coverage
        variant of :mod:`experiments.cos_dpo_ltr`).
        """
        c = self.config
        k = self.num_objectives
        model, wrt = (None, None) if resume is not None else self.finetune_model(k)
        alpha = c.concentration if concentration is None else concentration
        share = c.vertex_fraction if vertex_fraction is None else vertex_fraction
        # w comes from the host sampler (batch["weights"]); `sampling` tells the objective K and the scalarisation,
        # and keeps the config's α (unused in the step) so that a variant sampler shares the compiled step
        sampling = COSDPOSampling(num_objectives=k, concentration=c.concentration, per_example=c.per_example_weights)
        obj = ltr_cos_dpo_objective(sampling=sampling, beta=c.beta, penalty=c.penalty, label_norm=self.label_norm,
                                    ref_mode=self.ref_mode)
        draw = simplex_sampler(k, alpha, per_example=c.per_example_weights, vertex_fraction=share)
        sampler = lambda rng, size: {"weights": draw(rng, size)}  # noqa: E731
        # a resumed chunk draws a fresh data order and fresh weights (another seed), as a longer run would
        seed = (c.seed + 1 if seed is None else seed) + (0 if resume is None else int(resume.state.step))
        return self.fit(model, obj, self.train_data, steps=steps or c.cos_steps, seed=seed, wrt=wrt,
                        hparams={"beta": beta}, sampler=sampler, desc=f"W-COS-DPO β={beta:g}",
                        resume=resume)

    def train_t_cos(self) -> Trained:
        """The one T-COS-DPO run: conditioned on (w, β/‖β‖₁), both drawn in the step (one per step), β_k
        log-uniform in ``tcos_beta_range``; objective k trains at K·β·d_k (see ``ltr_cos_dpo_objective``)."""
        c, k = self.config, self.num_objectives
        lo, hi = c.tcos_beta_range
        sampling = COSDPOSampling(num_objectives=k, concentration=c.concentration, temperature=True, beta_min=lo,
                                  beta_max=hi)
        obj = ltr_cos_dpo_objective(sampling=sampling, beta=c.beta, penalty=c.penalty, label_norm=self.label_norm,
                                    ref_mode=self.ref_mode)
        model, wrt = self.finetune_model(2 * k)
        return self.fit(model, obj, self.train_data, steps=c.cos_steps, seed=c.seed + 1, wrt=wrt,
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
        with jax.set_mesh(self.mesh):
            return np.asarray(_diff_scores(trained.graphdef, trained.params if params is None else params,
                                           trained.rest, split.features, split.where, ref, conds, self.ref_mode))

    def soup(self, weights: np.ndarray, singles: list[Trained]) -> Any:
        """DPO Soup's parameters at ``weights``: the single-objective runs' parameters mixed leaf by leaf."""
        with jax.set_mesh(self.mesh):
            return _soup(jnp.asarray(weights), [s.params for s in singles])

    def rescale(self, diff: np.ndarray, beta_from: float, beta_to: float) -> np.ndarray:
        """Prop. 3.1: the correction ``f − f_ref`` of a model trained at ``beta_from`` served at ``beta_to``."""
        with jax.set_mesh(self.mesh):
            return np.asarray(_rescale(diff, np.zeros_like(diff), beta_from, beta_to))

    def evaluate(self, diff: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean test NDCG@k of each auxiliary label ``[K]`` and of the main label, for scores ``ref + diff``."""
        t = self.test
        with jax.set_mesh(self.mesh):
            values = np.asarray(_mean_ndcgs(jnp.asarray(ref) + jnp.asarray(diff), t.aux, t.main, t.where,
                                            self.config.ndcg_k))
        return values[:-1], float(values[-1])


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
