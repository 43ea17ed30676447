"""expected_calibration_error against a direct NumPy count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mojax.metrics import expected_calibration_error


def _ece_numpy(probs, labels, num_bins, where=None):
    """Bins (m/M, (m+1)/M], the first closed at 0; ECE = Σ_m |B_m|/N · |mean y − mean p|."""
    keep = np.ones(len(probs), bool) if where is None else where
    probs, labels = probs[keep], labels[keep]
    if len(probs) == 0:
        return 0.0
    total = 0.0
    for m in range(num_bins):
        lo, hi = m / num_bins, (m + 1) / num_bins
        in_bin = (probs <= hi) & (probs > lo) if m > 0 else (probs <= hi)
        if m == num_bins - 1:
            in_bin = probs > lo if m > 0 else np.ones_like(probs, bool)
        if in_bin.any():
            total += in_bin.sum() / len(probs) * abs(labels[in_bin].mean() - probs[in_bin].mean())
    return total


_ece_jit = jax.jit(expected_calibration_error, static_argnames=("num_bins",))


@settings(max_examples=30, deadline=None)
@given(
    probs=hnp.arrays(np.float64, 40, elements=st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]))),
    labels=hnp.arrays(np.float64, 40, elements=st.sampled_from([0.0, 1.0])),
    where=hnp.arrays(np.bool_, 40),
    num_bins=st.sampled_from([1, 5, 10, 20]),
)
def test_matches_numpy_count(probs, labels, where, num_bins):
    with jax.enable_x64(True):
        got = float(_ece_jit(jnp.asarray(probs), jnp.asarray(labels), num_bins=num_bins, where=jnp.asarray(where)))
        got_all = float(_ece_jit(jnp.asarray(probs), jnp.asarray(labels), num_bins=num_bins))
    assert got == pytest.approx(_ece_numpy(probs, labels, num_bins, where), abs=1e-12)
    assert got_all == pytest.approx(_ece_numpy(probs, labels, num_bins), abs=1e-12)


def test_closed_forms():
    # Perfectly calibrated: in the 0.25-bin one of four is positive.
    probs = jnp.asarray([0.25, 0.25, 0.25, 0.25, 0.95, 0.95])
    labels = jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(4 / 6 * 0 + 2 / 6 * 0.05, abs=1e-6)
    # Always confident and always wrong.
    assert float(expected_calibration_error(jnp.ones(5), jnp.zeros(5))) == pytest.approx(1.0)
    # A probability on an edge goes to the lower bin: 0.5 with M = 2 shares a bin with 0.1.
    assert float(expected_calibration_error(jnp.asarray([0.1, 0.5]), jnp.asarray([0.0, 1.0]), num_bins=2)) == (
        pytest.approx(abs(0.5 - 0.3), abs=1e-6)
    )
    assert float(expected_calibration_error(jnp.ones(3), jnp.ones(3), where=jnp.zeros(3, bool))) == 0.0
    assert expected_calibration_error(jnp.full((2, 3), 0.7), jnp.ones((2, 3))).shape == ()
    with pytest.raises(ValueError, match="same shape"):
        expected_calibration_error(jnp.ones(3), jnp.ones(2))
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(jnp.ones(3), jnp.ones(3), num_bins=0)
