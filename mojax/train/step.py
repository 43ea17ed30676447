"""One pure train step for every method: ``train_step(state, batch, rng) -> (state, metrics)``.

The method is the *objective* plugged in (see :mod:`mojax.train.objectives`): an :class:`Objective` whose
``fn(model, batch, rng, hparams) -> (loss, metrics)`` reads its hyper-parameters from ``hparams`` — the traced
``TrainState.hparams`` — so one compiled step serves every value of β, α, λ, w … (a sweep or a method's rounds);
stateful objectives (MORE) also read and write ``state.extras``. A plain ``objective(model, batch, rng)`` or a
legacy :class:`StatefulObjective` is wrapped with no hyper-parameters. The step merges the model from ``graphdef``
and the state, differentiates the objective with respect to the trainable variables only, accumulates over
microbatches, applies the optax update, and drops non-finite updates.

Gradients are float32 from the differentiation on (accumulated, clipped and given to the optimizer in float32)
whatever the parameters' storage dtype; with bfloat16 parameters the optimizer keeps float32 master weights
(:mod:`mojax.train.precision`).

Accumulation averages by sum/count: an objective reports how many examples its loss averages over as
``metrics["count"]`` (default 1); the step differentiates ``loss · count`` per microbatch, sums, and divides by the
total count, so ``accum_steps = A`` on a batch equals one step on the whole batch for any loss that is a mean of
per-example terms, whatever the masks (tunix's ``WeightedMetric``). Metrics are averaged the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mojax.sharding import constrain
from mojax.train.precision import apply_update, to_float32
from mojax.train.state import TrainState, batch_axis, batch_shardings, replicated

COUNT = "count"

PlainObjective = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
HParamValue = float | tuple[float, ...]


def _hparam_array(name: str, value: Any) -> np.ndarray:
    """A hyper-parameter value as a float32 scalar or vector, refusing non-finite values (one-line error)."""
    arr = np.asarray(value, np.float32) if not isinstance(value, jax.Array) else np.asarray(jax.device_get(value),
                                                                                           np.float32)
    if arr.ndim > 1:
        raise ValueError(f"hyper-parameter {name!r} must be a scalar or a vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.all(np.isfinite(np.asarray(value, np.float64))):
        raise ValueError(f"hyper-parameter {name!r} must be finite, got {value!r}")
    return arr


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Objective:
    """A method as the train step sees it: a pure function plus the defaults of its traced hyper-parameters.

    Attributes:
      fn: ``fn(model, batch, rng, hparams) -> (loss, metrics)``; with ``init_extras``,
        ``fn(model, batch, rng, hparams, extras) -> (loss, metrics, new_extras)``. ``hparams`` maps each name of
        :attr:`hparams` to a float32 array (scalar or vector) — a traced input of the step, never a Python constant.
      hparams: name → default value (a float, or a tuple of floats for a vector such as SPO's α or MO-DPO's w).
        ``TrainState.hparams`` holds their current values; changing them never recompiles. Values must be finite.
      init_extras: ``init_extras(model) -> extras`` for stateful objectives (the initial ``TrainState.extras``;
        ``model`` is the module or its zero-argument builder), or None.

    Equality is identity; the step cache of :func:`mojax.train.fit` keys on ``(fn, init_extras)``, so factories that
    return the same ``fn`` for the same static options (the library's do) share one compiled step across a sweep.
    """

    fn: Callable[..., Any]
    hparams: Mapping[str, HParamValue] = dataclasses.field(default_factory=dict)
    init_extras: Callable[[Any], Any] | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Objective.fn must be callable, got {type(self.fn)!r}")
        for name, value in self.hparams.items():
            if not isinstance(name, str):
                raise TypeError(f"hyper-parameter names must be strings, got {name!r}")
            _hparam_array(name, value)
        object.__setattr__(self, "hparams", dict(self.hparams))

    @property
    def stateful(self) -> bool:
        """Whether the objective carries ``TrainState.extras`` across steps."""
        return self.init_extras is not None

    def initial_hparams(self, overrides: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
        """The defaults with ``overrides`` applied, as float32 arrays (checked: known names, same shapes, finite)."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.hparams))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}; this objective has {sorted(self.hparams)}")
        out = {}
        for name, default in self.hparams.items():
            base = _hparam_array(name, default)
            value = _hparam_array(name, overrides.get(name, default))
            if value.shape != base.shape:
                if base.ndim == 1 and value.ndim == 0:
                    value = np.full(base.shape, value, np.float32)
                else:
                    raise ValueError(f"hyper-parameter {name!r} has shape {base.shape}, got {value.shape}")
            out[name] = jnp.asarray(value)
        return out

    def __call__(self, model, batch, rng, extras=None, *, hparams: Mapping[str, Any] | None = None):
        """Evaluate eagerly (or inside a user's own trace) with the defaults, or ``hparams`` where given."""
        values = {**self.initial_hparams(), **dict(hparams or {})}
        if self.stateful:
            return self.fn(model, batch, rng, values, extras)
        return self.fn(model, batch, rng, values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatefulObjective:
    """Legacy stateful objective without hyper-parameters (prefer :class:`Objective` with ``init_extras``).

    Attributes:
      fn: ``fn(model, batch, rng, extras) -> (loss, metrics, new_extras)``; pure.
      init_extras: ``init_extras(model) -> extras`` — the initial method state (a pytree of arrays).
    """

    fn: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]]
    init_extras: Callable[[], Any]

    def __call__(self, model, batch, rng, extras):
        return self.fn(model, batch, rng, extras)


