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
Because step ``s`` draws its key as ``fold_in(rng, s)`` and the iterator resumes at the exact next batch, a resumed
run repeats the uninterrupted run's computation bit for bit.

Verification. Orbax (OCDBT/TensorStore) does not check what it reads: flipped bytes in a data file restore silently
as garbage. So every checkpoint also holds

- ``checksums`` — JSON: for every state leaf its shape, dtype and a 64-bit fingerprint of its bytes, plus the SHA-256
  of the data item, written in the same Orbax step as the data (atomic with it).

The fingerprint (:func:`fingerprint`) is computed on device by one jitted function: each leaf is bitcast to 32-bit
words ``w_i`` with flat index ``i``, and two lanes are summed mod 2³²: ``Σ w_i·k_i`` with odd position keys ``k_i``
(any change confined to one word always changes it) and ``Σ fmix32(w_i ⊕ k_i)`` (MurmurHash3's finaliser, for
everything else: a random multi-word corruption must collide in both lanes to pass). Integer sums do not depend
on the order of reduction, so the fingerprint is the same whatever the mesh or process count that saved or restores;
no process needs the whole array on host (with arrays sharded across hosts none has it). Measured on 2 CPU cores under
load (~7) for a 100 MB float32 state: 0.24–0.27 s; zlib.crc32 / SHA-256 of the same bytes already on host: 0.10–0.13
/ 0.14 s, but those need every byte on one host (a device→host copy, and a gather for state sharded across hosts).
On an accelerator it is one fused elementwise pass and reduction (not measured here). Saving also refuses
non-finite parameters (same pass), so a NaN run is never written.

On restore (:meth:`Checkpointer.restore` without a step) the newest checkpoint is read and checked against its
checksums; one that fails to read (TensorStore/ZSTD errors, truncated ``manifest.ocdbt``, missing files, broken
metadata JSON) or to verify is reported in one line, moved aside to ``<dir>/corrupt-<step>`` (so the step can be
written again), and the next older one is tried. A checkpoint whose leaves do not match the state being restored
(another model or optimizer) is a user error, not corruption: :class:`CheckpointMismatchError`, nothing moved. If
checkpoints exist but none is usable, :class:`CheckpointError` is raised — never a silent restart from step 0.

Retention policy: the newest ``max_to_keep`` complete checkpoints are kept (default 2, minimum 1; 2 or more means a
corrupt newest checkpoint has a good predecessor to fall back to — at the cost of re-training at most
``every_steps`` steps). Moved-aside corrupt checkpoints are kept for inspection and never counted or deleted.

SIGTERM (preemption notices, ``kill``): :func:`install_sigterm_flag` makes the signal set a flag; the host loop checks
it after every step, saves, and exits cleanly.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

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


class CheckpointError(RuntimeError):
    """Checkpoints exist but none could be read and verified, or one would be written with non-finite parameters."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's leaves (names, shapes, dtypes) differ from the state it is restored onto."""


_CHECKSUM_VERSION = 1
_PARAMS_PREFIX = ".params"  # keystr of TrainState.params leaves; only they must be finite (optax may hold inf)


def _words(x: jax.Array) -> jax.Array:
    """``x``'s bytes as uint32 words (64-bit dtypes gain a trailing axis of 2; 8/16-bit ones are widened)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = np.dtype(x.dtype).itemsize
    if size >= 4:
        return lax.bitcast_convert_type(x, jnp.uint32)
    return lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index mod 2³² of every element, built per axis (no reshape: sharded arrays stay sharded)."""
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in range(len(shape) - 1, -1, -1):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def _fmix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    w = _words(x)
    k = _flat_index(w.shape) * jnp.uint32(0x9E3779B1) | jnp.uint32(1)  # odd: w·k is injective in w mod 2³²
    return jnp.stack([jnp.sum(w * k, dtype=jnp.uint32), jnp.sum(_fmix32(w ^ k), dtype=jnp.uint32)])


