import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from losses_testlib import FAST, check_loss_contract, rng_arrays

from mojax.losses import (
    DPO_PAIR_LOSSES,
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    preference_metrics,
    simpo_loss,
)


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def np_dpo(c, r, rc, rr, beta, eps=0.0, loss_type="sigmoid"):
    h = (np.float64(c) - rc) - (np.float64(r) - rr)
    if loss_type == "sigmoid":
        return -(1 - eps) * np_log_sigmoid(beta * h) - eps * np_log_sigmoid(-beta * h)
    if loss_type == "hinge":
        return np.maximum(0.0, 1.0 - beta * h)
    return (h - 1.0 / (2.0 * beta)) ** 2


def test_dpo_closed_form():
    # h = (-1 - -2) - (-3 - -2) = 2, beta = 0.5: loss = -log sigmoid(1) = log(1 + e^-1).
    loss = dpo_loss(-1.0, -3.0, -2.0, -2.0, beta=0.5)
    np.testing.assert_allclose(loss, math.log1p(math.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(dpo_loss(-1.0, -3.0, -2.0, -2.0, beta=0.5, loss_type="hinge"), 0.0)
    np.testing.assert_allclose(dpo_loss(-1.0, -3.0, -2.0, -2.0, beta=0.25, loss_type="hinge"), 0.5)
    # IPO: (2 - 1/(2*0.5))^2 = 1.
    np.testing.assert_allclose(ipo_loss(-1.0, -3.0, -2.0, -2.0, beta=0.5), 1.0)
    # Equal margins: log 2 whatever beta.
    np.testing.assert_allclose(dpo_loss(0.0, 0.0, 0.0, 0.0, beta=3.0), math.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)])
