"""min_norm_weights against scipy SLSQP (float64), the K = 2 closed form, and degenerate inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from mojax.solvers import (
    ema_update,
    gram_min_norm_weights,
    min_norm_kkt_residual,
    min_norm_weights,
    normalize_rows,
)


def _scipy_min_norm(gram):
    """Reference: SLSQP on the simplex in float64, with analytic gradient and tight tolerance."""
    k = gram.shape[0]
    res = minimize(
        lambda lam: lam @ gram @ lam,
        np.full(k, 1.0 / k),
        jac=lambda lam: 2.0 * gram @ lam,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0, "jac": lambda lam: np.ones(k)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    lam = np.clip(res.x, 0.0, None)
    return lam / lam.sum()


def _problems(k, rng, p=24):
    """Well-conditioned, rank-deficient, strongly correlated and badly scaled gradient sets, unit-ish scale."""
    return np.stack([
        rng.normal(size=(k, p)) / 5,
        rng.normal(size=(k, max(1, k // 2))) @ rng.normal(size=(max(1, k // 2), p)) / 10,
        (rng.normal(size=(k, p)) + 3 * rng.normal(size=p)) / 6,
        rng.normal(size=(k, p)) * np.exp(rng.normal(size=(k, 1)) * 1.5) / 4,
    ])


_solve = jax.jit(min_norm_weights, static_argnames=("normalize", "return_info"))
_solve_batch = jax.jit(jax.vmap(lambda g: min_norm_weights(g, return_info=True)))


@pytest.mark.parametrize("k", [3, 7, 16])
def test_matches_scipy_and_satisfies_kkt(k):
    batch = np.concatenate([_problems(k, np.random.default_rng(100 + k)), _problems(k, np.random.default_rng(k))])
    with jax.enable_x64(True):
        lam, info = _solve_batch(jnp.asarray(batch, jnp.float64))
    lam = np.asarray(lam)
    for b in range(len(batch)):
        gram = batch[b] @ batch[b].T
        ref = _scipy_min_norm(gram)
        ours_obj, ref_obj = lam[b] @ gram @ lam[b], ref @ gram @ ref
        assert abs(ours_obj - ref_obj) <= 1e-8
        assert ours_obj <= ref_obj + 1e-12  # never worse than the general-purpose solver
        assert np.all(lam[b] >= 0) and abs(lam[b].sum() - 1) < 1e-12
        assert float(info["kkt_residual"][b]) <= 1e-6
        np.testing.assert_allclose(float(info["min_norm_sq"][b]), ours_obj, rtol=1e-10, atol=1e-14)


def _closed_form_two(g1, g2):
    gamma = np.clip((g2 @ g2 - g1 @ g2) / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    return np.array([gamma, 1.0 - gamma])


def test_two_objectives_closed_form():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        cases = [rng.normal(size=(2, 50)) for _ in range(5)]
        cases.append(np.array([[1.0, 0.0], [3.0, 0.1]]))  # g1 shorter and aligned: γ clips to 1
        cases.append(np.array([[3.0, 0.1], [1.0, 0.0]]))  # γ clips to 0
        for grads in cases:
            lam = np.asarray(min_norm_weights(jnp.asarray(grads)))
            np.testing.assert_allclose(lam, _closed_form_two(grads[0], grads[1]), rtol=1e-14, atol=1e-15)
            gram_lam = np.asarray(gram_min_norm_weights(jnp.asarray(grads @ grads.T)))
            np.testing.assert_allclose(gram_lam, lam, atol=1e-12)
        assert np.asarray(min_norm_weights(jnp.asarray(cases[-2]))).tolist() == [1.0, 0.0]
        assert np.asarray(min_norm_weights(jnp.asarray(cases[-1]))).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("k", [2, 5])
def test_degenerate_gradients(k):
    rng = np.random.default_rng(1)
    g = rng.normal(size=8)
    uniform = np.full(k, 1.0 / k)
    with jax.enable_x64(True):
        # Every λ is optimal: the deterministic answer is uniform.
        for grads in (np.zeros((k, 8)), np.tile(g, (k, 1))):
            lam = np.asarray(_solve(jnp.asarray(grads)))
            np.testing.assert_allclose(lam, uniform, atol=1e-12)
        # Collinear, one opposite sign: the hull contains 0, so the minimal norm is 0.
        scales = np.linspace(1.0, 2.0, k)
        scales[0] = -1.0
        grads = scales[:, None] * g
        lam, info = _solve(jnp.asarray(grads), return_info=True)
        lam = np.asarray(lam)
        assert np.all(np.isfinite(lam)) and np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-12
        assert np.linalg.norm(lam @ grads) <= 1e-7 * np.linalg.norm(g)
        # Collinear, same sign: all weight on the shortest gradient.
        grads = np.linspace(2.0, 1.0, k)[:, None] * g
        lam = np.asarray(_solve(jnp.asarray(grads)))
        np.testing.assert_allclose(lam, np.eye(k)[-1], atol=1e-9)
        # Zero gradient among non-zero ones: it is the min-norm point.
        grads = rng.normal(size=(k, 8))
        grads[k // 2] = 0.0
        lam = np.asarray(_solve(jnp.asarray(grads)))
        np.testing.assert_allclose(lam @ grads, 0.0, atol=1e-9)
    # float32 too: finite and on the simplex.
    for grads in (np.zeros((k, 8), np.float32), np.tile(g.astype(np.float32), (k, 1))):
        lam = np.asarray(_solve(jnp.asarray(grads)))
        assert np.all(np.isfinite(lam)) and abs(lam.sum() - 1) < 1e-6


def test_jit_matches_eager_and_vmap_matches_loop():
    rng = np.random.default_rng(3)
    grads = jnp.asarray(rng.normal(size=(4, 5, 32)), jnp.float32)
    jitted = np.stack([np.asarray(_solve(g)) for g in grads])
    np.testing.assert_allclose(np.asarray(min_norm_weights(grads[0])), jitted[0], atol=1e-6)  # eager
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(min_norm_weights))(grads)), jitted, atol=1e-6)
    # Both batching rules of the Gram (K = 2 fused products, K >= 3 per-problem matmuls) and nested vmap.
    pairs = grads[:, :2]
    np.testing.assert_allclose(
        np.asarray(jax.vmap(min_norm_weights)(pairs)), np.stack([np.asarray(_solve(g)) for g in pairs]), atol=1e-6
    )
    nested = np.asarray(jax.jit(jax.vmap(jax.vmap(min_norm_weights)))(grads.reshape(2, 2, 5, 32)))
    np.testing.assert_allclose(nested.reshape(4, 5), jitted, atol=1e-6)
    # float32 agrees with the float64 optimum in objective.
    with jax.enable_x64(True):
        g64 = np.asarray(grads, np.float64)
        lam64 = np.asarray(_solve_batch(jnp.asarray(g64))[0])
    for b in range(4):
        gram = g64[b] @ g64[b].T
        np.testing.assert_allclose(jitted[b] @ gram @ jitted[b], lam64[b] @ gram @ lam64[b], rtol=1e-5)


def test_normalize_matches_normalized_rows_and_is_scale_invariant():
    rng = np.random.default_rng(4)
    grads = rng.normal(size=(4, 16))
    with jax.enable_x64(True):
        lam = np.asarray(_solve(jnp.asarray(grads), normalize=True))
        unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
        np.testing.assert_allclose(np.asarray(normalize_rows(jnp.asarray(grads))), unit, rtol=1e-14)
        np.testing.assert_allclose(np.asarray(_solve(jnp.asarray(unit))), lam, atol=1e-12)
        rescaled = grads * np.array([[0.1], [5.0], [2.0], [30.0]])
        np.testing.assert_allclose(np.asarray(_solve(jnp.asarray(rescaled), normalize=True)), lam, atol=1e-12)
        assert np.all(np.asarray(normalize_rows(jnp.zeros((2, 3)))) == 0)


@settings(max_examples=20, deadline=None)
@given(
    k=st.sampled_from([3, 7]),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-6.0, 6.0),
    rank=st.integers(1, 8),
)
def test_property_optimal_on_simplex(k, seed, log_scale, rank):
    rng = np.random.default_rng(seed)
    # Eight problems of one shape per example, so the jitted solver compiles once per K (shared with the test above).
    batch = (rng.normal(size=(8, k, rank)) @ rng.normal(size=(8, rank, 24))) * 10.0**log_scale
    batch *= np.exp(rng.normal(size=(8, k, 1)))
    with jax.enable_x64(True):
        lam, info = _solve_batch(jnp.asarray(batch))
    lam = np.asarray(lam)
    for b in range(8):
        gram = batch[b] @ batch[b].T
        assert np.all(lam[b] >= 0) and abs(lam[b].sum() - 1) < 1e-12
        obj = lam[b] @ gram @ lam[b]
        scale = max(np.max(np.diag(gram)), 1e-300)
        # No vertex and not the uniform point beats it; KKT holds to 1e-6 relative.
        assert obj <= np.min(np.diag(gram)) + 1e-12 * scale
        assert obj <= np.full(k, 1 / k) @ gram @ np.full(k, 1 / k) + 1e-12 * scale
        assert float(info["kkt_residual"][b]) <= 1e-6


def test_kkt_residual_detects_non_optimal_points():
    gram = jnp.asarray(np.diag([1.0, 2.0, 4.0]))
    # Optimum ∝ 1/diag: (4, 2, 1)/7.
    assert float(min_norm_kkt_residual(gram, jnp.asarray([4.0, 2.0, 1.0]) / 7)) < 1e-6
    assert float(min_norm_kkt_residual(gram, jnp.asarray([1.0, 0.0, 0.0]))) > 0.1
    assert float(min_norm_kkt_residual(gram, jnp.asarray([0.5, 0.5, 0.5]))) > 0.1  # off the simplex


def test_ema_update_and_errors():
    ema = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    grads = jnp.asarray([[0.0, 0.0], [10.0, 20.0]])
    np.testing.assert_allclose(np.asarray(ema_update(ema, grads, decay=0.99)), 0.99 * ema + 0.01 * grads, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ema_update(ema, grads, decay=0.0)), np.asarray(grads))
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, grads, decay=1.5)
    with pytest.raises(ValueError, match="same shape"):
        ema_update(ema, grads[0])
    with pytest.raises(ValueError, match=r"\[K, P\]"):
        min_norm_weights(jnp.ones(3))
    with pytest.raises(ValueError, match="square"):
        gram_min_norm_weights(jnp.ones((2, 3)))
    assert np.asarray(min_norm_weights(jnp.ones((1, 3)))).tolist() == [1.0]
    # Non-finite gradients are reported, not hidden behind the uniform start; low precision is promoted.
    bad = jnp.asarray([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]])
    assert np.all(np.isnan(np.asarray(_solve(bad))))
    assert _solve(jnp.ones((3, 4), jnp.bfloat16)).dtype == jnp.float32


def test_weights_are_constants_under_grad():
    grads = jnp.asarray(np.random.default_rng(6).normal(size=(3, 8)), jnp.float32)

    def loss(scale):
        lam = min_norm_weights(grads * scale)
        return jnp.sum(lam * jnp.sum(grads * scale, axis=1))

    lam = min_norm_weights(grads)
    # d/dscale of Σ λ_k (g_k · scale) with λ held fixed.
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jnp.ones(8))), np.asarray(lam @ grads), rtol=1e-5, atol=1e-6)


def test_fista_warm_start_reaches_the_same_optimum():
    rng = np.random.default_rng(5)
    grads = rng.normal(size=(6, 24)) * np.exp(rng.normal(size=(6, 1)))
    gram = grads @ grads.T
    with jax.enable_x64(True):
        solve = jax.jit(min_norm_weights, static_argnames=("num_iters", "fista_iters"))
        base = np.asarray(solve(jnp.asarray(grads)))
        warm = np.asarray(solve(jnp.asarray(grads), fista_iters=16, num_iters=8))
    assert abs(warm @ gram @ warm - base @ gram @ base) <= 1e-12 * np.max(np.diag(gram))
