import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from losses_testlib import check_loss_contract, rng_arrays

from mojax.losses import dpo_loss, spo_loss

N_PREV, B = 4, 8


def make(seed=0):
    c, r, prev_c, prev_r = rng_arrays(seed, (B,), (B,), (N_PREV, B), (N_PREV, B), scale=2.0)
    return c, r, prev_c, prev_r


def np_spo(c, r, prev_c, prev_r, beta, alpha):
    m = np.float64(prev_c) - prev_r  # [n, B]
    alpha = np.broadcast_to(np.float64(alpha), (m.shape[0] - 1,))
    du = np.diff(m, axis=0)  # Δu_k = m_k - m_{k-1}
    z = beta * ((np.float64(c) - r) - m[-1]) - np.einsum("k,kb->b", alpha, du)
    return -(-np.logaddexp(0.0, -z)), 1.0 / (1.0 + np.exp(z))


def test_two_dimension_closed_form():
    # docs/methods/spo.md, n = 2: z = β Δ[logπ_θ - logπ_1] - α Δ[logπ_1 - logπ_0].
    # Δlogπ_θ = 1, Δlogπ_1 = 0.5, Δlogπ_0 = -0.5; β = 2, α = 0.5: z = 2·0.5 - 0.5·1 = 0.5.
    loss, m = spo_loss(0.0, -1.0, jnp.array([-1.0, -1.0]), jnp.array([-0.5, -1.5]), beta=2.0, alpha=0.5,
                       return_metrics=True)
    np.testing.assert_allclose(loss, math.log1p(math.exp(-0.5)), rtol=1e-6)
    np.testing.assert_allclose(m["phi"], 1 / (1 + math.exp(0.5)), rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.7, np.array([0.2, 0.0, 1.5], np.float32)])
def test_matches_float64_numpy(alpha):
    c, r, pc, pr = make(1)
    loss, m = spo_loss(c, r, pc, pr, beta=0.3, alpha=alpha, reduce_fn=None, return_metrics=True)
    ref_loss, ref_phi = np_spo(c, r, pc, pr, 0.3, alpha)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["phi"], ref_phi, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_dpo_against_previous_round():
    c, r, pc, pr = make(2)
    np.testing.assert_allclose(spo_loss(c, r, pc, pr, beta=0.4, alpha=0.0, reduce_fn=None),
                               dpo_loss(c, r, pc[-1], pr[-1], beta=0.4, reduce_fn=None), rtol=1e-6)
    np.testing.assert_allclose(spo_loss(c, r, pc, pr, beta=0.4, alpha=np.zeros(N_PREV - 1), reduce_fn=None),
                               dpo_loss(c, r, pc[-1], pr[-1], beta=0.4, reduce_fn=None), rtol=1e-6)
    # Round 1 (only π_0 cached) is DPO against π_0 whatever α.
    np.testing.assert_allclose(spo_loss(c, r, pc[:1], pr[:1], beta=0.4, alpha=3.0),
                               dpo_loss(c, r, pc[0], pr[0], beta=0.4), rtol=1e-6)


def test_scalar_alpha_telescopes():
    c, r, pc, pr = make(3)
    a = spo_loss(c, r, pc, pr, beta=0.4, alpha=0.9, reduce_fn=None)
    b = spo_loss(c, r, pc, pr, beta=0.4, alpha=np.full(N_PREV - 1, 0.9, np.float32), reduce_fn=None)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_phi_is_the_gradient_weight():
    # dℓ/dlogπ_θ(y_w) = -β ϕ per pair.
    c, r, pc, pr = make(4)
    _, m = spo_loss(c, r, pc, pr, beta=0.6, alpha=0.5, return_metrics=True)
    g = jax.grad(lambda x: spo_loss(x, r, pc, pr, beta=0.6, alpha=0.5, reduce_fn=jnp.sum))(c)
    np.testing.assert_allclose(g, -0.6 * m["phi"], rtol=1e-5)
    np.testing.assert_allclose(m["phi_mean"], np.mean(m["phi"]), rtol=1e-6)
    # Pairs that agree with earlier dimensions (Δu > 0) get more weight than conflicting ones.
    base = dict(beta=1.0, alpha=1.0, return_metrics=True, reduce_fn=None)
    _, agree = spo_loss(0.0, 0.0, jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0]), **base)
    _, conflict = spo_loss(0.0, 0.0, jnp.array([0.0, -1.0]), jnp.array([0.0, 0.0]), **base)
    assert float(agree["phi"]) > 0.5 > float(conflict["phi"])


def test_contract_and_grads():
    c, r, pc, pr = make(5)
    # prev arrays carry the round axis first: wrap so the contract's example axis leads.
    fn = lambda c, r, pc_t, pr_t, **kw: spo_loss(c, r, jnp.moveaxis(pc_t, -1, 0), jnp.moveaxis(pr_t, -1, 0),
                                                 beta=0.5, alpha=np.array([0.1, 0.2, 0.3], np.float32), **kw)
    check_loss_contract(fn, (c, r, pc.T, pr.T))
    with jax.enable_x64(True):
        f = jax.jit(lambda c, r: spo_loss(c, r, np.float64(pc), np.float64(pr), beta=0.5, alpha=0.3))
        check_grads(f, (np.float64(c), np.float64(r)), order=2, modes=("rev",))


def test_bad_inputs():
    c, r, pc, pr = make(6)
    with pytest.raises(ValueError, match="alpha"):
        spo_loss(c, r, pc, pr, beta=0.5, alpha=np.ones(2))
    with pytest.raises(ValueError, match="alpha"):
        spo_loss(c, r, pc, pr, beta=0.5, alpha=-1.0)
    with pytest.raises(ValueError, match="leading axis"):
        spo_loss(c, r, pc, pr[:2], beta=0.5, alpha=0.1)


def test_spo_refuses_mismatched_shapes():
    c = jnp.zeros(4)
    prev = jnp.zeros((2, 4))
    spo_loss(c, c, prev, prev, beta=0.5, alpha=0.1)
    with pytest.raises(ValueError, match=r"spo_loss: input shapes do not match: chosen_logps \[4, 1\]"):
        spo_loss(c[:, None], c, prev, prev, beta=0.5, alpha=0.1)  # would broadcast to [4, 4]
    with pytest.raises(ValueError, match=r"spo_loss: input shapes do not match: .*prev_chosen/rejected_logps\[0\] \[3\]"):
        spo_loss(c, c, prev[:, :3], prev[:, :3], beta=0.5, alpha=0.1)
