"""preference_accuracy and win_rate against direct NumPy counts."""

import jax.numpy as jnp
import numpy as np
import pytest

from mojax.metrics import preference_accuracy, win_rate


def test_preference_accuracy():
    rng = np.random.default_rng(0)
    chosen = np.round(rng.normal(size=50), 1)
    rejected = np.round(rng.normal(size=50), 1)
    rejected[:5] = chosen[:5]  # ties
    where = rng.random(50) > 0.3
    expected = np.mean((chosen > rejected)[where])
    assert float(preference_accuracy(jnp.asarray(chosen), jnp.asarray(rejected), where=jnp.asarray(where))) == (
        pytest.approx(expected, rel=1e-6)
    )
    half = np.mean((chosen > rejected) + 0.5 * (chosen == rejected))
    assert float(preference_accuracy(jnp.asarray(chosen), jnp.asarray(rejected), ties=0.5)) == pytest.approx(half)
    assert float(preference_accuracy(jnp.ones(3), jnp.zeros(3), where=jnp.zeros(3, bool))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        preference_accuracy(jnp.ones(3), jnp.ones(2))


def test_win_rate_per_dimension():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, size=(40, 3)).astype(float)
    b = rng.integers(0, 3, size=(40, 3)).astype(float)
    where = rng.random(40) > 0.2
    got = np.asarray(win_rate(jnp.asarray(a), jnp.asarray(b), where=jnp.asarray(where)))
    expected = ((a > b) + 0.5 * (a == b))[where].mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Default tie credit 1/2: WR(A, B) + WR(B, A) = 1 per dimension.
    swapped = np.asarray(win_rate(jnp.asarray(b), jnp.asarray(a), where=jnp.asarray(where)))
    np.testing.assert_allclose(got + swapped, 1.0, rtol=1e-6)
    strict = np.asarray(win_rate(jnp.asarray(a), jnp.asarray(b), ties=0.0))
    np.testing.assert_allclose(strict, (a > b).mean(axis=0), rtol=1e-6)
    assert win_rate(jnp.ones(4), jnp.zeros(4)).shape == ()
    with pytest.raises(ValueError, match="ties"):
        win_rate(jnp.ones(4), jnp.zeros(4), ties=2.0)
