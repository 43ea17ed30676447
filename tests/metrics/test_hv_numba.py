"""The compiled hypervolume kernels (numba, K ≥ 3) against moocore and the NumPy kernels: random fronts up to
n = 2000 in both senses with a reference that cuts the front, duplicates, dominated points and integer ties,
degenerate sizes, and a hypothesis property. Exercised through ``hypervolume(..., backend="numba")``, the path users
take."""

import moocore
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mojax.metrics import hypervolume
from hv_testlib import grid_count

pytest.importorskip("numba")  # an optional dependency (mojax[fast]); test_hypervolume.py covers the fallback


def _random_front(rng, n, k, kind):
    """n points of one of three kinds: on the positive unit sphere (all non-dominated), uniform in a box (mostly
    dominated), or small integers (heavy ties in every coordinate and exact duplicates)."""
    if kind == "sphere":
        x = np.abs(rng.normal(size=(n, k)))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "box":
        return rng.uniform(0.0, 1.0, size=(n, k))
    return rng.integers(0, 8, size=(n, k)).astype(np.float64)


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("kind", ["sphere", "box", "ints"])
@pytest.mark.parametrize("maximize", [True, False])
def test_compiled_matches_moocore(k, kind, maximize):
    rng = np.random.default_rng(k * 100 + len(kind) + maximize)
    sizes = {3: (1, 2, 50, 2000), 4: (1, 2, 50, 300), 5: (1, 2, 30, 120)}[k]
    for n in sizes:
        pts = _random_front(rng, n, k, kind)
        pts = np.vstack([pts, pts[: n // 3], pts[: n // 4] * 0.9])  # duplicates and dominated copies
        # The reference cuts the front: some points lie at or below it in one coordinate and must count for nothing.
        ref = np.quantile(pts, 0.15, axis=0) if n > 2 else np.zeros(k)
        expected = moocore.hypervolume(-pts, ref=-ref)  # moocore minimises
        if maximize:
            got = hypervolume(pts, ref, backend="numba")
        else:
            got = hypervolume(-pts, -ref, maximize=False, backend="numba")
        assert abs(got - expected) <= 1e-12 * max(1.0, abs(expected)), (n, got, expected)
        if n > 100:
            assert expected > 0


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_compiled_matches_numpy_kernels_with_ties(k):
    rng = np.random.default_rng(7 + k)
    for trial in range(20):
        n = int(rng.integers(1, 60 if k < 6 else 25))
        pts = rng.integers(0, 5, size=(n, k)).astype(np.float64)  # many ties, duplicates and dominated points
        ref = np.zeros(k)
        compiled = hypervolume(pts, ref, backend="numba")
        assert compiled == hypervolume(pts, ref, backend="numpy")  # integer volumes: both exact
        if trial < 3 and k < 6:
            assert compiled == grid_count(pts, ref, 5)


def test_compiled_small_and_degenerate_inputs():
    for k in (3, 4, 5):
        ref = np.zeros(k)
        assert hypervolume(np.empty((0, k)), ref, backend="numba") == 0.0
        assert hypervolume(np.full((1, k), 2.0), ref, backend="numba") == 2.0**k
        assert hypervolume(np.full((5, k), 2.0), ref, backend="numba") == 2.0**k  # five duplicates
        assert hypervolume(-np.ones((3, k)), ref, backend="numba") == 0.0  # nothing dominates the reference
        # One point on the reference boundary (contributes nothing) and one box.
        on_boundary = np.ones((2, k))
        on_boundary[0, 0] = 0.0
        assert hypervolume(on_boundary * 3.0, ref, backend="numba") == 3.0**k
    # Two boxes sharing x and y, differing in z, and one sharing only z: 2·2·3 ∪ 2·2·1 ∪ 3·1·1 → 12 + (3 − 2)·1·1.
    pts = [[2.0, 2.0, 3.0], [2.0, 2.0, 1.0], [3.0, 1.0, 1.0]]
    assert hypervolume(pts, np.zeros(3), backend="numba") == 13.0


def test_compiled_accepts_any_layout_and_dtype():
    # Views, Fortran order, float32 and int inputs reach the kernel as one C-contiguous float64 layout (a new layout
    # would also cost a fresh compile); values must not change.
    rng = np.random.default_rng(11)
    pts = rng.integers(1, 9, size=(200, 8))
    ref_wide = np.zeros(8)
    expected = moocore.hypervolume(-pts[:, ::2].astype(float), ref=np.zeros(4))
    for view in (pts[:, ::2], np.asfortranarray(pts[:, ::2]), pts[:, ::2].astype(np.float32), pts[:, ::2].copy()):
        assert hypervolume(view, ref_wide[::2], backend="numba") == expected


_int_points = st.integers(3, 5).flatmap(
    lambda k: hnp.arrays(np.float64, st.tuples(st.integers(0, 30), st.just(k)), elements=st.integers(-2, 5).map(float))
)


@settings(max_examples=60, deadline=None)
@given(points=_int_points, maximize=st.booleans())
def test_compiled_equals_numpy_property(points, maximize):
    ref = np.full(points.shape[1], -1.0 if maximize else 4.0)
    compiled = hypervolume(points, ref, maximize=maximize, backend="numba")
    # Integer boxes: both kernels sum exact small integers, so they must agree exactly, and with moocore.
    assert compiled == hypervolume(points, ref, maximize=maximize, backend="numpy")
    if len(points):
        sign = -1.0 if maximize else 1.0
        assert compiled == moocore.hypervolume(sign * points, ref=sign * ref)
    else:
        assert compiled == 0.0
