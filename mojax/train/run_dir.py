"""A run directory belongs to one run: a fingerprint of what defines the run, checked before anything is written.

Why: a run started in an existing directory resumes whatever checkpoint is there. Without a check, ``--method dpo``
then ``--method ipo`` in the same directory continues DPO's weights as IPO, and a changed learning rate, batch size,
data seed or dataset resumes silently with the old data-iterator position on different data.

What defines a run (the caller builds the fingerprint with :func:`make_fingerprint`): the model (path or config), the
method and the hyper-parameters that change the math (β, learning rate, schedule, loss options), the data (paths with
their size and content hash: :func:`data_fingerprint`, and the order seed), and the shapes (batch size, accumulation,
maximum length). Fields that do not change the math (logging, progress, checkpoint cadence) stay out of it. ``steps``
is in it so that a changed length is visible, and is allowed to change by default (:data:`DEFAULT_ALLOW`) — a caller
whose learning-rate schedule depends on the total length must put that length in under another name (e.g.
``optimizer.schedule_steps``) so that changing it is refused.

Protocol (:func:`check_or_claim`), run by every process before it writes anything into the directory:

- no ``fingerprint.json`` and no checkpoint → a fresh run: the fingerprint is written (``claim.fresh``);
- ``fingerprint.json`` present → every differing field must be allowed (``allow``), or :class:`RunMismatchError` names
  them in one line and nothing is written; allowed changes are recorded in the file's ``history``;
- checkpoints but no ``fingerprint.json`` (a run by an older mojax, or another tool) → refused unless ``allow``
  holds ``"*"`` (adopt the directory).

A run with no run directory given gets a new one (:func:`new_run_dir`, ``runs/<name>-<UTC time>``), so two runs never
share a default directory. :func:`check_resume_step` makes ``steps`` below the checkpoint's step an error and returns
the ``resumed from step N of M`` line.

A run that stops learning: the step drops an update whose loss or gradient is not finite (``TrainState.skipped``
counts them). A few such steps are harmless; a run whose steps are mostly skipped only burns compute while its loss
line looks normal. :class:`SkipMonitor` watches the running count at the logged steps and raises
:class:`SkippedStepsError` (one line naming the likely causes) when more than ``threshold`` (default 50 %) of the last
``window`` (default 20) steps were skipped — or of the whole run when it is shorter than the window.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "fingerprint.json"
DEFAULT_ALLOW = ("steps",)
_VERSION = 1
_FULL_HASH_BYTES = 64 << 20  # files up to 64 MiB are hashed whole; larger ones by size, head and tail
_EDGE_BYTES = 1 << 20


class RunMismatchError(ValueError):
    """The run directory belongs to a run with another fingerprint (the message names the differing fields)."""


def _jsonable(value: Any) -> Any:
    """A JSON value for ``value`` that compares equal after a round trip (tuples → lists, paths → str, …)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON has no NaN/inf
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return _jsonable(value.item())
    return repr(value)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def make_fingerprint(**fields: Any) -> dict[str, Any]:
    """A flat ``{"dotted.name": JSON value}`` fingerprint from keyword fields (dataclasses and dicts are expanded).

    Example: ``make_fingerprint(model=model_path, method="dpo", optimizer=opt_config, steps=100,
    data=data_fingerprint(paths, seed=0), shapes={"batch_size": 8, "accum_steps": 1, "max_length": 512})``.
    """
    out: dict[str, Any] = {}
    for name, value in fields.items():
        _flatten(name, _jsonable(value), out)
    return out


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(f.read(_EDGE_BYTES))
        f.seek(size - _EDGE_BYTES)
        h.update(f.read(_EDGE_BYTES))
    return "sha256-head-tail:" + h.hexdigest()


def data_fingerprint(paths: Iterable[str | os.PathLike], *, seed: int | None = None) -> dict[str, Any]:
    """Identity of the training data: each file's name, size and SHA-256 (head and tail only above 64 MiB), the seed.

    A content hash rather than the modification time, so copying or touching a file keeps its identity and editing it
    does not. Missing files are recorded as such (the data loader reports them).
    """
    files = []
    for p in paths:
        path = Path(p)
        if path.is_file():
            size = path.stat().st_size
            files.append({"name": path.name, "size": size, "digest": _file_digest(path, size)})
        else:
            files.append({"name": path.name, "missing": True})
    return {"files": files, "seed": seed}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """The outcome of :func:`check_or_claim`.

    Attributes:
      path: the run directory.
      fresh: the directory held no run (the fingerprint was written now).
      changed: ``{field: (old, new)}`` for the allowed fields that differ from the recorded fingerprint.
    """

    path: Path
    fresh: bool
    changed: dict[str, tuple[Any, Any]]


