import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from losses_testlib import check_loss_contract, rng_arrays

from mojax.losses import bilevel_objective, dpo_loss, likelihood_hinge, stable_po_loss


def test_penalty_form_closed_form_and_numpy():
    np.testing.assert_allclose(stable_po_loss(0.5, -3.0, -2.0, penalty=2.0), 2.5)
    np.testing.assert_allclose(stable_po_loss(0.5, -1.0, -2.0, penalty=2.0), 0.5)  # above the reference: no penalty
    pref, c, rc = rng_arrays(0, (8,), (8,), (8,))
    expected = np.float64(pref) + 0.7 * np.maximum(0.0, np.float64(rc) - c)
    np.testing.assert_allclose(stable_po_loss(pref, c, rc, penalty=0.7, reduce_fn=None), expected, rtol=1e-6)
    np.testing.assert_allclose(stable_po_loss(pref, c, rc, penalty=0.0), np.mean(pref), rtol=1e-6)
    np.testing.assert_allclose(likelihood_hinge(c, rc, reduce_fn=None), np.maximum(0.0, rc - c))
    _, m = stable_po_loss(pref, c, rc, penalty=0.7, return_metrics=True)
    np.testing.assert_allclose(m["hinge_active"], np.mean(rc > c))
    np.testing.assert_allclose(m["preference_loss"], np.mean(pref), rtol=1e-6)


def test_penalty_form_contract_and_composition_with_dpo():
    c, r, rc, rr = rng_arrays(1, (8,), (8,), (8,), (8,))
    # Offsets keep every pair away from the hinge's kink at chosen == ref_chosen.
    rc = c + np.where(np.arange(8) % 2 == 0, 0.5, -0.5).astype(np.float32)

    def fn(c, r, rc, rr, where=None, **kw):
        # The mask goes to both losses: padding must not reach the DPO term's gradient either.
        pref = dpo_loss(c, r, rc, rr, beta=0.2, where=where, reduce_fn=None)
        return stable_po_loss(pref, c, rc, penalty=1.5, where=where, **kw)

    check_loss_contract(fn, (c, r, rc, rr))
    with jax.enable_x64(True):
        f = jax.jit(lambda c: fn(c, np.float64(r), np.float64(rc), np.float64(rr)))
        check_grads(f, (np.float64(c),), order=1, modes=("fwd", "rev"))
    # Where the hinge is active, it adds exactly -λ to dℓ/dlogπ(y_w).
    g_pen = jax.grad(lambda c: fn(c, r, rc, rr, reduce_fn=jnp.sum))(c)
    g_dpo = jax.grad(lambda c: dpo_loss(c, r, rc, rr, beta=0.2, reduce_fn=jnp.sum))(c)
    np.testing.assert_allclose(g_pen - g_dpo, np.where(rc > c, -1.5, 0.0), atol=1e-6)


# A toy "model": params θ = (A [D], b []); sequence log-probs are linear in θ so everything has a closed form.
X = np.array([[0.5, -1.0, 0.2], [1.0, 0.3, -0.4], [-0.2, 0.8, 1.1], [0.6, 0.1, -0.9]])  # chosen, rejected, ...


def toy_logps(params, x):
    return x @ params["a"] + params["b"]


def sft(params, batch):
    return -jnp.mean(toy_logps(params, batch["chosen"]) ** 1) + 0.5 * jnp.sum(params["a"] ** 2)


def pref(params, batch):
    c, r = toy_logps(params, batch["chosen"]), toy_logps(params, batch["rejected"])
    return dpo_loss(c, r, batch["ref_chosen"], batch["ref_rejected"], beta=0.5)


def hinge(params, batch):
    return likelihood_hinge(toy_logps(params, batch["chosen"]), batch["ref_chosen"])


def make_batch():
    return {
        "chosen": jnp.asarray(X[:2]), "rejected": jnp.asarray(X[2:]),
        "ref_chosen": jnp.array([0.3, -0.2]), "ref_rejected": jnp.array([0.1, 0.4]),
    }


