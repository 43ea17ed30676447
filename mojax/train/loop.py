"""The one host loop, :func:`fit`: small functions around the one jitted step, for the CLI and every experiment.

``fit(...)`` owns the run directory when given one (resolved config JSON, data report, ``metrics.jsonl``, optional
TensorBoard, checkpoints, resume; ``run_dir=None`` is an in-memory run with none of it, what sweeps use), the data
iterator (Grain: ``get_state``/``set_state`` go into every checkpoint), the progress bar with live loss, throughput
and skipped-step count, evaluation and metrics hooks, and SIGTERM-safe saving. The step itself
(:mod:`mojax.train.step`) does no I/O. Compiled steps are reused across calls through a process-wide cache keyed by
what the traced program depends on (objective function, graph, optimizer, mesh, batch signature, accumulation,
compiler options) — the objective's hyper-parameter *values* are step inputs, so a sweep over them compiles once.
Every jit here traces under ``jax.set_mesh(mesh)``, so the models' ``constrain`` calls take effect.

Resume semantics: on start, if ``checkpoint.resume`` and the checkpoint directory holds a complete checkpoint, the
whole ``TrainState`` and the iterator state are restored and training continues at ``state.step``; the resumed run
then takes exactly the same steps on exactly the same batches with the same keys as an uninterrupted run, so the
final parameters are bitwise identical (tested by killing a run with SIGKILL). ``metrics.jsonl`` is appended to, so
steps after the last checkpoint of a killed run appear twice (the later line wins).

Multi-process runs: every process runs this loop on its own share of the data; process 0 writes the run directory
and metrics, Orbax writes checkpoints cooperatively. The iterator state saved is process 0's: with lockstep Grain
iterators over per-process shards (``mojax.data.PipelineConfig``) every process's state is the same position.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mojax.train.checkpoint import CheckpointConfig, Checkpointer, StopFlag
from mojax.train.distributed import note_progress, shard_batch
from mojax.train.mesh import MeshConfig, check_global_batch, make_mesh
from mojax.train.jsonable import to_jsonable
from mojax.train.precision import master_weights, needs_master
from mojax.train.run_dir import DEFAULT_ALLOW, SkipMonitor, check_resume_step, claim_for_fit
from mojax.train.state import TrainState, batch_axis, create_train_state, replicated, step_key
from mojax.train.step import (COUNT, Objective, OptimizerConfig, StatefulObjective, as_objective, init_extras,
                              jit_train_step, make_optimizer, make_schedule, make_train_step)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The host loop's knobs (one config for the CLI and every experiment); defaults suit a laptop CPU.

    Attributes:
      steps: total optimizer steps (a resumed run stops at the same total).
      batch_size: examples per step (per process), for the callers that build the batches (the CLI, experiments);
        :func:`fit` takes whatever batches it is given.
      accum_steps: microbatches per step (gradient accumulation).
      seed: base of the run's RNG key (``TrainState.rng``).
      log_every: fetch metrics from the device every this many steps (and at the last): history, ``metrics.jsonl``,
        ``on_metrics`` and the progress bar.
      eval_every: call the evaluation hook every this many steps (0 = only at the end, if a hook is given).
      eval_at_start: also evaluate before the first step (step 0).
      run_dir: where the config, data report, metrics and checkpoints go; None = an in-memory run (no files).
      progress: show a tqdm progress bar (loss, throughput, skipped steps).
      progress_desc: the bar's label.
      tensorboard: also write TensorBoard scalars if ``tensorboardX`` is importable (only with a ``run_dir``).
      compiler_options: XLA options of the compiled step as ``"name=value"`` strings (``jax.jit(...,
        compiler_options=)``), e.g. ``("xla_cpu_enable_fast_math=false",)``; part of the step cache's key.
      count_unit: what the objective's ``count`` metric counts (``examples``; token-averaged losses such as SFT:
        ``tokens``): the logged throughput is ``<count_unit>_per_s``.
    """

    steps: int = 100
    batch_size: int = 8
    accum_steps: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_at_start: bool = False
    run_dir: str | None = None
    progress: bool = True
    progress_desc: str = "train"
    tensorboard: bool = True
    compiler_options: tuple[str, ...] = ()
    count_unit: str = "examples"

    def __post_init__(self):
        if not self.count_unit.isidentifier():
            raise ValueError(f"count_unit must be a word (it names the metric <count_unit>_per_s), got "
                             f"{self.count_unit!r}")
        if (self.steps < 0 or self.batch_size < 1 or self.accum_steps < 1 or self.log_every < 1
                or self.eval_every < 0):
            raise ValueError(f"invalid TrainConfig: steps >= 0, batch_size >= 1, accum_steps >= 1, log_every >= 1, "
                             f"eval_every >= 0 required, got {self}")
        for option in self.compiler_options:
            if "=" not in option or not option.split("=", 1)[0]:
                raise ValueError(f"compiler option {option!r} must be 'name=value'")

    def compiler_options_dict(self) -> dict[str, str] | None:
        """:attr:`compiler_options` as the dict ``jax.jit`` takes (None when empty)."""
        return dict(o.split("=", 1) for o in self.compiler_options) or None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What :func:`fit` returns: the final state, the graph to merge it with, and the run's bookkeeping.

    Attributes:
      state, graphdef: the final :class:`~mojax.train.TrainState` and its graph.
      run_dir: the run directory, or None for an in-memory run.
      start_step: the step the run started (or resumed) at.
      history: one dict per logged step (``{"step": s, **metrics}``, plus ``steps_per_s``,
        ``<TrainConfig.count_unit>_per_s`` and ``learning_rate``) and per evaluation
        (``{"step": s, "eval/<name>": value}``), in order.
      stopped: the stop flag ended the run early (after saving).
      seconds: wall time of the step loop (compilation included, evaluation excluded).
      compiled: whether this run compiled its step (False: reused from the process-wide step cache).
      compile_seconds, compile_cpu_seconds: wall and process-CPU time of the first step's call when it compiled
        (tracing, compilation and that one step; 0 when the step came from the cache) — part of ``seconds``.
    """

    state: TrainState
    graphdef: nnx.GraphDef
    run_dir: Path | None
    start_step: int
    history: list[dict[str, Any]]
    stopped: bool
    seconds: float = 0.0
    compiled: bool = True
    compile_seconds: float = 0.0
    compile_cpu_seconds: float = 0.0

    def model(self) -> nnx.Module:
        """The trained model (``nnx.merge(graphdef, params, rest)``)."""
        return nnx.merge(self.graphdef, self.state.params, self.state.rest)

    @property
    def skipped(self) -> int:
        """Steps whose update was dropped because the loss, a gradient or the update was not finite."""
        return int(self.state.skipped)

    def metrics(self, name: str) -> np.ndarray:
        """The logged values of one metric, in step order (``[steps]`` or ``[steps, ...]``)."""
        return np.asarray([h[name] for h in self.history if name in h])

    def evals(self) -> list[dict[str, Any]]:
        """The evaluation records (``{"step": s, "eval/<name>": value}``)."""
        return [h for h in self.history if any(k.startswith("eval/") for k in h)]


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard scalars when available)."""

    def __init__(self, run_dir: Path | None, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled and run_dir is not None
        enabled = self.enabled
        self.path = None if run_dir is None else run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional dependency
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` (scalars or small arrays) at ``step``."""
        if not self.enabled:
            return
        record = {"step": step, **{k: to_jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                value = np.asarray(value)
                if value.ndim == 0:
                    self._tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def prepare_run_dir(run_dir: str | Path, *, config: Any = None, data_report: Any = None) -> Path:
    """Create the run directory and write ``config.json`` (the resolved config) and ``data_report.json``."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        if config is not None:
            (path / "config.json").write_text(json.dumps(to_jsonable(config), indent=2, sort_keys=True))
        if data_report is not None:
            report = data_report.to_dict() if hasattr(data_report, "to_dict") else data_report
            (path / "data_report.json").write_text(json.dumps(to_jsonable(report), indent=2, sort_keys=True))
    return path


def _iterator_state(data: Any) -> dict[str, Any] | None:
    get = getattr(data, "get_state", None)
    return get() if callable(get) else None


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, Any]:
    out = {}
    for key, value in jax.device_get(dict(metrics)).items():
        value = np.asarray(value)
        out[key] = value.item() if value.ndim == 0 else value.tolist()
    return out


# Compiled steps by everything the traced program depends on (see `_step_key`): a later run of the same objective
# function on the same graph, optimizer, mesh and batch signature — another β of a sweep, SPO's next round, DPO-LS's
# next weight — reuses the executable instead of re-tracing and recompiling. Small: a process trains few methods.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()
_STEP_CACHE_SIZE = 16
_UNSET: Any = object()


def _batch_signature(batch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(np.shape(v)), str(getattr(v, "dtype", np.asarray(v).dtype)))
                        for k, v in batch.items()))


def _step_key(objective: Objective, graphdef, optimizer: Any, wrt: Any, mesh: Mesh, state: TrainState,
              batch: Mapping[str, Any], config: TrainConfig) -> tuple:
    """Everything the compiled step depends on: the objective's function (hyper-parameter *values* are inputs, not
    part of the key), the model graph, the optimizer, the trainable filter, the mesh, the batch and hparams
    signatures, accumulation and compiler options."""
    hp = tuple(sorted((k, tuple(np.shape(v))) for k, v in dict(state.hparams).items()))
    dtypes = tuple(sorted({str(x.dtype) for x in jax.tree.leaves(state.params)}))  # bf16 params: master weights
    return (objective.fn, objective.init_extras, graphdef, optimizer, repr(wrt), mesh, _batch_signature(batch), hp,
            jax.tree.structure(state.extras), config.accum_steps, config.compiler_options, dtypes)


def _compiled_step(key: tuple, build: Callable[[], Callable]) -> tuple[Callable, bool]:
    """The cached jitted step for ``key``, or a new one from ``build()``; returns ``(step, compiled_now)``."""
    hit = _STEP_CACHE.get(key)
    if hit is not None:
        _STEP_CACHE.move_to_end(key)
        return hit, False
    step = build()
    _STEP_CACHE[key] = step  # the key holds the objective's fn, the graph and optimizer: ids are never reused
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return step, True


def clear_step_cache() -> None:
    """Drop every cached compiled step (frees their executables)."""
    _STEP_CACHE.clear()


def _copy_module(model: nnx.Module) -> nnx.Module:
    """A copy with its own buffers: the step donates the state, which must not delete the caller's arrays."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def fit(
    model_or_state: nnx.Module | Callable[[], nnx.Module] | TrainResult,
    objective: Objective | StatefulObjective | Callable,
    batches: Iterable[Mapping[str, Any]],
    *,
    config: TrainConfig = TrainConfig(),
    optimizer: OptimizerConfig | optax.GradientTransformation = OptimizerConfig(),
    mesh: Mesh | None = None,
    hparams: Mapping[str, Any] | None = None,
    wrt: Any = nnx.Param,
    eval_fn: Callable[[int, nnx.Module], Mapping[str, Any]] | None = None,
    on_metrics: Callable[[int, dict[str, Any]], None] | None = None,
    run_dir: str | Path | None = _UNSET,
    run_config: Any = None,
    data_report: Any = None,
    checkpoint: CheckpointConfig = CheckpointConfig(),
    stop_flag: StopFlag | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    allow_changes: Sequence[str] = DEFAULT_ALLOW,
) -> TrainResult:
    """Train for ``config.steps`` steps with one compiled step, in memory or in a run directory (with resume).

    Args:
      model_or_state: an ``nnx.Module`` (copied: the caller's module is left untouched), a zero-argument builder
        (initialised straight onto the mesh, shard by shard), or a :class:`TrainResult` to continue from (its state,
        optimizer moments and step count; ``config.steps`` is then the new total).
      objective: an :class:`~mojax.train.Objective` (:mod:`mojax.train.objectives`), or a plain
        ``objective(model, batch, rng) -> (loss, metrics)`` / legacy ``StatefulObjective`` (no hyper-parameters).
      batches: an iterable of *this process's* host batches (dicts of NumPy arrays in the batch layout); a Grain
        iterator's position (``get_state``/``set_state``) is checkpointed and restored.
      config: the loop's :class:`TrainConfig`.
      optimizer: an :class:`~mojax.train.OptimizerConfig` (part of the step-cache key), or an optax transformation
        (cached by identity).
      mesh: the device mesh; default: every device on the ``data`` axis. Every jit traces under it.
      hparams: values of the objective's hyper-parameters for this run (the rest keep their defaults); they are
        inputs of the compiled step, so a sweep over them compiles once.
      wrt: ``nnx`` filter of the trainable variables (``nnx.LoRAParam`` for LoRA).
      eval_fn: ``eval_fn(step, model) -> {name: value}``, every ``config.eval_every`` steps, at the end (and at step
        0 with ``config.eval_at_start``); logged with an ``eval/`` prefix.
      on_metrics: ``on_metrics(step, host_metrics)`` at every logged step.
      run_dir: overrides ``config.run_dir``; None = in memory: no files, no checkpoints, no resume.
      run_config: the resolved config written to ``config.json`` (default: ``config``).
      data_report: a ``mojax.data.DataReport`` (or dict) written to ``data_report.json``.
      checkpoint: checkpointing and resume (only with a run directory).
      stop_flag: a :class:`~mojax.train.StopFlag` (``install_sigterm_flag()``): when set, save and return.
      fingerprint: the caller's fields of the run's identity (model, data, lengths), added to the objective,
        hyper-parameters, optimizer and shapes that fit records; a run directory holding another run is refused
        before anything is written (:mod:`mojax.train.run_dir`).
      allow_changes: fingerprint fields that may differ from the run directory's recorded run (default ``steps``).

    Raises:
      mojax.train.run_dir.RunMismatchError: ``run_dir`` belongs to another run.
      mojax.train.run_dir.SkippedStepsError: most recent steps were skipped (non-finite loss or gradients).
      ValueError: ``config.steps`` is below the run directory's checkpoint.

    Returns:
      A :class:`TrainResult`.
    """
    run_dir = config.run_dir if run_dir is _UNSET else run_dir
    mesh = make_mesh(MeshConfig()) if mesh is None else mesh
    obj = as_objective(objective)
    if isinstance(optimizer, OptimizerConfig):
        tx = make_optimizer(optimizer)
    elif isinstance(optimizer, optax.GradientTransformation):
        tx = optimizer
    else:
        raise TypeError(f"optimizer must be an OptimizerConfig or an optax.GradientTransformation, got "
                        f"{type(optimizer)!r}")
    path = None
    if run_dir is not None:
        # A run directory belongs to one run: checked before anything is written into it (issue 14 §1).
        claim_for_fit(run_dir, objective=objective, hparams=obj.initial_hparams(hparams), optimizer=optimizer,
                      config=config, extra=fingerprint, allow=allow_changes,
                      checkpoint_dir=checkpoint.directory or None, write=jax.process_index() == 0)
        path = prepare_run_dir(run_dir, config=run_config if run_config is not None else config,
                               data_report=data_report)
    start_hparams = obj.initial_hparams(hparams)
    # Not under jax.set_mesh: nnx would read the variables' logical axis names as mesh axes; placement goes through
    # the logical rules instead (mojax.sharding.state_shardings).
    # Mixed precision: trainable parameters stored below float32 (bf16) train through float32 master weights.
    if isinstance(model_or_state, TrainResult):
        trainable = model_or_state.state.params
    else:
        abstract = model_or_state if isinstance(model_or_state, nnx.Module) else nnx.eval_shape(model_or_state)
        trainable = nnx.split(abstract, wrt, ...)[1]
    if needs_master(trainable):
        tx = master_weights(tx)
    if isinstance(model_or_state, TrainResult):
        graphdef = model_or_state.graphdef
        state = jax.tree.map(jnp.copy, model_or_state.state).replace(
            hparams=jax.device_put(start_hparams, replicated(mesh)))
        shardings = jax.tree.map(lambda x: x.sharding, state)
    else:
        model = _copy_module(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
        graphdef, state, shardings = create_train_state(model, tx, mesh=mesh, rng=config.seed, wrt=wrt,
                                                        extras=init_extras(obj, model), hparams=start_hparams)
    batches = iter(batches)
    checkpointer = None
    start_step = int(state.step)
    if path is not None:
        ckpt_dir = Path(checkpoint.directory) if checkpoint.directory else path / "checkpoints"
        checkpointer = Checkpointer(ckpt_dir, checkpoint)
        note_progress(checkpoint_dir=str(ckpt_dir))  # for the message if a peer process dies
        if checkpoint.resume:
            state, start_step = _resume(checkpointer, state, batches, hparams, start_step)
            resumed = check_resume_step(checkpointer.restored_step, config.steps)
            if resumed and jax.process_index() == 0:
                print(f"mojax: {resumed}", flush=True)

    writer = MetricsWriter(path, tensorboard=config.tensorboard, enabled=path is not None and jax.process_index() == 0)
    history: list[dict[str, Any]] = []
    bar = None
    if config.progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc=config.progress_desc, dynamic_ncols=True,
                   leave=path is not None)
    step_fn, compiled = None, False
    stopped = False
    step = start_step
    seconds = compile_seconds = compile_cpu_seconds = 0.0
    last_time, last_step = time.perf_counter(), start_step
    skips = SkipMonitor(start_step=start_step, start_skipped=int(state.skipped), total_steps=config.steps)
    try:
        if eval_fn is not None and config.eval_at_start and step == 0:
            _evaluate(eval_fn, graphdef, state, step, writer, history, mesh)
        while step < config.steps:
            t0 = time.perf_counter()
            batch = shard_batch(next(batches), mesh)
            if step_fn is None:
                name, first = next(iter(batch.items()))
                check_global_batch(mesh, first.shape[batch_axis(name, first.ndim)], accum_steps=config.accum_steps)
                key = _step_key(obj, graphdef, optimizer if isinstance(optimizer, OptimizerConfig) else tx, wrt,
                                mesh, state, batch, config)
                step_fn, compiled = _compiled_step(key, lambda: jit_train_step(
                    make_train_step(graphdef, obj, tx, accum_steps=config.accum_steps), shardings, batch, mesh,
                    compiler_options=config.compiler_options_dict()))
            first = compiled and step == start_step
            c0 = time.process_time() if first else 0.0  # process_time costs ~1 ms with XLA's threads: once only
            with jax.set_mesh(mesh):  # the first call traces: constrain() then sees the mesh (issue 10 §1)
                state, metrics = step_fn(state, batch, step_key(state.rng, step))
            if first:  # this call compiled the step: time it apart (experiments report compile vs steps)
                jax.block_until_ready(state)
                compile_seconds, compile_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            step += 1
            if checkpointer is not None and (checkpointer.due(step) or step == config.steps):
                checkpointer.save(step, state, {"iterator": _iterator_state(batches), "step": step})
            if step % config.log_every == 0 or step == config.steps:
                host = _host_metrics(metrics)  # blocks on this step: the timing below counts finished work
                now = time.perf_counter()
                seconds += now - t0
                host["steps_per_s"] = (step - last_step) / max(now - last_time, 1e-9)
                host[f"{config.count_unit}_per_s"] = host.get("count", 0.0) * host["steps_per_s"]
                if isinstance(optimizer, OptimizerConfig):  # the rate of this step's update (optax counts from 0)
                    host["learning_rate"] = float(make_schedule(optimizer)(step - 1))
                writer.write(step, host)
                history.append({"step": step, **host})
                note_progress(step=step)
                newly = skips.update(step, int(host.get("skipped", 0)))  # raises SkippedStepsError when most are
                if newly and bar is None and jax.process_index() == 0:
                    print(f"mojax: step {step}: {newly} step(s) skipped since the last log line (non-finite loss or "
                          f"gradients), {int(host.get('skipped', 0))} in all", flush=True)
                if bar is not None:
                    bar.set_postfix(loss=f"{host['loss']:.4f}", it_s=f"{host['steps_per_s']:.2f}",
                                    skipped=int(host.get("skipped", 0)))
                if on_metrics is not None:
                    on_metrics(step, host)
                last_time, last_step = time.perf_counter(), step
            else:
                seconds += time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
            if eval_fn is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                t_eval = time.perf_counter()
                _evaluate(eval_fn, graphdef, state, step, writer, history, mesh)
                last_time += time.perf_counter() - t_eval  # evaluation time is not training throughput
            if stop_flag is not None and _stop_requested(stop_flag):
                # Checked last, so a signal that arrived anywhere in this iteration still saves this step.
                if checkpointer is not None:
                    checkpointer.save(step, state, {"iterator": _iterator_state(batches), "step": step})
                stopped = True
                break
        if eval_fn is not None and not stopped:
            _evaluate(eval_fn, graphdef, state, step, writer, history, mesh)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        writer.close()
        if bar is not None:
            bar.close()
    return TrainResult(state=state, graphdef=graphdef, run_dir=path, start_step=start_step, history=history,
                       stopped=stopped, seconds=seconds, compiled=compiled, compile_seconds=compile_seconds,
                       compile_cpu_seconds=compile_cpu_seconds)


def _resume(checkpointer, state, batches, hparams, start_step):
    """Restore the newest checkpoint (state and iterator position) when there is one."""
    restored = checkpointer.restore(state)
    if restored is None:
        return state, start_step
    given = state.hparams
    state, data_state = restored
    if hparams is not None and any(not np.array_equal(np.asarray(given[k]), np.asarray(state.hparams[k]))
                                   for k in given):
        warnings.warn("resuming with the checkpoint's hyper-parameters; the hparams passed to fit() differ and are "
                      "ignored", stacklevel=3)
    if data_state.get("iterator") is not None:
        if not callable(getattr(batches, "set_state", None)):
            raise ValueError("the checkpoint holds a data-iterator state but `batches` has no set_state(); "
                             "resuming would repeat batches")
        batches.set_state(data_state["iterator"])
    else:
        warnings.warn(f"resuming at step {int(state.step)} with a data iterator that has no get_state(): it starts "
                      "from its beginning, so the resumed run sees different batches", stacklevel=3)
    return state, int(state.step)


def _stop_requested(flag: StopFlag) -> bool:
    """Whether any process's flag is set: every process must stop (and save) at the same step, or the others would
    wait forever in the next step's collectives. One tiny all-gather per step, only in multi-process runs."""
    if jax.process_count() == 1:
        return flag.is_set()
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag.is_set()))))


def _evaluate(eval_fn, graphdef, state, step, writer, history, mesh) -> None:
    with jax.set_mesh(mesh):  # an eval_fn that jits traces under the run's mesh too
        metrics = eval_fn(step, nnx.merge(graphdef, state.params, state.rest))
    host = {f"eval/{k}": to_jsonable(v) for k, v in dict(metrics).items()}
    writer.write(step, host)
    history.append({"step": step, **host})


def make_eval_fn(objective: Objective | Callable, batches: Sequence[Mapping[str, Any]], *, mesh: Mesh | None = None,
                 hparams: Mapping[str, Any] | None = None, seed: int = 0) -> Callable[[int, nnx.Module], dict]:
    """An ``eval_fn(step, model)`` for :func:`fit`: the objective's loss and scalar metrics on fixed held-out
    ``batches`` (host batches), count-weighted over them like accumulation. One jitted forward (no gradient),
    traced under ``jax.set_mesh(mesh)``; rng ``fold_in(PRNGKey(seed), i)`` for batch ``i`` (fixed across calls).
    Stateless objectives only (a stateful one's extras belong to the run)."""
    obj = as_objective(objective)
    if obj.stateful:
        raise TypeError("make_eval_fn needs a stateless objective")
    mesh = make_mesh(MeshConfig()) if mesh is None else mesh
    hp = obj.initial_hparams(hparams)
    batches = list(batches)
    key = jax.random.PRNGKey(seed)

    @functools.partial(jax.jit, static_argnums=0)
    def evaluate(graphdef, state, batch, rng, hp):
        loss, metrics = obj.fn(nnx.merge(graphdef, state), batch, rng, hp)
        metrics = dict(metrics)
        count = jnp.asarray(metrics.pop(COUNT, 1.0), jnp.float32)
        scalars = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items() if jnp.ndim(v) == 0}
        return {"loss": jnp.asarray(loss, jnp.float32), **scalars}, count

    def eval_fn(step: int, model: nnx.Module) -> dict[str, float]:
        del step
        graphdef, state = nnx.split(model)
        sums: dict[str, float] = {}
        total = 0.0
        with jax.set_mesh(mesh):
            for i, batch in enumerate(batches):
                values, count = jax.device_get(evaluate(graphdef, state, shard_batch(batch, mesh),
                                                        jax.random.fold_in(key, i), hp))
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * float(count)
                total += float(count)
        return {k: v / max(total, 1e-12) for k, v in sums.items()}

    return eval_fn