@functools.lru_cache(maxsize=256)
def _wrap(objective: Any) -> Objective:
    # Cached so that wrapping the same plain function twice gives the same Objective (and one compiled step).
    if isinstance(objective, StatefulObjective):
        return Objective(fn=lambda model, batch, rng, hparams, extras: objective.fn(model, batch, rng, extras),
                         init_extras=objective.init_extras)
    return Objective(fn=lambda model, batch, rng, hparams: objective(model, batch, rng))


def as_objective(objective: Objective | StatefulObjective | PlainObjective) -> Objective:
    """``objective`` as an :class:`Objective`: plain ``objective(model, batch, rng)`` callables and legacy
    :class:`StatefulObjective` are wrapped with no hyper-parameters (the same wrapper for the same object)."""
    if isinstance(objective, Objective):
        return objective
    if not callable(objective):
        raise TypeError(f"an objective must be an Objective or a callable(model, batch, rng), got {type(objective)!r}")
    try:
        return _wrap(objective)
    except TypeError:  # unhashable callable: wrap without caching
        return _wrap.__wrapped__(objective)


def init_extras(objective: Objective | StatefulObjective | PlainObjective, model: Any) -> Any:
    """The initial ``TrainState.extras`` an objective needs for ``model`` (``{}`` for stateless objectives)."""
    obj = as_objective(objective)
    return obj.init_extras(model) if obj.stateful else {}


def initial_hparams(objective: Objective | StatefulObjective | PlainObjective,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    """The initial ``TrainState.hparams`` of ``objective`` (its defaults, with ``overrides``)."""
    return as_objective(objective).initial_hparams(overrides)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with linear warmup, cosine (or constant) decay and global-norm clipping.

    ``optax.chain(clip_by_global_norm(max_grad_norm), adamw(schedule, b1, b2, eps, weight_decay))``; set
    ``max_grad_norm=0`` to disable clipping. ``decay_steps=0`` keeps the learning rate constant after warmup.
    """

    learning_rate: float = 1e-3
    """Peak learning rate (after warmup)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 (0 = none)."""
    decay_steps: int = 0
    """Length of the cosine decay, warmup included (0 = constant after warmup)."""
    end_learning_rate_ratio: float = 0.0
    """Learning rate at the end of the cosine decay, as a fraction of the peak."""
    b1: float = 0.9
    """Adam's first-moment decay."""
    b2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-8
    """Adam's denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    max_grad_norm: float = 1.0
    """Clip gradients to this global norm (0 = no clipping)."""

    def __post_init__(self):
        # A NaN/inf here would make every update non-finite (the step would skip them all) or, before the update
        # guard, write NaN parameters: refuse it with one line instead (issue 14 §3).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"optimizer.{f.name} must be finite, got {value}")
        if self.learning_rate <= 0:
            raise ValueError(f"optimizer.learning_rate must be positive, got {self.learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1) or self.eps <= 0:
            raise ValueError(f"optimizer needs 0 <= b1, b2 < 1 and eps > 0, got b1={self.b1}, b2={self.b2}, "
                             f"eps={self.eps}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.end_learning_rate_ratio < 0:
            raise ValueError("optimizer.weight_decay, max_grad_norm and end_learning_rate_ratio must be >= 0")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The learning-rate schedule of ``config`` (warmup → cosine decay, or constant)."""
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate}")
    if config.warmup_steps < 0 or config.decay_steps < 0:
        raise ValueError("warmup_steps and decay_steps must be >= 0")
    if config.decay_steps:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if config.warmup_steps else config.learning_rate, peak_value=config.learning_rate,
            warmup_steps=config.warmup_steps, decay_steps=max(config.decay_steps, config.warmup_steps + 1),
            end_value=config.learning_rate * config.end_learning_rate_ratio)
    if config.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
             optax.constant_schedule(config.learning_rate)], [config.warmup_steps])
    return optax.constant_schedule(config.learning_rate)


