"""Checkpoints: Orbax ``CheckpointManager`` over the whole :class:`~mojax.train.state.TrainState` plus the data state.

What a checkpoint holds (one directory per step, ``<dir>/<step>/``):

- ``state`` — every leaf of the ``TrainState`` (params, frozen state, optimizer state, step, base RNG key, skipped
  counter, method extras), saved as a flat ``{"<key path>": array}`` dict so any pytree (``nnx.State``, optax
  namedtuples) round-trips by path and each array keeps its ``NamedSharding`` on restore;
- ``data`` — JSON: the data iterator's ``get_state()`` (Grain) taken right after the batch of the last step was
  drawn, plus anything the loop adds (e.g. the step).

Semantics. Saves are asynchronous (Orbax copies device arrays to host before ``save`` returns, then writes in a
thread) and atomic: a step directory is written under a temporary name and renamed when complete, so
``latest_step()`` only ever sees complete checkpoints — a run killed mid-write resumes from the previous one.
``max_to_keep`` old checkpoints are kept. Because step ``s`` draws its key as ``fold_in(rng, s)`` and the iterator
resumes at the exact next batch, a resumed run repeats the uninterrupted run's computation bit for bit.

SIGTERM (preemption notices, ``kill``): :func:`install_sigterm_flag` makes the signal set a flag; the host loop checks
it after every step, saves, and exits cleanly.
"""

from __future__ import annotations

import base64
import dataclasses
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mojax.train.state import TrainState


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When and where to checkpoint.

    Attributes:
      directory: checkpoint root; empty = ``<run_dir>/checkpoints``.
      every_steps: save every this many steps (0 = only at the end and on SIGTERM).
      max_to_keep: how many recent checkpoints to keep.
      async_save: write in a background thread (the step loop continues while files are written).
      resume: restore the latest complete checkpoint in ``directory`` if there is one.
    """

    directory: str = ""
    every_steps: int = 100
    max_to_keep: int = 2
    async_save: bool = True
    resume: bool = True

    def __post_init__(self):
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")
        if self.max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {self.max_to_keep}")


def flatten_state(state: Any) -> dict[str, Any]:
    """``{keystr(path): leaf}`` for every leaf of a pytree (the on-disk layout of a checkpoint)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    out = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    if len(out) != len(flat):
        raise ValueError("two leaves of the state share a key path; cannot checkpoint it by path")
    return out


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
    """Inverse of :func:`flatten_state`, using ``template`` for the tree structure."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in paths]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} state entries, e.g. {missing[:3]}; was it written by a "
                       "different model or optimizer?")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class Checkpointer:
    """A thin owner of one ``ocp.CheckpointManager`` for a :class:`TrainState` and its data-iterator state."""

    def __init__(self, directory: str | Path, config: CheckpointConfig = CheckpointConfig()):
        self.config = config
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=config.max_to_keep, create=True,
                                               enable_async_checkpointing=config.async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the latest complete checkpoint, or None."""
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether the periodic schedule asks for a checkpoint after ``step`` steps."""
        every = self.config.every_steps
        return bool(every) and step % every == 0

    def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None = None) -> bool:
        """Start saving ``state`` and ``data_state`` as checkpoint ``step`` (returns at once when async).

        Safe to donate ``state`` to the next step right after: Orbax has copied it to host by the time this returns.
        """
        if step in (self.manager.all_steps() or []):
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(flatten_state(state)),
                                  data=ocp.args.JsonSave(_to_json(data_state or {})))
        return self.manager.save(step, args=args, force=True)

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]] | None:
        """Restore checkpoint ``step`` (default: the latest complete one) onto ``template``'s shapes and shardings.

        Returns ``(state, data_state)``, or None when there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = {k: ocp.utils.to_shape_dtype_struct(v) for k, v in flatten_state(template).items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      data=ocp.args.JsonRestore()))
        return unflatten_state(template, restored["state"]), _from_json(restored["data"] or {})

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


class StopFlag:
    """Set by a signal handler; the host loop polls :meth:`is_set` after each step."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int | None = None) -> None:
        """Request a stop (save and exit after the current step)."""
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


def install_sigterm_flag(signals: tuple[int, ...] = (signal.SIGTERM,)) -> StopFlag:
    """Make ``signals`` (default SIGTERM) set a :class:`StopFlag` instead of killing the process.

    Only possible from the main thread; elsewhere the flag is returned without a handler (it can still be set by
    hand). The loop saves a checkpoint and returns when it sees the flag, so a preempted job loses no steps.
    """
    flag = StopFlag()
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            signal.signal(sig, lambda signum, _frame: flag.set(signum))
    return flag
