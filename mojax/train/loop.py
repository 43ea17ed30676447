"""The host loop: small functions around the one jitted step.

``train(...)`` owns the run directory (resolved config JSON, data report, ``metrics.jsonl``, optional TensorBoard,
checkpoints), the data iterator (Grain: ``get_state``/``set_state`` go into every checkpoint), the progress bar with
live loss and throughput, a periodic evaluation hook, SIGTERM-safe saving, and resuming from the latest complete
checkpoint. The step itself (:mod:`mojax.train.step`) does no I/O.

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

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mojax.train.checkpoint import CheckpointConfig, Checkpointer, StopFlag
from mojax.train.distributed import shard_batch
from mojax.train.mesh import check_global_batch
from mojax.train.state import TrainState, batch_axis, create_train_state, step_key
from mojax.train.step import Objective, StatefulObjective, init_extras, jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The host loop's knobs; defaults suit a laptop CPU.

    Attributes:
      steps: total optimizer steps (a resumed run stops at the same total).
      accum_steps: microbatches per step (gradient accumulation).
      seed: base of the run's RNG key (``TrainState.rng``).
      log_every: write metrics every this many steps (metrics are fetched from the device only then).
      eval_every: call the evaluation hook every this many steps (0 = only at the end, if a hook is given).
      run_dir: where the config, data report, metrics and checkpoints go.
      progress: show a tqdm progress bar.
      tensorboard: also write TensorBoard scalars if ``tensorboardX`` is importable.
    """

    steps: int = 100
    accum_steps: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    run_dir: str = "runs/train"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.accum_steps < 1 or self.log_every < 1 or self.eval_every < 0:
            raise ValueError(f"invalid TrainConfig: steps >= 0, accum_steps >= 1, log_every >= 1, eval_every >= 0 "
                             f"required, got {self}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What :func:`train` returns: the final state, the graph to merge it with, and the run's bookkeeping."""

    state: TrainState
    graphdef: nnx.GraphDef
    run_dir: Path
    start_step: int
    history: list[dict[str, float]]
    stopped: bool

    def model(self) -> nnx.Module:
        """The trained model (``nnx.merge(graphdef, params, rest)``)."""
        return nnx.merge(self.graphdef, self.state.params, self.state.rest)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, mappings, sequences, paths and numpy/JAX scalars as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard scalars when available)."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
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