@functools.lru_cache(maxsize=64)
def make_optimizer(config: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm, adamw(schedule))`` from an :class:`OptimizerConfig`.

    Cached per (frozen, hashable) config: equal configs give the same transformation object, so a sweep of
    ``fit`` calls reuses the jitted ``tx.init`` and the compiled step keyed on it instead of recompiling each run.
    """
    if config.max_grad_norm < 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0 disables clipping), got {config.max_grad_norm}")
    adamw = optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay)
    if config.max_grad_norm == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)


def split_microbatches(batch: Mapping[str, jax.Array], accum_steps: int) -> dict[str, jax.Array]:
    """Reshape every entry's example axis B into a leading ``[A, B/A]`` (microbatch ``a`` = examples ``a::A``).

    Strided rather than contiguous microbatches: with B split over the devices in contiguous blocks, each microbatch
    then keeps ``B/(A·devices)`` examples on every device, so no data moves between devices.
    """
    out = {}
    for name, x in batch.items():
        axis = batch_axis(name, x.ndim)
        size = x.shape[axis]
        if size % accum_steps:
            raise ValueError(f"batch entry {name!r} has {size} examples, not divisible by accum_steps={accum_steps}")
        shape = x.shape[:axis] + (size // accum_steps, accum_steps) + x.shape[axis + 1:]
        x = jnp.moveaxis(x.reshape(shape), axis + 1, 0)  # [A, ..., B/A, ...]
        names = [None] * x.ndim
        names[axis + 1] = "batch"
        out[name] = constrain(x, *names)
    return out


def make_train_step(
    graphdef: nnx.GraphDef,
    objective: Objective | StatefulObjective | PlainObjective,
    tx: optax.GradientTransformation,
    *,
    accum_steps: int = 1,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the pure ``train_step(state, batch, rng) -> (state, metrics)``.

    Args:
      graphdef: from :func:`mojax.train.state.create_train_state`.
      objective: an :class:`Objective` (its ``fn`` gets ``state.hparams``; a name missing there falls back to the
        objective's default as a compile-time constant), a plain ``objective(model, batch, rng) -> (loss, metrics)``
        or a :class:`StatefulObjective`.
      tx: the optax transformation the state was created with (clipping lives in it, see :func:`make_optimizer`).
      accum_steps: microbatches per step (``jax.lax.scan``); the global batch must divide by it.

    Returns:
      The step. Its metrics: the objective's (count-weighted averages over microbatches), plus ``loss``,
      ``grad_norm`` (before clipping), ``finite`` (1 if the update was applied), ``skipped`` (running count of
      dropped non-finite updates) and ``count`` (examples in the step).
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    obj = as_objective(objective)
    defaults = obj.initial_hparams()

    def call(model, batch, rng, hparams, extras):
        if obj.stateful:
            return obj.fn(model, batch, rng, hparams, extras)
        loss, metrics = obj.fn(model, batch, rng, hparams)
        return loss, metrics, extras

    def weighted_loss(params, rest, batch, rng, extras, hparams):
        model = nnx.merge(graphdef, params, rest)
        loss, metrics, extras = call(model, batch, rng, hparams, extras)
        metrics = dict(metrics)
        count = jax.lax.stop_gradient(jnp.asarray(metrics.pop(COUNT, 1.0), jnp.float32))
        metrics["loss"] = loss
        return loss * count, (metrics, extras, count)

    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

    def accumulate(state, batch, rng, hp):
        if accum_steps == 1:
            (_, (metrics, extras, count)), grads = grad_fn(state.params, state.rest, batch, rng, state.extras, hp)
            metrics = jax.tree.map(lambda m: m * count, metrics)
            return to_float32(grads), metrics, extras, count
        micro = split_microbatches(batch, accum_steps)
        rngs = jax.random.split(rng, accum_steps)
        first = jax.tree.map(lambda x: x[0], micro)
        _, (metric_shapes, _, _) = jax.eval_shape(weighted_loss, state.params, state.rest, first, rngs[0],
                                                  state.extras, hp)
        zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)  # noqa: E731

        def body(carry, xs):
            grads, metrics, extras, count = carry
            mb, key = xs
            (_, (m, extras, c)), g = grad_fn(state.params, state.rest, mb, key, extras, hp)
            grads = jax.tree.map(jnp.add, grads, to_float32(g))  # float32 sums whatever the parameters' dtype
            metrics = jax.tree.map(lambda acc, v: acc + v * c, metrics, m)
            return (grads, metrics, extras, count + c), None

        init = (to_float32(jax.tree.map(jnp.zeros_like, state.params)), zeros(metric_shapes), state.extras,
                jnp.float32(0))
        (grads, metrics, extras, count), _ = jax.lax.scan(body, init, (micro, rngs))
        return grads, metrics, extras, count

    def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        hp = {**defaults, **state.hparams}  # traced values win; defaults only for a state built without them
        grads, metric_sums, extras, count = accumulate(state, batch, rng, hp)
        # An all-padding batch has count 0: its gradient sum is 0, keep it 0 rather than 0/0.
        safe = jnp.maximum(count, 1e-12)
        grads = jax.tree.map(lambda g: g / safe, grads)
        metrics = jax.tree.map(lambda m: m / safe, metric_sums)
        # The guard reads one scalar, the global norm (the clip and the metric compute it too; XLA shares it): it is
        # non-finite iff a gradient entry is, or ‖g‖² overflows float32 (no clipping makes such an update useful).
        # A per-leaf `all(isfinite)` gives the same verdict otherwise, but XLA copied its `and` chain into each
        # per-leaf `where(finite, new, old)` fusion: 18.1k HLO instructions instead of 9.6k and ~60 MiB more compile
        # memory on the tiny DPO benchmark (docs/benchmarks.md).
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # bf16 parameters with master weights (mojax.train.precision): the float32 master rounded, not p + u
        params = apply_update(state.params, updates, opt_state)
        # The update and the new parameters too: finite gradients can still give an inf update (an inf learning
        # rate of a hand-built optax chain) or overflowing parameters (a 1e38 learning rate): nothing non-finite is
        # ever written. Norms again: non-finite iff an entry is, or the sum of squares overflows float32
        # (|x| > ~1e19, no usable parameter).
        finite = (jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(updates))
                  & jnp.isfinite(optax.tree.norm(params)))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        skipped = state.skipped + (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            extras=keep(extras, state.extras),
            skipped=skipped,
        )
        metrics.update(grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                       skipped=skipped, count=count)
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, state_shardings: TrainState, batch: Mapping[str, Any], mesh: Mesh, *,
                   compiler_options: Mapping[str, Any] | None = None):
    """``jax.jit`` the step once: state in and out on its shardings (donated), batch split over ``"batch"``.

    ``batch`` is an example batch (arrays or ``ShapeDtypeStruct``) giving the entries and their ranks. Call (and so
    trace) the result under ``jax.set_mesh(mesh)`` so that ``mojax.sharding.constrain`` sees the mesh, as
    :func:`mojax.train.fit` does; ``compiler_options`` go to XLA.
    """
    rep = replicated(mesh)
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings(batch, mesh), rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,),
                   compiler_options=dict(compiler_options) if compiler_options else None)
