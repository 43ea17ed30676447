import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from losses_testlib import FAST, check_loss_contract, rng_arrays
from scipy import stats

from mojax.losses import (
    dpo_loss,
    listwise_dpo_loss,
    modpo_loss,
    normalize_temperatures,
    rescale_temperature,
    sample_simplex_weights,
    scalarized_loss,
)


def np_scalarized(losses, weights, mu):
    losses, weights = np.float64(losses), np.float64(weights)
    cos = np.sum(losses * weights, -1) / (np.linalg.norm(losses, axis=-1) * np.linalg.norm(weights, axis=-1))
    return np.sum(weights * losses, -1) - mu * cos


def test_scalarized_closed_form():
    # ℓ = (3, 4), w = (0.6, 0.8) is on the same ray: cos = 1, loss = 1.8 + 3.2 - μ.
    np.testing.assert_allclose(scalarized_loss(jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8]), penalty=0.5), 4.5,
                               rtol=1e-6)
    # Orthogonal: ℓ = (1, 0), w = (0, 1): loss = 0 - μ·0.
    np.testing.assert_allclose(scalarized_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), penalty=2.0), 0.0,
                               atol=1e-7)


def test_scalarized_matches_numpy_and_one_hot_weights():
    losses, w = rng_arrays(0, (8, 3), (8, 3))
    losses, w = np.abs(losses), np.abs(w)
    w = w / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(scalarized_loss(losses, w, penalty=0.3, reduce_fn=None), np_scalarized(losses, w, 0.3),
                               rtol=1e-5)
    for k in range(3):
        one_hot = np.eye(3, dtype=np.float32)[k]
        np.testing.assert_allclose(scalarized_loss(losses, one_hot, reduce_fn=None), losses[:, k], rtol=1e-6)
        # With the penalty, one-hot weights give ℓ_k - μ ℓ_k / ‖ℓ‖.
        np.testing.assert_allclose(scalarized_loss(losses, one_hot, penalty=0.5, reduce_fn=None),
                                   losses[:, k] - 0.5 * losses[:, k] / np.linalg.norm(losses, axis=-1), rtol=1e-5)


def test_scalarized_contract_and_grads():
    losses, w = rng_arrays(1, (8, 2), (8, 2))
    losses, w = np.abs(losses) + 0.1, np.abs(w) + 0.1
    check_loss_contract(lambda l, w, **kw: scalarized_loss(l, w, penalty=0.4, **kw), (losses, w))
    # A zero loss vector keeps a finite gradient.
    g = jax.grad(lambda l: scalarized_loss(l, jnp.array([0.5, 0.5]), penalty=1.0))(jnp.zeros(2))
    assert np.all(np.isfinite(g))
    with jax.enable_x64(True):
        f = jax.jit(lambda l: scalarized_loss(l, np.float64(w), penalty=0.4))
        check_grads(f, (np.float64(losses),), order=2, modes=("rev",))