def train(
    *,
    model: nnx.Module | Callable[[], nnx.Module],
    objective: Objective | StatefulObjective,
    tx: optax.GradientTransformation,
    data: Iterator[Mapping[str, Any]],
    mesh: Mesh,
    config: TrainConfig = TrainConfig(),
    checkpoint: CheckpointConfig = CheckpointConfig(),
    wrt: Any = nnx.Param,
    eval_fn: Callable[[nnx.Module, int], Mapping[str, Any]] | None = None,
    run_config: Any = None,
    data_report: Any = None,
    stop_flag: StopFlag | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``objective`` for ``config.steps`` steps, resuming from a checkpoint when there is one.

    Args:
      model: an ``nnx.Module`` or a zero-argument builder (initialised straight onto the mesh).
      objective: the method (:mod:`mojax.train.objectives`).
      tx: optax transformation (:func:`mojax.train.step.make_optimizer`).
      data: an iterator of *this process's* host batches (dicts of arrays in the batch layout of docs/contracts.md);
        if it has ``get_state``/``set_state`` (Grain) its position is checkpointed and restored.
      mesh: the device mesh.
      config, checkpoint: loop and checkpoint configs.
      wrt: filter of the trainable variables.
      eval_fn: ``eval_fn(model, step) -> metrics``, called every ``config.eval_every`` steps and at the end; its
        metrics are logged with an ``eval/`` prefix.
      run_config: the resolved config to write to ``config.json`` (defaults to ``config``).
      data_report: a ``mojax.data.DataReport`` (or dict) written to ``data_report.json``.
      stop_flag: a :class:`~mojax.train.checkpoint.StopFlag` (from ``install_sigterm_flag``); when set, the loop
        saves and returns after the current step.
      on_step: ``on_step(step, host_metrics)`` after each logged step (tests, custom logging).

    Returns:
      A :class:`TrainResult`.
    """
    run_dir = prepare_run_dir(config.run_dir, config=run_config if run_config is not None else config,
                              data_report=data_report)
    graphdef, state, shardings = create_train_state(model, tx, mesh=mesh, rng=config.seed, wrt=wrt,
                                                    extras=init_extras(objective, model))
    ckpt_dir = Path(checkpoint.directory) if checkpoint.directory else run_dir / "checkpoints"
    checkpointer = Checkpointer(ckpt_dir, checkpoint)
    start_step = 0
    if checkpoint.resume:
        restored = checkpointer.restore(state)
        if restored is not None:
            state, data_state = restored
            start_step = int(state.step)
            if data_state.get("iterator") is not None:
                if not callable(getattr(data, "set_state", None)):
                    raise ValueError("the checkpoint holds a data-iterator state but `data` has no set_state(); "
                                     "resuming would repeat batches")
                data.set_state(data_state["iterator"])
            else:
                warnings.warn(f"resuming at step {start_step} with a data iterator that has no get_state(): it "
                              "starts from its beginning, so the resumed run sees different batches", stacklevel=2)

    writer = MetricsWriter(run_dir, tensorboard=config.tensorboard, enabled=jax.process_index() == 0)
    history: list[dict[str, Any]] = []
    step_fn = None
    bar = None
    if config.progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc="train", dynamic_ncols=True)
    stopped = False
    last_time, last_step = time.perf_counter(), start_step
    step = start_step
    try:
        while step < config.steps:
            host_batch = next(data)
            batch = shard_batch(host_batch, mesh)
            if step_fn is None:
                name, first = next(iter(batch.items()))
                global_b = first.shape[batch_axis(name, first.ndim)]
                check_global_batch(mesh, global_b, accum_steps=config.accum_steps)
                step_fn = jit_train_step(make_train_step(graphdef, objective, tx, accum_steps=config.accum_steps),
                                         shardings, batch, mesh)
            state, metrics = step_fn(state, batch, step_key(state.rng, step))
            step += 1
            if checkpointer.due(step) or step == config.steps:
                checkpointer.save(step, state, {"iterator": _iterator_state(data), "step": step})
            if step % config.log_every == 0 or step == config.steps:
                host = _host_metrics(metrics)
                now = time.perf_counter()
                host["steps_per_s"] = (step - last_step) / max(now - last_time, 1e-9)
                host["examples_per_s"] = host.get("count", 0.0) * host["steps_per_s"]
                writer.write(step, host)
                history.append({"step": step, **host})
                if bar is not None:
                    bar.set_postfix(loss=f"{host['loss']:.4f}", it_s=f"{host['steps_per_s']:.2f}")
                if on_step is not None:
                    on_step(step, host)
                last_time, last_step = now, step
            if bar is not None:
                bar.update(1)
            if eval_fn is not None and config.eval_every and step % config.eval_every == 0 and step < config.steps:
                _evaluate(eval_fn, graphdef, state, step, writer, history)
            if stop_flag is not None and _stop_requested(stop_flag):
                # Checked last, so a signal that arrived anywhere in this iteration still saves this step.
                checkpointer.save(step, state, {"iterator": _iterator_state(data), "step": step})
                stopped = True
                break
        if eval_fn is not None and not stopped:
            _evaluate(eval_fn, graphdef, state, step, writer, history)
    finally:
        checkpointer.close()
        writer.close()
        if bar is not None:
            bar.close()
    return TrainResult(state=state, graphdef=graphdef, run_dir=run_dir, start_step=start_step, history=history,
                       stopped=stopped)


def _stop_requested(flag: StopFlag) -> bool:
    """Whether any process's flag is set: every process must stop (and save) at the same step, or the others would
    wait forever in the next step's collectives. One tiny all-gather per step, only in multi-process runs."""
    if jax.process_count() == 1:
        return flag.is_set()
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag.is_set()))))


def _evaluate(eval_fn, graphdef, state, step, writer, history) -> None:
    metrics = eval_fn(nnx.merge(graphdef, state.params, state.rest), step)
    host = {f"eval/{k}": to_jsonable(v) for k, v in dict(metrics).items()}
    writer.write(step, host)
    history.append({"step": step, **host})