def _has_checkpoints(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def _allowed(field: str, allow: Iterable[str]) -> bool:
    return any(a == "*" or field == a or field.startswith(a + ".") for a in allow)


def _short(value: Any, limit: int = 40) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


_ABSENT = object()


def diff_fingerprints(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for every field whose value differs (a missing field is ``_ABSENT`` on its side)."""
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def describe_diff(diff: Mapping[str, tuple[Any, Any]], limit: int = 5) -> str:
    """``field old → new; …`` for at most ``limit`` fields (then ``(+N more)``), on one line."""
    parts = [f"{k} {_short(a)} → {_short(b)}" for k, (a, b) in list(diff.items())[:limit]]
    more = len(diff) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one, never half of one


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_or_claim(run_dir: str | os.PathLike, fingerprint: Mapping[str, Any], *, allow: Iterable[str] = DEFAULT_ALLOW,
                   write: bool = True) -> Claim:
    """Check that ``run_dir`` belongs to the run ``fingerprint`` describes, or claim it for that run.

    Nothing is written before the check passes. Args:
      run_dir: the run directory (created if missing, after the check).
      fingerprint: from :func:`make_fingerprint`.
      allow: fields (or dotted prefixes; ``"*"`` = all) that may differ from the recorded run: e.g. ``steps``.
      write: whether this process writes ``fingerprint.json`` (False on all but process 0 of a multi-process run).

    Raises:
      RunMismatchError: a field outside ``allow`` differs, or the directory holds checkpoints but no fingerprint.
    """
    path = Path(run_dir)
    fingerprint = json.loads(json.dumps(dict(fingerprint)))  # compare what a round trip through the file gives
    allow = tuple(allow)
    file = path / FINGERPRINT_FILE
    record: dict[str, Any] | None = None
    if file.is_file():
        try:
            record = json.loads(file.read_text())
            old = record["fields"]
        except (ValueError, KeyError, TypeError) as e:
            raise RunMismatchError(f"{file} is unreadable ({type(e).__name__}); move the directory away or give "
                                   "another run directory") from None
        diff = diff_fingerprints(old, fingerprint)
        refused = {k: v for k, v in diff.items() if not _allowed(k, allow)}
        if refused:
            raise RunMismatchError(f"run directory {path} belongs to another run: {describe_diff(refused)}; use a new "
                                   "run directory, or allow the change explicitly if it is safe")
        if diff and write:
            record["fields"] = fingerprint
            record.setdefault("history", []).append(
                {"time": _now(), "changed": {k: [None if a is _ABSENT else a, None if b is _ABSENT else b]
                                             for k, (a, b) in diff.items()}})
            _write_json(file, record)
        return Claim(path=path, fresh=False, changed=diff)
    if path.is_dir() and _has_checkpoints(path) and "*" not in allow:
        raise RunMismatchError(f"run directory {path} holds checkpoints but no {FINGERPRINT_FILE} (another tool or an "
                               "older mojax wrote it): give a new run directory, or allow '*' to adopt it")
    if write:
        path.mkdir(parents=True, exist_ok=True)
        _write_json(file, {"version": _VERSION, "created": _now(), "fields": fingerprint, "history": []})
    return Claim(path=path, fresh=True, changed={})


def new_run_dir(root: str | os.PathLike = "runs", name: str = "run") -> Path:
    """A new, empty directory ``<root>/<name>-<YYYYmmdd-HHMMSS>[-k]`` (UTC), created now so no other run takes it."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = Path(root) / (f"{name}-{stamp}" if k == 1 else f"{name}-{stamp}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a new run directory under {root}")


def check_resume_step(checkpoint_step: int | None, steps: int) -> str | None:
    """The ``resumed from step N of M`` line for a resumed run (None for a fresh one).

    Raises:
      ValueError: ``steps`` is below the checkpoint's step (the run would silently do nothing).
    """
    if checkpoint_step is None:
        return None
    if steps < checkpoint_step:
        raise ValueError(f"the run directory's checkpoint is at step {checkpoint_step} but steps={steps}: give "
                         f"steps >= {checkpoint_step} to continue it, or a new run directory")
    return f"resumed from step {checkpoint_step} of {steps}"


def fit_fingerprint(*, objective: Any, hparams: Mapping[str, Any], optimizer: Any, config: Any,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprint :func:`mojax.train.fit` checks: objective, hyper-parameter values, optimizer, loop shapes.

    ``config`` is the ``TrainConfig``; only the fields that change the math are taken (``steps``, ``batch_size``,
    ``accum_steps``, ``seed``). ``extra`` (a caller's own fields: model, data, lengths) is merged in; its keys win.
    """
    fn = getattr(objective, "fn", objective)
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    fields: dict[str, Any] = {
        "objective": name,
        "hparams": {k: _jsonable(getattr(v, "tolist", lambda v=v: v)()) for k, v in dict(hparams).items()},
        "optimizer": optimizer if dataclasses.is_dataclass(optimizer) else type(optimizer).__name__,
        "steps": getattr(config, "steps", None),
        "shapes": {k: getattr(config, k, None) for k in ("batch_size", "accum_steps")},
        "seed": getattr(config, "seed", None),
    }
    fields.update(dict(extra or {}))
    return make_fingerprint(**fields)


def claim_for_fit(run_dir: str | os.PathLike, *, objective: Any, hparams: Mapping[str, Any], optimizer: Any,
                  config: Any, extra: Mapping[str, Any] | None = None, allow: Iterable[str] = DEFAULT_ALLOW,
                  checkpoint_dir: str | os.PathLike | None = None, write: bool = True) -> Claim:
    """What :func:`mojax.train.fit` runs before it writes into ``run_dir``: the steps check, then the fingerprint.

    Raises:
      ValueError: ``config.steps`` is below the newest checkpoint's step.
      RunMismatchError: see :func:`check_or_claim`.
    """
    ckpts = Path(checkpoint_dir) if checkpoint_dir else Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    if steps:
        check_resume_step(max(steps), config.steps)
    return check_or_claim(run_dir, fit_fingerprint(objective=objective, hparams=hparams, optimizer=optimizer,
                                                   config=config, extra=extra), allow=allow, write=write)


class SkippedStepsError(RuntimeError):
    """Most recent steps were skipped (non-finite loss or gradients): the run stopped; the message names the causes."""


class SkipMonitor:
    """Watches the running count of skipped steps; :meth:`update` raises :class:`SkippedStepsError` when too many.

    Args:
      start_step, start_skipped: where the run (or the resumed part of it) starts.
      total_steps: the run's last step (a shorter run is judged over all its steps at its end).
      window: how many recent steps are judged.
      threshold: the fraction of them that may be skipped.
    """

    def __init__(self, *, start_step: int, start_skipped: int, total_steps: int, window: int = 20,
                 threshold: float = 0.5):
        if window < 1 or not 0 <= threshold < 1:
            raise ValueError(f"need window >= 1 and 0 <= threshold < 1, got {window}, {threshold}")
        self.window, self.threshold, self.total = window, threshold, total_steps
        self.points: deque[tuple[int, int]] = deque([(start_step, start_skipped)])
        self.last_skipped = start_skipped

    def update(self, step: int, skipped: int) -> int:
        """Record the running count at ``step``; returns how many steps were newly skipped since the last call.

        Raises:
          SkippedStepsError: more than ``threshold`` of the judged steps were skipped.
        """
        new = skipped - self.last_skipped
        self.last_skipped = skipped
        self.points.append((step, skipped))
        while len(self.points) > 2 and self.points[1][0] <= step - self.window:
            self.points.popleft()  # keep one point at or before the window's start
        base_step, base_skipped = self.points[0]
        span = step - base_step
        if span >= self.window or (step >= self.total and span > 0):
            bad = skipped - base_skipped
            if bad > self.threshold * span:
                raise SkippedStepsError(
                    f"stopped at step {step}: {bad} of the last {span} steps were skipped (non-finite loss or "
                    "gradients); likely causes: a learning rate or beta too large, or non-finite values in the data")
        return new