def test_bilevel_inner_step_and_hypergradient_against_hand_unrolled():
    with jax.enable_x64(True):
        batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), make_batch())
        params = {"a": jnp.array([0.1, -0.2, 0.3]), "b": jnp.array(0.05)}
        eta, lam = 0.3, 2.0
        f = bilevel_objective(sft, pref, inner_lr=eta, penalty=lam, hinge_fn=hinge)
        # Hand-unrolled inner step: ∇_a L_SFT = -mean(x_w) + a, ∇_b L_SFT = -1.
        xw = np.asarray(batch["chosen"]).mean(0)
        plus = {"a": params["a"] - eta * (-xw + params["a"]), "b": params["b"] + eta}
        np.testing.assert_allclose(f(params, batch), pref(plus, batch) + lam * hinge(plus, batch), rtol=1e-12)
        # Hypergradient: θ⁺ = (1-η) a + η x̄_w, b + η, so dL/da = (1-η) ∇_a L(θ⁺), dL/db = ∇_b L(θ⁺).
        outer = jax.grad(lambda p: pref(p, batch) + lam * hinge(p, batch))(plus)
        g = jax.jit(jax.grad(f))(params, batch)
        np.testing.assert_allclose(g["a"], (1 - eta) * outer["a"], rtol=1e-10)
        np.testing.assert_allclose(g["b"], outer["b"], rtol=1e-10)
        # First order drops the (I - η∇²L_SFT) factor.
        g1 = jax.grad(bilevel_objective(sft, pref, inner_lr=eta, penalty=lam, hinge_fn=hinge, first_order=True))(
            params, batch)
        np.testing.assert_allclose(g1["a"], outer["a"], rtol=1e-10)


def test_bilevel_gradient_matches_finite_differences_with_curved_inner_loss():
    def sft_curved(params, batch):
        lp = toy_logps(params, batch["chosen"])
        return -jnp.mean(jax.nn.log_sigmoid(lp)) + 0.1 * jnp.sum(jnp.sin(params["a"]) ** 2)

    with jax.enable_x64(True):
        batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), make_batch())
        f = bilevel_objective(sft_curved, pref, inner_lr=0.4, penalty=0.5, hinge_fn=hinge)
        params = {"a": jnp.array([0.4, -0.6, 0.2]), "b": jnp.array(-0.1)}
        check_grads(lambda a, b: f({"a": a, "b": b}, batch), (params["a"], params["b"]), order=1, modes=("rev",),
                    eps=1e-6)
        # inner_lr = 0 is the penalty form at θ.
        f0 = bilevel_objective(sft_curved, pref, inner_lr=0.0, penalty=0.5, hinge_fn=hinge)
        np.testing.assert_allclose(f0(params, batch), pref(params, batch) + 0.5 * hinge(params, batch))


def test_bilevel_errors():
    with pytest.raises(ValueError, match="hinge_fn"):
        bilevel_objective(sft, pref, inner_lr=0.1, penalty=1.0)
    with pytest.raises(ValueError, match="inner_lr"):
        bilevel_objective(sft, pref, inner_lr=-0.1)
    with pytest.raises(ValueError, match="penalty"):
        stable_po_loss(0.0, 0.0, 0.0, penalty=-1.0)


@pytest.mark.parametrize("name", ["likelihood_hinge", "stable_po_loss"])
def test_stable_po_losses_refuse_mismatched_shapes(name):
    fn = {"likelihood_hinge": lambda p, c, r: likelihood_hinge(c, r),
          "stable_po_loss": lambda p, c, r: stable_po_loss(p, c, r, penalty=1.0)}[name]
    x = jnp.zeros(6)
    fn(x, x, x)
    with pytest.raises(ValueError, match=rf"{name}: input shapes do not match: .*ref_chosen_logps \[6, 1\]"):
        fn(x, x, x[:, None])
    with pytest.raises(ValueError, match=rf"{name}: input shapes do not match: .*chosen_logps \[6, 1\]"):
        fn(x, x[:, None], x)