def test_sample_simplex_weights_is_dirichlet():
    w = sample_simplex_weights(jax.random.key(0), (4000,), 3, concentration=2.0)
    assert w.shape == (4000, 3) and w.dtype == jnp.float32
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.02)
    # Marginal of Dirichlet(2, 2, 2) is Beta(2, 4).
    assert stats.kstest(np.asarray(w[:, 0]), stats.beta(2, 4).cdf).pvalue > 1e-3
    # α = 1 is uniform on the simplex: marginal Beta(1, K - 1). (Same shapes as above: no new compile.)
    u = sample_simplex_weights(jax.random.key(1), 4000, 3)
    assert stats.kstest(np.asarray(u[:, 0]), stats.beta(1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(np.asarray(w[:, 0]), stats.beta(1, 2).cdf).pvalue < 1e-3  # the test can tell them apart
    np.testing.assert_array_equal(sample_simplex_weights(jax.random.key(2), (3,), 1), 1.0)
    with pytest.raises(ValueError, match="concentration"):
        sample_simplex_weights(jax.random.key(0), (2,), 3, concentration=0.0)
    with pytest.raises(ValueError, match="num_objectives"):
        sample_simplex_weights(jax.random.key(0), (2,), 0)


def test_rescale_temperature_closed_form_and_errors():
    np.testing.assert_allclose(rescale_temperature(jnp.array([3.0, -1.0]), jnp.array([1.0, 1.0]), 2.0, 4.0),
                               [2.0, 0.0])
    with pytest.raises(ValueError, match="beta_to"):
        rescale_temperature(1.0, 0.0, 1.0, 0.0)


@FAST
@given(beta=st.floats(0.1, 5.0), beta_to=st.floats(0.1, 5.0), seed=st.integers(0, 1000))
def test_losses_depend_on_scores_only_through_beta_times_difference(beta, beta_to, seed):
    # The premise of Prop. 3.1: ℓ_β(f) == ℓ_β'(rescale(f, β → β')).
    f, f_ref, labels = rng_arrays(seed, (6,), (6,), (6,))
    g = rescale_temperature(f, f_ref, beta, beta_to)
    np.testing.assert_allclose(listwise_dpo_loss(f, f_ref, labels, beta=beta),
                               listwise_dpo_loss(g, f_ref, labels, beta=beta_to), rtol=1e-4, atol=1e-5)


def test_prop_3_1_rescaled_optimum_is_the_other_temperatures_optimum():
    # One list with free scores f; listwise DPO with softmax labels is minimised where
    # softmax(β (f - f_ref)) = softmax(ψ), i.e. f* = f_ref + ψ/β + const.
    f_ref = jnp.array([0.3, -1.0, 2.0, 0.5])
    labels = jnp.array([2.0, 0.0, 1.0, 0.5])
    beta, beta_to = 0.5, 2.0

    def optimum(b):
        loss = lambda f: listwise_dpo_loss(f, f_ref, labels, beta=b)
        # The Hessian is (β² × softmax covariance); step 1/β² keeps gradient descent equally fast at any β.
        step = lambda _, f: f - (2.0 / b**2) * jax.grad(loss)(f)
        return jax.lax.fori_loop(0, 400, step, f_ref)

    f_beta, f_beta_to = jax.jit(optimum, static_argnums=0)(beta), jax.jit(optimum, static_argnums=0)(beta_to)
    rescaled = rescale_temperature(f_beta, f_ref, beta, beta_to)
    centre = lambda x: x - x.mean()
    np.testing.assert_allclose(centre(rescaled), centre(f_beta_to), atol=1e-4)
    np.testing.assert_allclose(centre(f_beta_to - f_ref), centre(labels / beta_to), atol=1e-4)
    grad_at_rescaled = jax.grad(lambda f: listwise_dpo_loss(f, f_ref, labels, beta=beta_to))(rescaled)
    np.testing.assert_allclose(grad_at_rescaled, 0.0, atol=1e-5)


def test_normalize_temperatures_serves_every_scale():
    betas = jnp.array([0.5, 1.5])
    direction, scale = normalize_temperatures(betas)
    np.testing.assert_allclose(direction, [0.25, 0.75])
    np.testing.assert_allclose(scale, 2.0)
    # Scores f_d trained with temperatures d, rescaled by 1 → s, give the same per-objective losses at β = s d.
    f_d, f_ref, l0, l1 = rng_arrays(3, (5,), (5,), (5,), (5,))
    f_beta = rescale_temperature(f_d, f_ref, 1.0, scale)
    for k, labels in enumerate((l0, l1)):
        np.testing.assert_allclose(listwise_dpo_loss(f_beta, f_ref, labels, beta=betas[k]),
                                   listwise_dpo_loss(f_d, f_ref, labels, beta=direction[k]), rtol=1e-5)


def np_modpo(c, r, rc, rr, other, w, beta, k):
    w = np.float64(w)
    w_rest = np.delete(w, k, axis=-1)
    z = (beta * ((np.float64(c) - rc) - (np.float64(r) - rr)) - np.sum(w_rest * other, -1)) / w[..., k]
    return np.logaddexp(0.0, -z)


def test_modpo_matches_numpy_and_reduces_to_dpo():
    c, r, rc, rr = rng_arrays(4, (8,), (8,), (8,), (8,))
    (other,) = rng_arrays(5, (8, 2))
    w = np.array([0.2, 0.5, 0.3], np.float32)
    got = modpo_loss(c, r, rc, rr, other, w, beta=0.7, objective_index=1, reduce_fn=None)
    np.testing.assert_allclose(got, np_modpo(c, r, rc, rr, other, w, 0.7, 1), rtol=1e-5)
    # w = e_k ignores the other objectives and is DPO.
    got = modpo_loss(c, r, rc, rr, other, np.array([0.0, 1.0, 0.0], np.float32), beta=0.7, objective_index=1)
    np.testing.assert_allclose(got, dpo_loss(c, r, rc, rr, beta=0.7), rtol=1e-6)
    # K = 1 (no other objective) is DPO too.
    got = modpo_loss(c, r, rc, rr, np.zeros((8, 0), np.float32), np.ones(1, np.float32), beta=0.7,
                     objective_index=0)
    np.testing.assert_allclose(got, dpo_loss(c, r, rc, rr, beta=0.7), rtol=1e-6)


def test_modpo_contract_and_errors():
    c, r, rc, rr = rng_arrays(6, (8,), (8,), (8,), (8,))
    (other,) = rng_arrays(7, (8, 1))
    w = jnp.array([0.4, 0.6])
    check_loss_contract(lambda c, r, rc, rr, o, **kw: modpo_loss(c, r, rc, rr, o, w, beta=0.5, objective_index=0, **kw),
                        (c, r, rc, rr, other))
    with pytest.raises(ValueError, match="objective_index"):
        modpo_loss(c, r, rc, rr, other, w, beta=0.5, objective_index=2)
    with pytest.raises(ValueError, match="K - 1"):
        modpo_loss(c, r, rc, rr, other[:, :0], w, beta=0.5, objective_index=0)
    with pytest.raises(ValueError, match="weights"):
        modpo_loss(c, r, rc, rr, other, jnp.array([0.0, 1.0]), beta=0.5, objective_index=0)
    # Closed form: w = (0.5, 0.5), h = 1, Δr_other = 1, β = 1: z = (1 - 0.5)/0.5 = 1.
    np.testing.assert_allclose(
        modpo_loss(1.0, 0.0, 0.0, 0.0, jnp.array([1.0]), w * 0 + 0.5, beta=1.0, objective_index=0),
        math.log1p(math.exp(-1.0)), rtol=1e-6)


def test_modpo_check_grads():
    with jax.enable_x64(True):
        c, r, rc, rr = (np.float64(a) for a in rng_arrays(8, (5,), (5,), (5,), (5,)))
        other = np.float64(rng_arrays(9, (5, 1))[0])
        f = jax.jit(lambda c, r: modpo_loss(c, r, rc, rr, other, np.array([0.3, 0.7]), beta=0.5, objective_index=1))
        check_grads(f, (c, r), order=1, modes=("rev",))


def test_cos_dpo_losses_refuse_mismatched_shapes():
    b, k = 4, 3
    c = jnp.zeros(b)
    w = jnp.full((k,), 1.0 / k)
    other = jnp.zeros((b, k - 1))
    modpo_loss(c, c, c, c, other, w, beta=0.5, objective_index=0)
    with pytest.raises(ValueError, match=r"modpo_loss: input shapes do not match: .*ref_rejected_logps \[4, 1\]"):
        modpo_loss(c, c, c, c[:, None], other, w, beta=0.5, objective_index=0)
    with pytest.raises(ValueError, match=r"modpo_loss: input shapes do not match: .*other_reward_margins"):
        modpo_loss(c, c, c, c, other[:, None, :], w, beta=0.5, objective_index=0)
    losses = jnp.ones((b, k))
    scalarized_loss(losses, w)  # one weight vector for the whole batch broadcasts
    with pytest.raises(ValueError, match=r"scalarized_loss: input shapes do not match: "
                                         r"per_objective_losses \[4, 3\], weights \[4, 1, 3\]"):
        scalarized_loss(losses, w[None, None, :].repeat(b, 0))