@jax.jit
def _fingerprints(flat: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    finite = {k: jnp.all(jnp.isfinite(v)) for k, v in flat.items()
              if k.startswith(_PARAMS_PREFIX) and jnp.issubdtype(v.dtype, jnp.inexact)}
    return {k: _leaf_fingerprint(v) for k, v in flat.items()}, finite


def fingerprint(flat: dict[str, Any]) -> dict[str, list[int]]:
    """64-bit fingerprint ``[lane0, lane1]`` of every array in a flat state (see the module docstring).

    Independent of sharding, mesh and process count; every process of a multi-process run must call it (it is a jitted
    reduction over global arrays) and all get the same answer.
    """
    return {k: [int(a) for a in v] for k, v in jax.device_get(_fingerprints(flat)[0]).items()}


def _describe(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(np.shape(v)), "dtype": str(v.dtype)} for k, v in flat.items()}


def _json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _one_line(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (TensorStore errors span ~140 lines), cut to ``limit`` characters."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _drop_closed_loop_callbacks() -> None:
    """Silence the ``RuntimeError: Event loop is closed`` that TensorStore callbacks raise after a failed read.

    When one read of a restore fails, Orbax's ``asyncio`` loop ends while other TensorStore reads are in flight; their
    completion callbacks then hit the closed loop in a TensorStore thread and Python prints each as an "exception
    ignored" traceback — noise after the one-line report. Only that exact exception is dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_mojax_closed_loop_filter", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook._mojax_closed_loop_filter = True
    sys.unraisablehook = hook


def _stderr(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class Checkpointer:
    """A thin owner of one ``ocp.CheckpointManager`` for a :class:`TrainState` and its data-iterator state.

    Attributes:
      rejected: ``(step, reason)`` of every checkpoint that :meth:`restore` found unusable and moved aside.
      restored_step: the step :meth:`restore` returned (None before, or when there was nothing to restore).
    """

    def __init__(self, directory: str | Path, config: CheckpointConfig = CheckpointConfig(), *,
                 log: Callable[[str], None] = _stderr):
        self.config = config
        self.directory = Path(directory).absolute()
        self.log = log
        self.rejected: list[tuple[int, str]] = []
        self.restored_step: int | None = None
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.config.max_to_keep, create=True,
                                               enable_async_checkpointing=self.config.async_save)
        return ocp.CheckpointManager(self.directory, options=options)

    def _reopen(self) -> None:
        _drop_closed_loop_callbacks()
        # A failed TensorStore read can leave the manager's event loop closed ("RuntimeError: Event loop is closed"
        # on the next restore): start a fresh one.
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 — the old manager is being discarded; its errors do not matter
            pass
        self.manager = self._open()

    def latest_step(self) -> int | None:
        """The step of the latest complete checkpoint, or None (it is not verified: :meth:`restore` does that)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps() or [])

    def due(self, step: int) -> bool:
        """Whether the periodic schedule asks for a checkpoint after ``step`` steps."""
        every = self.config.every_steps
        return bool(every) and step % every == 0

    def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None = None) -> bool:
        """Start saving ``state`` and ``data_state`` as checkpoint ``step`` (returns at once when async).

        Computes the checksums first (a blocking device pass, see :func:`fingerprint`). Safe to donate ``state`` to
        the next step right after: Orbax has copied it to host by the time this returns.

        Raises:
          CheckpointError: a parameter is NaN/inf — nothing is written.
        """
        if step in self.all_steps():
            return False
        flat = flatten_state(state)
        prints, finite = jax.device_get(_fingerprints(flat))
        bad = sorted(k for k, ok in finite.items() if not ok)
        if bad:
            raise CheckpointError(f"refusing to write checkpoint {step}: {len(bad)} of {len(finite)} parameter "
                                  f"arrays hold NaN/inf (e.g. {bad[0]}); nothing was saved")
        data = _to_json(data_state or {})
        leaves = _describe(flat)
        for k, v in prints.items():
            leaves[k]["fingerprint"] = [int(a) for a in v]
        checksums = {"version": _CHECKSUM_VERSION, "leaves": leaves, "data_sha256": _json_sha256(data)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat), data=ocp.args.JsonSave(data),
                                  checksums=ocp.args.JsonSave(checksums))
        return self.manager.save(step, args=args, force=True)

    def _read_checksums(self, step: int) -> dict[str, Any] | None:
        if not (self.directory / str(step) / "checksums").is_dir():
            return None  # written before checksums existed
        got = self.manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
        if not isinstance(got, dict) or got.get("version") != _CHECKSUM_VERSION or "leaves" not in got:
            raise CheckpointError("checksums item is unreadable")
        return got

    def _restore_step(self, template: TrainState, step: int) -> tuple[TrainState, dict[str, Any]]:
        """Read and verify checkpoint ``step``; raises CheckpointMismatchError, or anything else for corruption."""
        flat_template = flatten_state(template)
        checksums = self._read_checksums(step)
        if checksums is not None:
            want = {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in checksums["leaves"].items()}
            have = _describe(flat_template)
            if want != have:
                diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
                raise CheckpointMismatchError(
                    f"checkpoint {step} in {self.directory} does not match this model/optimizer ({len(diff)} arrays "
                    f"differ, e.g. {diff[0]}: checkpoint {want.get(diff[0])}, now {have.get(diff[0])})")
        abstract = {k: ocp.utils.to_shape_dtype_struct(v) for k, v in flat_template.items()}
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      data=ocp.args.JsonRestore()))
        flat, data = restored["state"], restored["data"] or {}
        if checksums is None:
            self.log(f"mojax: checkpoint {step} has no checksums (written by an older mojax); restored unverified")
        else:
            if _json_sha256(data) != checksums["data_sha256"]:
                raise CheckpointError("data-iterator state does not match its checksum")
            got = fingerprint(flat)
            bad = sorted(k for k, v in checksums["leaves"].items() if got.get(k) != v["fingerprint"])
            if bad:
                raise CheckpointError(f"{len(bad)} of {len(got)} arrays fail their checksum (e.g. {bad[0]})")
        return unflatten_state(template, flat), _from_json(data)

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            source = self.directory / str(step)
            target = self.directory / f"corrupt-{step}"
            n = 1
            while target.exists():
                n += 1
                target = self.directory / f"corrupt-{step}.{n}"
            if source.exists():
                source.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"mojax-quarantine-{step}")
        self._reopen()

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]] | None:
        """Restore a verified checkpoint onto ``template``'s shapes and shardings; returns ``(state, data_state)``.

        ``step=None`` (resume): the newest checkpoint that reads and verifies; unusable newer ones are reported in one
        line each and moved aside (see the module docstring). Returns None when the directory holds no checkpoint.
        An explicit ``step`` is restored and verified, or raises.

        Raises:
          CheckpointMismatchError: the checkpoint was written for another model or optimizer.
          CheckpointError: checkpoints exist but none reads and verifies (or the explicit ``step`` does not).
        """
        if step is not None:
            try:
                out = self._restore_step(template, step)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 — Orbax/TensorStore raise many types for a damaged checkpoint
                raise CheckpointError(f"checkpoint {step} in {self.directory} is unusable: {_one_line(e)}") from e
            self.restored_step = step
            return out
        steps = self.all_steps()
        if not steps:
            return None
        for candidate in reversed(steps):
            try:
                out = self._restore_step(template, candidate)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 — see above: any read/verify failure means "do not use this one"
                reason = _one_line(e)
                self.rejected.append((candidate, reason))
                older = [s for s in steps if s < candidate]
                then = f"trying checkpoint {older[-1]}" if older else "no older checkpoint"
                self.log(f"mojax: checkpoint {candidate} is corrupt or unreadable ({reason}); moved to "
                         f"corrupt-{candidate}; {then}")
                self._quarantine(candidate)
                continue
            self.restored_step = candidate
            return out
        raise CheckpointError(f"none of the {len(steps)} checkpoints in {self.directory} reads and verifies (newest: "
                              f"{self.rejected[0][1]}); they were moved to corrupt-<step>; rerun to start from step 0")

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
