"""Exact hypervolume against moocore, inclusion-exclusion and integer-grid counting, both backends (compiled numba
kernels and NumPy, each the other's reference too); Pareto filter against O(n²)."""

import importlib
import itertools
import subprocess
import sys

import moocore
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mojax.metrics import hypervolume, pareto_front
from hv_testlib import grid_count

# The module itself (``mojax.metrics.hypervolume`` the attribute is the function, which shadows it).
hv_module = importlib.import_module("mojax.metrics.hypervolume")


def _sphere_front(rng, n, k, dominated_frac=0.3):
    """Points on the positive unit sphere (mutually non-dominated) plus some shrunken, dominated copies."""
    x = np.abs(rng.normal(size=(n, k)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    extra = x[: int(n * dominated_frac)] * rng.uniform(0.5, 1.0, size=(int(n * dominated_frac), 1))
    return np.vstack([x, extra])


def _inclusion_exclusion(points, ref):
    """HV = Σ_{S ≠ ∅} (−1)^{|S|+1} vol(box(ref, min over S)), maximisation; exponential, for tiny sets."""
    pts = [p for p in points if np.all(p > ref)]
    total = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, size):
            corner = np.min(subset, axis=0)
            total += (-1) ** (size + 1) * np.prod(corner - ref)
    return total


def _naive_nondominated(points):
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if np.all(points[j] >= points[i]) and np.any(points[j] > points[i]):
                mask[i] = False
    return mask


@pytest.mark.parametrize("k,n", [(2, 300), (3, 200), (5, 25)])
@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_matches_moocore(k, n, maximize, backend):
    rng = np.random.default_rng(k * 10 + n)
    pts = _sphere_front(rng, n, k)
    ref = np.full(k, -0.05)
    ref[0] = 0.2  # some points fall below the reference in one coordinate and must contribute nothing
    if maximize:
        expected = moocore.hypervolume(-pts, ref=-ref)
        got = hypervolume(pts, ref, backend=backend)
    else:
        expected = moocore.hypervolume(pts - 1.0, ref=-ref)
        got = hypervolume(pts - 1.0, -ref, maximize=False, backend=backend)
    assert expected > 0
    assert abs(got - expected) <= 1e-12


@pytest.mark.parametrize("k", [2, 3, 4])
def test_matches_inclusion_exclusion_and_grid_counting(k):
    rng = np.random.default_rng(k)
    for _ in range(3):
        pts = rng.uniform(0, 1, size=(7, k))
        ref = np.full(k, 0.1)
        assert hypervolume(pts, ref) == pytest.approx(_inclusion_exclusion(pts, ref), abs=1e-13)
    ints = rng.integers(0, 6, size=(9, k)).astype(float)
    ref = np.zeros(k)
    assert hypervolume(ints, ref) == grid_count(ints, ref, 6)


def test_simple_closed_forms():
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [0.0, 0.0]) == 3.0
    assert hypervolume([[1.0, 1.0, 1.0]], [0.0, 0.0, 0.0]) == 1.0
    assert hypervolume(np.empty((0, 3)), np.zeros(3)) == 0.0
    assert hypervolume([[-1.0, 5.0]], [0.0, 0.0]) == 0.0  # does not dominate the reference
    assert hypervolume([[3.0], [2.0]], [1.0]) == 2.0
    # Two unit-overlapping cubes in 4-D: 2 + 2 − 1.
    assert hypervolume([[2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0]], np.zeros(4)) == 3.0
    # Points on the reference boundary, duplicates, and a 4-D set where nothing dominates the reference.
    assert hypervolume([[0.0, 3.0], [2.0, 2.0], [2.0, 2.0]], [0.0, 0.0]) == 4.0
    assert hypervolume([[1.0, 1.0, 1.0, -1.0], [0.0, 2.0, 2.0, 2.0]], np.zeros(4)) == 0.0
    assert hypervolume([[1.0, 2.0, 1.0, 1.0]] * 3, np.zeros(4)) == 2.0
    with pytest.raises(ValueError, match="reference"):
        hypervolume([[1.0, 2.0]], [0.0])
    with pytest.raises(ValueError, match=r"\[n, K\]"):
        hypervolume([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        hypervolume([[np.nan, 2.0]], [0.0, 0.0])


_points = st.integers(2, 4).flatmap(
    lambda k: hnp.arrays(
        np.float64, st.tuples(st.integers(1, 12), st.just(k)), elements=st.floats(-1.0, 4.0, width=32)
    )
)


@settings(max_examples=40, deadline=None)
@given(points=_points, extra=st.lists(st.floats(-1.0, 4.0, width=32), min_size=4, max_size=4), seed=st.integers(0, 99))
def test_hypervolume_properties(points, extra, seed):
    k = points.shape[1]
    ref = np.zeros(k)
    hv = hypervolume(points, ref)
    # Permutation invariant.
    perm = np.random.default_rng(seed).permutation(len(points))
    assert hypervolume(points[perm], ref) == pytest.approx(hv, rel=1e-12, abs=1e-12)
    # Monotone under adding a point.
    new = np.asarray(extra[:k])
    assert hypervolume(np.vstack([points, new]), ref) >= hv - 1e-12
    # A dominated point changes nothing.
    dominated = points[0] - np.abs(np.asarray(extra[:k])) * 0.5
    assert hypervolume(np.vstack([points, dominated]), ref) == pytest.approx(hv, rel=1e-12, abs=1e-12)
    # A single point's HV is its box volume; the set's HV is at least the largest box and at most the sum.
    boxes = np.prod(np.clip(points - ref, 0.0, None), axis=1)
    assert hypervolume(points[:1], ref) == pytest.approx(boxes[0], rel=1e-12, abs=1e-15)
    assert boxes.max() - 1e-12 <= hv <= boxes.sum() + 1e-12
    # Minimisation is maximisation of the negated problem.
    assert hypervolume(-points, -ref, maximize=False) == pytest.approx(hv, rel=1e-12, abs=1e-15)
    # Only the Pareto front matters.
    assert hypervolume(pareto_front(points), ref) == pytest.approx(hv, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(points=_points, maximize=st.booleans())
def test_pareto_front_matches_naive(points, maximize):
    # Coarse values make ties and duplicates common.
    points = np.round(points)
    mask = pareto_front(points, maximize=maximize, return_mask=True)
    expected = _naive_nondominated(points if maximize else -points)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(pareto_front(points, maximize=maximize), points[expected])


def test_pareto_front_matches_moocore_large():
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        pts = np.round(_sphere_front(rng, 400, k) * 20) / 20
        np.testing.assert_array_equal(pareto_front(pts, return_mask=True), moocore.is_nondominated(-pts, keep_weakly=True))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_ties_and_duplicates_match_moocore(k, backend):
    # Small integers: ties in every coordinate, exact duplicates, dominated points, points on the reference.
    rng = np.random.default_rng(k)
    n = {2: 2000, 3: 300, 4: 60, 5: 30}[k]
    pts = rng.integers(0, 6, size=(n, k)).astype(np.float64)
    ref = np.full(k, 1.0)
    assert hypervolume(pts, ref, backend=backend) == moocore.hypervolume(-pts, ref=-ref)
    assert hypervolume(-pts, -ref, maximize=False, backend=backend) == moocore.hypervolume(-pts, ref=-ref)


def test_fallback_without_numba(monkeypatch):
    rng = np.random.default_rng(3)
    pts, ref = _sphere_front(rng, 100, 3), np.zeros(3)
    expected = moocore.hypervolume(-pts, ref=-ref)
    # numba "uninstalled": importing it (or the kernel module) raises ImportError; forget any earlier import.
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setitem(sys.modules, "mojax.metrics._hv_numba", None)
    monkeypatch.setattr(hv_module, "_compiled", None)
    assert abs(hypervolume(pts, ref) - expected) <= 1e-12
    assert hv_module._compiled is False  # "auto" tried the import, failed, and used the NumPy kernels
    assert abs(hypervolume(np.hstack([pts, pts[:, :1]]), np.zeros(4)) - moocore.hypervolume(
        -np.hstack([pts, pts[:, :1]]), ref=np.zeros(4))) <= 1e-12
    with pytest.raises(ImportError, match=r"mojax\[fast\]"):
        hypervolume(pts, ref, backend="numba")


def test_backend_validation_and_lazy_import():
    with pytest.raises(ValueError, match="backend"):
        hypervolume([[1.0, 2.0, 3.0]], [0.0, 0.0, 0.0], backend="cuda")
    # Importing mojax, and a 2-D hypervolume, must not import numba (~0.3 s); a 3-D one does when it is installed.
    code = ("import sys, mojax; mojax.hypervolume([[1.0, 2.0]], [0.0, 0.0]); print('numba' in sys.modules); "
            "mojax.hypervolume([[1.0, 2.0, 3.0]], [0.0, 0.0, 0.0]); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"
    try:
        import numba  # noqa: F401
    except ImportError:
        assert out[1] == "False"
    else:
        assert out[1] == "True"