def test_dpo_matches_float64_numpy(loss_type, eps):
    c, r, rc, rr = rng_arrays(0, (64,), (64,), (64,), (64,), scale=3.0)
    got = dpo_loss(c, r, rc, rr, beta=0.7, label_smoothing=eps, loss_type=loss_type, reduce_fn=None)
    np.testing.assert_allclose(got, np_dpo(c, r, rc, rr, 0.7, eps, loss_type), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type", sorted(DPO_PAIR_LOSSES))
def test_dpo_contract(loss_type):
    arrays = rng_arrays(1, (8,), (8,), (8,), (8,))
    check_loss_contract(lambda *xs, **kw: dpo_loss(*xs, beta=0.5, loss_type=loss_type, **kw), arrays)


def test_dpo_large_margins_stay_finite():
    big = jnp.array([1e4, -1e4], jnp.float32)
    loss = dpo_loss(big, -big, 0.0, 0.0, beta=1.0, reduce_fn=None)
    np.testing.assert_allclose(loss, [0.0, 2e4], rtol=1e-6)
    g = jax.grad(lambda c: dpo_loss(c, -big, 0.0, 0.0, beta=1.0))(big)
    np.testing.assert_allclose(g, [0.0, -0.5], atol=1e-6)


def test_dpo_check_grads():
    with jax.enable_x64(True):
        c, r, rc, rr = (np.asarray(a, np.float64) for a in rng_arrays(2, (5,), (5,), (5,), (5,)))
        # Second order in reverse mode, first order in forward mode (fwd-over-fwd adds compile time, not coverage).
        for loss_type, order, modes in (("sigmoid", 2, ("rev",)), ("sigmoid", 1, ("fwd",)), ("ipo", 1, ("rev",))):
            f = lambda c, r: dpo_loss(c, r, rc, rr, beta=0.8, label_smoothing=0.1 * (loss_type == "sigmoid"),
                                      loss_type=loss_type)
            check_grads(jax.jit(f), (c, r), order=order, modes=modes)
        # Hinge: only first order, away from the kink.
        f = lambda c: dpo_loss(c, r, rc, rr, beta=0.8, loss_type="hinge")
        check_grads(f, (c + 0.123,), order=1, modes=("rev",))


def test_dpo_metrics():
    c, r, rc, rr = (jnp.array(x) for x in ([-1.0, -2.0, 0.0], [-2.0, -1.0, 0.0], [-1.5, -1.5, 9.0], [-1.5, -1.5, 9.0]))
    where = jnp.array([True, True, False])
    loss, m = dpo_loss(c, r, rc, rr, beta=2.0, where=where, return_metrics=True)
    np.testing.assert_allclose(m["chosen_rewards"], (2 * 0.5 + 2 * -0.5) / 2)
    np.testing.assert_allclose(m["margins"], (2.0 * 1.0 + 2.0 * -1.0) / 2)
    np.testing.assert_allclose(m["accuracy"], 0.5)
    np.testing.assert_allclose(m["chosen_logps"], -1.5)
    np.testing.assert_allclose(m["rejected_logps"], -1.5)
    assert set(m) == set(preference_metrics(c, r, rc, rr, beta=2.0))
    np.testing.assert_allclose(loss, dpo_loss(c[:2], r[:2], rc[:2], rr[:2], beta=2.0))


def test_dpo_bad_inputs():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(0.0, 0.0, 0.0, 0.0, beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(0.0, 0.0, 0.0, 0.0, beta=1.0, loss_type="orpo")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(0.0, 0.0, 0.0, 0.0, beta=1.0, label_smoothing=0.1, loss_type="ipo")
    with pytest.raises(TypeError, match="boolean"):
        dpo_loss(jnp.zeros(3), jnp.zeros(3), 0.0, 0.0, beta=1.0, where=jnp.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        dpo_loss(jnp.zeros(3), jnp.zeros(3), 0.0, 0.0, beta=1.0, where=jnp.ones(4, bool))


def test_custom_pair_function():
    # A callable loss_type is the extension point: squared-hinge here.
    sq = lambda h, *, beta, label_smoothing: jnp.square(jax.nn.relu(1.0 - beta * h))
    np.testing.assert_allclose(dpo_loss(0.0, 1.0, 0.0, 0.0, beta=1.0, loss_type=sq), 4.0)


@FAST
@given(
    c=st.floats(-20, 20), r=st.floats(-20, 20), rc=st.floats(-20, 20), rr=st.floats(-20, 20),
    d=st.floats(0.01, 5), beta=st.floats(0.01, 2),
)
def test_dpo_decreases_as_chosen_gets_likelier(c, r, rc, rr, d, beta):
    lo = dpo_loss(c, r, rc, rr, beta=beta)
    hi = dpo_loss(c + d, r, rc, rr, beta=beta)
    assert float(hi) <= float(lo)
    assert float(jax.grad(lambda x: dpo_loss(x, r, rc, rr, beta=beta))(jnp.float32(c))) < 0


@FAST
@given(
    c=st.floats(-20, 20), r=st.floats(-20, 20), rc=st.floats(-20, 20), rr=st.floats(-20, 20), beta=st.floats(0.01, 2)
)
def test_label_smoothing_half_is_swap_symmetric(c, r, rc, rr, beta):
    a = dpo_loss(c, r, rc, rr, beta=beta, label_smoothing=0.5)
    b = dpo_loss(r, c, rr, rc, beta=beta, label_smoothing=0.5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bradley_terry():
    np.testing.assert_allclose(bradley_terry_loss(2.0, 1.0), math.log1p(math.exp(-1.0)), rtol=1e-6)
    rw, rl = rng_arrays(3, (8,), (8,), scale=2.0)
    np.testing.assert_allclose(bradley_terry_loss(rw, rl, reduce_fn=None), -np_log_sigmoid(rw.astype(np.float64) - rl),
                               rtol=1e-5)
    check_loss_contract(bradley_terry_loss, (rw, rl))
    _, m = bradley_terry_loss(rw, rl, return_metrics=True)
    np.testing.assert_allclose(m["accuracy"], np.mean(rw > rl))
    np.testing.assert_allclose(m["confidence"], 1 / (1 + np.exp(-(rw - rl))), rtol=1e-5)
    with jax.enable_x64(True):
        check_grads(jax.jit(bradley_terry_loss), (rw.astype(np.float64), rl.astype(np.float64)), order=2,
                    modes=("rev",))


def test_simpo():
    # z = 1*(-2/2) - 1*(-6/3) - 0.5 = 0.5.
    np.testing.assert_allclose(simpo_loss(-2.0, -6.0, 2.0, 3.0, beta=1.0, gamma=0.5), math.log1p(math.exp(-0.5)),
                               rtol=1e-6)
    c, r = rng_arrays(4, (8,), (8,), scale=5.0)
    nc, nr = np.arange(1, 9, dtype=np.float32), np.arange(8, 0, -1, dtype=np.float32)
    z = 2.0 * c.astype(np.float64) / nc - 2.0 * r / nr - 0.3
    np.testing.assert_allclose(simpo_loss(c, r, nc, nr, beta=2.0, gamma=0.3, reduce_fn=None), -np_log_sigmoid(z),
                               rtol=1e-5)
    check_loss_contract(lambda *xs, **kw: simpo_loss(*xs, beta=2.0, gamma=0.3, **kw), (c, r, nc, nr))
    _, m = simpo_loss(c, r, nc, nr, beta=2.0, gamma=0.3, return_metrics=True)
    np.testing.assert_allclose(m["accuracy"], np.mean(c / nc > r / nr))


def test_cpo():
    # -log sigmoid(1*(−1 − −2)) + 0.5 * (1/2)
    np.testing.assert_allclose(cpo_loss(-1.0, -2.0, beta=1.0, nll_weight=0.5, chosen_lengths=2.0),
                               math.log1p(math.exp(-1.0)) + 0.25, rtol=1e-6)
    c, r = rng_arrays(5, (8,), (8,), scale=5.0)
    ref = -np_log_sigmoid(0.3 * (c.astype(np.float64) - r)) - 2.0 * c
    np.testing.assert_allclose(cpo_loss(c, r, beta=0.3, nll_weight=2.0, reduce_fn=None), ref, rtol=1e-5)
    check_loss_contract(lambda *xs, **kw: cpo_loss(*xs, beta=0.3, **kw), (c, r))
    # nll_weight = 0 is reference-free DPO with a zero reference.
    np.testing.assert_allclose(cpo_loss(c, r, beta=0.3, nll_weight=0.0), dpo_loss(c, r, 0.0, 0.0, beta=0.3), rtol=1e-6)


def test_bf16_inputs_are_computed_in_float32():
    c = jnp.array([-10.0, -11.0], jnp.bfloat16)
    out = dpo_loss(c, c - 1, c, c, beta=1.0, reduce_fn=None)
    assert out.dtype == jnp.float32


def test_simpo_cpo_check_grads():
    with jax.enable_x64(True):
        c, r = (np.float64(a) for a in rng_arrays(10, (5,), (5,), scale=3.0))
        n = np.arange(1.0, 6.0)
        check_grads(jax.jit(lambda c, r: simpo_loss(c, r, n, n[::-1], beta=1.5, gamma=0.2, label_smoothing=0.1)),
                    (c, r), order=1, modes=("rev",))
        check_grads(jax.jit(lambda c, r: cpo_loss(c, r, beta=0.5, nll_weight=0.3, chosen_lengths=n)),
                    (c, r), order=1, modes=("rev",))


def test_hyperparameters_may_be_traced():
    # Callers jit the step with beta or label smoothing as arrays (e.g. schedules): no Python-side check may break.
    c, r, rc, rr = rng_arrays(11, (8,), (8,), (8,), (8,))
    f = jax.jit(lambda beta, eps: dpo_loss(c, r, rc, rr, beta=beta, label_smoothing=eps))
    np.testing.assert_allclose(f(0.5, 0.1), dpo_loss(c, r, rc, rr, beta=0.5, label_smoothing=0.1), rtol=1e-6)


# Each pairwise loss with its per-pair arguments; a [B, 1] array among [B] ones must raise, not broadcast to [B, B].
PAIRWISE = {
    "dpo_loss": (lambda a, b, c, d: dpo_loss(a, b, c, d, beta=0.5), 4),
    "ipo_loss": (lambda a, b, c, d: ipo_loss(a, b, c, d, beta=0.5), 4),
    "preference_metrics": (lambda a, b, c, d: preference_metrics(a, b, c, d, beta=0.5), 4),
    "simpo_loss": (lambda a, b, c, d: simpo_loss(a, b, c, d, beta=0.5), 4),
    "cpo_loss": (lambda a, b, c: cpo_loss(a, b, beta=0.5, chosen_lengths=c), 3),
    "bradley_terry_loss": (lambda a, b: bradley_terry_loss(a, b), 2),
}


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_pairwise_losses_refuse_mismatched_shapes(name):
    fn, n_args = PAIRWISE[name]
    b = 4
    args = [jnp.full((b,), -1.0 - i) for i in range(n_args)]
    fn(*args)  # matching shapes are fine, and so are scalars among them
    fn(*args[:-1], 2.0)
    for bad in range(n_args):
        wrong = list(args)
        wrong[bad] = args[bad][:, None]  # [B, 1] against [B]: would broadcast to [B, B]
        with pytest.raises(ValueError, match=rf"{name}: "
                                             r"input shapes do not match: .*\[4, 1\].*larger than every input"):
            fn(*wrong)
        wrong[bad] = args[bad][:3]  # [3] against [4]: does not broadcast at all
        with pytest.raises(ValueError, match=r"input shapes do not match: .*\[3\].*do not broadcast"):
            fn(*wrong)
    # the check reads static shapes only, so it fires the same way while tracing under jit
    wrong = list(args)
    wrong[-1] = args[-1][:, None]
    with pytest.raises(ValueError, match="input shapes do not match"):
        jax.jit(fn)(*wrong)


def test_dpo_shape_error_names_the_arguments():
    c = jnp.zeros(5)
    with pytest.raises(ValueError) as err:
        dpo_loss(c, c, c[:, None], c, beta=0.1)
    msg = str(err.value)
    assert "dpo_loss" in msg and "ref_chosen_logps [5, 1]" in msg and "chosen_logps [5]" in msg
    assert "[5, 5]" in msg and "\n" not in msg
