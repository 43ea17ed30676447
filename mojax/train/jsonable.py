"""Configs, results and metrics as plain JSON values — one converter for the library and the experiments."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any, *, strict: bool = False) -> Any:
    """Dataclasses → dicts, NumPy/JAX arrays → nested lists, NumPy scalars → Python numbers, tuples and sets →
    lists, ``Path`` → str.

    Args:
      obj: what to convert.
      strict: for files that must be strict JSON (``metrics.json``, reports): non-finite floats become ``null`` and
        are reported with their path in one ``RuntimeWarning`` (a diverged run still writes its files, never
        silently), and an object of unknown type raises ``TypeError`` naming its path. Lenient (the default, for
        ``metrics.jsonl`` lines and ``config.json``): non-finite floats are kept (``json`` writes ``NaN``) and
        unknown objects become ``str(obj)``.
    """
    bad: list[str] = []
    out = _convert(obj, "$", strict, bad)
    if bad:
        warnings.warn(f"non-finite values written as null: {', '.join(bad[:10])}"
                      + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""), RuntimeWarning, stacklevel=2)
    return out


def _convert(obj: Any, path: str, strict: bool, bad: list[str]) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _convert(getattr(obj, f.name), f"{path}.{f.name}", strict, bad)
                for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _convert(v, f"{path}.{k}", strict, bad) for k, v in obj.items()}
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if strict and not math.isfinite(value):
            bad.append(path)
            return None
        return value
    if hasattr(obj, "__array__") and not isinstance(obj, (list, tuple)):
        arr = np.asarray(obj)
        return _convert(arr.item() if arr.ndim == 0 else arr.tolist(), path, strict, bad)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_convert(v, f"{path}[{i}]", strict, bad) for i, v in enumerate(obj)]
    if strict:
        raise TypeError(f"cannot convert {type(obj).__name__} at {path} to JSON")
    return str(obj)
