"""mojax.train.jsonable: one converter, lenient for logs and strict for artefacts."""

import dataclasses
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from mojax.train.jsonable import to_jsonable


@dataclasses.dataclass(frozen=True)
class _C:
    a: tuple = (1, 2.5)
    p: Path = Path("x/y")


def test_types_convert_to_plain_json():
    obj = {"c": _C(), "arr": np.arange(3), "jx": jnp.float32(1.5), "i": np.int64(7), "b": np.bool_(True),
           "s": {3}, 1: None}
    out = to_jsonable(obj)
    assert out == {"c": {"a": [1, 2.5], "p": "x/y"}, "arr": [0, 1, 2], "jx": 1.5, "i": 7, "b": True, "s": [3],
                   "1": None}
    assert json.loads(json.dumps(out)) == out


def test_lenient_keeps_nan_and_stringifies_unknown():
    out = to_jsonable({"x": float("nan"), "o": object})
    assert math.isnan(out["x"]) and out["o"].startswith("<class")


def test_strict_nulls_non_finite_with_a_warning_naming_paths_and_refuses_unknown():
    with pytest.warns(RuntimeWarning, match=r"\$\.m\[1\]"):
        assert to_jsonable({"m": [1.0, float("inf")]}, strict=True) == {"m": [1.0, None]}
    with pytest.raises(TypeError, match=r"\$\.o"):
        to_jsonable({"o": object()}, strict=True)
