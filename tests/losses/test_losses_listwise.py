import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from losses_testlib import FAST, check_loss_contract, rng_arrays
from scipy.special import log_softmax as sp_log_softmax
from scipy.special import softmax as sp_softmax

from mojax.losses import (
    dpo_loss,
    lipo_lambda_loss,
    listnet_loss,
    listwise_dpo_loss,
    normalize_labels,
    pairwise_list_loss,
    ranks,
)
from mojax.losses import log_sigmoid


def np_listnet(scores, labels, where, label_norm):
    """float64 per-list reference by truncation: drop masked items, then plain softmax cross-entropy."""
    out = []
    for s, y, w in zip(scores, labels, where):
        s, y = np.float64(s[w]), np.float64(y[w])
        if s.size == 0:
            out.append(0.0)
            continue
        phi = sp_softmax(y) if label_norm == "softmax" else (y / y.sum() if y.sum() > 0 else 0 * y)
        out.append(-np.sum(phi * sp_log_softmax(s)))
    return np.array(out)


def np_lipo(scores, labels, where):
    out = []
    for s, y, w in zip(scores, labels, where):
        s, y = np.float64(s[w]), np.float64(y[w])
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        tau = np.empty(len(s))
        tau[order] = np.arange(1, len(s) + 1)
        g, inv_d = 2.0**y - 1, 1 / np.log2(1 + tau)
        total = 0.0
        for i, j in itertools.product(range(len(s)), repeat=2):
            if y[i] > y[j]:
                total -= abs(g[i] - g[j]) * abs(inv_d[i] - inv_d[j]) * -np.logaddexp(0, -(s[i] - s[j]))
        out.append(total)
    return np.array(out)


def test_listnet_closed_form():
    # One-hot l1 labels on the top item of scores (log 1, 0, 0): -log(1 / (1 + 2)) = log 3.
    np.testing.assert_allclose(listnet_loss(jnp.array([0.0, 0.0, 0.0]), jnp.array([1.0, 0.0, 0.0]), label_norm="l1"),
                               math.log(3.0), rtol=1e-6)
    # Softmax labels equal to the score distribution: loss = entropy of softmax(1, 0) = H(e/(1+e)).
    p = math.e / (1 + math.e)
    np.testing.assert_allclose(listnet_loss(jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0])),
                               -(p * math.log(p) + (1 - p) * math.log(1 - p)), rtol=1e-6)


@pytest.mark.parametrize("label_norm", ["softmax", "l1"])
def test_listnet_matches_float64_numpy(label_norm):
    scores, labels = rng_arrays(0, (6, 5), (6, 5), scale=2.0)
    labels = np.abs(labels).round()
    where = np.random.default_rng(1).random((6, 5)) > 0.3
    where[0] = False  # an empty list
    got = listnet_loss(scores, labels, where=jnp.asarray(where), label_norm=label_norm, reduce_fn=None)
    np.testing.assert_allclose(got, np_listnet(scores, labels, where, label_norm), rtol=1e-5, atol=1e-6)
    mean = listnet_loss(scores, labels, where=jnp.asarray(where), label_norm=label_norm)
    np.testing.assert_allclose(mean, np_listnet(scores, labels, where, label_norm)[1:].mean(), rtol=1e-5)


def test_listnet_item_masking_equals_truncation_and_empty_list():
    scores, labels = rng_arrays(2, (4,), (4,))
    where = jnp.array([True, False, True, False])
    garbage = jnp.asarray(scores).at[1].set(jnp.nan).at[3].set(jnp.inf)
    a = listnet_loss(garbage, labels, where=where)
    b = listnet_loss(scores[[0, 2]], labels[[0, 2]])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    g = jax.grad(lambda s: listnet_loss(s, labels, where=where))(garbage)
    assert np.all(np.isfinite(g)) and g[1] == 0 and g[3] == 0
    weights = jnp.array([2.0, jnp.nan, 0.5, jnp.nan])  # per-item weights on padding must not matter either
    np.testing.assert_allclose(listnet_loss(garbage, labels, where=where, weights=weights),
                               listnet_loss(scores[[0, 2]], labels[[0, 2]], weights=weights[jnp.array([0, 2])]),
                               rtol=1e-6)
    none = jnp.zeros(4, bool)
    assert float(listnet_loss(garbage, labels, where=none)) == 0.0
    assert np.all(np.isfinite(jax.grad(lambda s: listnet_loss(s, labels, where=none))(garbage)))


@pytest.mark.parametrize("label_norm", ["softmax", "l1"])
def test_listnet_contract(label_norm):
    scores, labels = rng_arrays(3, (6, 4), (6, 4))
    labels = np.abs(labels)
    check_loss_contract(lambda s, y, **kw: listnet_loss(s, y, label_norm=label_norm, **kw), (scores, labels),
                        where_shape=(6, 4))


def test_listnet_weights_and_check_grads():
    scores, labels = rng_arrays(4, (3, 4), (3, 4))
    w = np.array([1.0, 2.0, 0.5, 0.0], np.float32)
    got = listnet_loss(scores, labels, weights=w, reduce_fn=None)
    phi = sp_softmax(np.float64(labels), axis=-1)
    np.testing.assert_allclose(got, -np.sum(w * phi * sp_log_softmax(np.float64(scores), axis=-1), -1), rtol=1e-5)
    with jax.enable_x64(True):
        where = jnp.array([True, True, False, True])
        f = jax.jit(lambda s: listnet_loss(s, np.float64(labels), where=where))
        check_grads(f, (np.float64(scores),), order=2, modes=("rev",))


@FAST
@given(shift=st.floats(-50, 50), seed=st.integers(0, 2**16))
def test_listnet_invariant_to_constant_shift(shift, seed):
    scores, labels = rng_arrays(seed, (2, 5), (2, 5))
    where = jnp.array([[True, True, False, True, True], [True, False, False, False, True]])
    shifted = jnp.where(where, scores + np.float32(shift), scores - 1e3)  # masked items may change freely
    a = listnet_loss(scores, labels, where=where, reduce_fn=None)
    b = listnet_loss(shifted, labels, where=where, reduce_fn=None)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@FAST
@given(perm=st.permutations(range(5)), seed=st.integers(0, 2**16))
def test_listwise_losses_are_permutation_equivariant(perm, seed):
    scores, labels = rng_arrays(seed, (5,), (5,))
    labels = np.round(np.abs(labels) * 2)
    where = np.array([True, True, False, True, True])
    ref = 0.5 * scores[::-1]
    p = np.asarray(perm)
    for fn in (
        lambda s, r, y, w: listnet_loss(s, y, where=w),
        lambda s, r, y, w: listnet_loss(s, y, where=w, label_norm="l1"),
        lambda s, r, y, w: lipo_lambda_loss(s, y, where=w),
        lambda s, r, y, w: listwise_dpo_loss(s, r, y, beta=0.7, where=w),
    ):
        a = fn(scores, ref, labels, where)
        b = fn(scores[p], ref[p], labels[p], where[p])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_listwise_dpo_two_items_l1_equals_dpo():
    c, r, rc, rr = rng_arrays(5, (16,), (16,), (16,), (16,), scale=3.0)
    logps, ref = np.stack([c, r], -1), np.stack([rc, rr], -1)
    labels = np.tile(np.array([1.0, 0.0], np.float32), (16, 1))
    got = listwise_dpo_loss(logps, ref, labels, beta=0.3, label_norm="l1", reduce_fn=None)
    np.testing.assert_allclose(got, dpo_loss(c, r, rc, rr, beta=0.3, reduce_fn=None), rtol=1e-5, atol=1e-6)
    # And it equals ListNet on beta * (logps - ref) in general, against numpy.
    labels = np.abs(rng_arrays(6, (16, 2))[0])
    got = listwise_dpo_loss(logps, ref, labels, beta=0.3, reduce_fn=None)
    np.testing.assert_allclose(got, np_listnet(0.3 * (logps - ref), labels, np.ones((16, 2), bool), "softmax"),
                               rtol=1e-5)


def test_listwise_dpo_contract_and_per_objective_beta():
    logps, ref, labels = rng_arrays(7, (6, 3), (6, 3), (6, 3))
    check_loss_contract(lambda a, b, y, **kw: listwise_dpo_loss(a, b, y, beta=0.5, **kw), (logps, ref, labels),
                        where_shape=(6, 3))
    # K = 2 objectives at their own temperatures in one call: labels [B, K, L], beta [K, 1].
    labels_k = np.stack([labels, labels[:, ::-1]], 1)
    betas = jnp.array([[0.5], [2.0]])
    got = listwise_dpo_loss(logps[:, None], ref[:, None], labels_k, beta=betas, reduce_fn=None)
    assert got.shape == (6, 2)
    for k, b in enumerate((0.5, 2.0)):
        np.testing.assert_allclose(got[:, k], listwise_dpo_loss(logps, ref, labels_k[:, k], beta=b, reduce_fn=None),
                                   rtol=1e-6)


def test_ranks_and_lipo_closed_form():
    np.testing.assert_array_equal(ranks(jnp.array([0.1, 3.0, 0.1, -2.0])), [2, 1, 3, 4])
    np.testing.assert_array_equal(ranks(jnp.array([0.1, 3.0, 0.1, -2.0]), where=jnp.array([True, False, True, True])),
                                  [1, 1, 2, 3])  # masked item's rank is ignored
    # Labels (2, 0), scores (0, 1): the good item is ranked 2nd. Δ = (3 - 0)|1/log2(3) - 1|, loss = Δ log(1 + e).
    delta = 3.0 * abs(1 / math.log2(3) - 1.0)
    np.testing.assert_allclose(lipo_lambda_loss(jnp.array([0.0, 1.0]), jnp.array([2.0, 0.0])),
                               delta * math.log1p(math.e), rtol=1e-6)


def test_lipo_matches_float64_loops_and_contract():
    scores, labels = rng_arrays(8, (6, 6), (6, 6), scale=2.0)
    labels = np.round(np.abs(labels) * 2)
    where = np.random.default_rng(9).random((6, 6)) > 0.25
    got = lipo_lambda_loss(scores, labels, where=jnp.asarray(where), reduce_fn=None)
    np.testing.assert_allclose(got, np_lipo(scores, labels, where), rtol=1e-5, atol=1e-6)
    check_loss_contract(lipo_lambda_loss, (scores, labels), where_shape=(6, 6))
    with jax.enable_x64(True):
        f = jax.jit(lambda s: lipo_lambda_loss(s, np.float64(labels), where=jnp.asarray(where)))
        check_grads(f, (np.float64(scores),), order=1, modes=("rev",))


def test_pairwise_list_loss_is_ranknet_with_logistic_pair_fn():
    scores, labels = jnp.array([0.5, -1.0, 2.0]), jnp.array([2.0, 1.0, 0.0])
    got = pairwise_list_loss(lambda z: -log_sigmoid(z), scores, labels)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = sum(math.log1p(math.exp(-(float(scores[i]) - float(scores[j])))) for i, j in pairs)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_label_norm_errors_and_zero_labels():
    with pytest.raises(ValueError, match="label_norm"):
        normalize_labels(jnp.ones(3), label_norm="l2")
    np.testing.assert_array_equal(normalize_labels(jnp.zeros(3), label_norm="l1"), 0.0)
    with pytest.raises(ValueError, match="beta"):
        listwise_dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.ones(2), beta=-1.0)


def test_listwise_dpo_check_grads():
    with jax.enable_x64(True):
        logps, ref, labels = (np.float64(a) for a in rng_arrays(12, (3, 4), (3, 4), (3, 4)))
        where = jnp.array([[True, True, False, True]] * 3)
        f = jax.jit(lambda x: listwise_dpo_loss(x, ref, labels, beta=0.7, where=where, label_norm="softmax"))
        check_grads(f, (logps,), order=1, modes=("rev",))


LISTWISE = {
    "listnet_loss": lambda s, r, y: listnet_loss(s, y),
    "lipo_lambda_loss": lambda s, r, y: lipo_lambda_loss(s, y),
    "listwise_dpo_loss": lambda s, r, y: listwise_dpo_loss(s, r, y, beta=0.5),
}


@pytest.mark.parametrize("name", sorted(LISTWISE))
def test_listwise_losses_refuse_mismatched_shapes(name):
    fn = LISTWISE[name]
    rng = np.random.default_rng(0)
    s, r, y = (jnp.asarray(rng.random((3, 5)), jnp.float32) for _ in range(3))
    fn(s, r, y)
    fn(s[:, None, :], r[:, None, :], jnp.stack([y, y], axis=1))  # [B, 1, L] scores against [B, K, L] labels
    n_args = 3 if name == "listwise_dpo_loss" else 2
    positions = [0, 1, 2] if n_args == 3 else [0, 2]
    for bad in positions:
        wrong = [s, r, y]
        wrong[bad] = wrong[bad][:, :, None]  # [B, L, 1] against [B, L]: would broadcast to [B, L, L]... or fail
        with pytest.raises(ValueError, match=rf"{name}: input shapes do not match"):
            fn(*wrong)
        wrong[bad] = wrong[bad][:, :4, 0]  # L = 4 against L = 5
        with pytest.raises(ValueError, match=rf"{name}: input shapes do not match: .*\[3, 4\]"):
            fn(*wrong)
    wrong = [s, r, y]
    wrong[positions[-1]] = y[:, None, :]  # [B, 1, L] against [B, L] with B = 3: broadcasts to [3, 3, L]
    with pytest.raises(ValueError, match=r"\[3, 3, 5\], larger than every input"):
        jax.jit(fn)(*wrong)


def test_listwise_optional_weights_cannot_enlarge_the_lists():
    s, y = jnp.zeros((3, 5)), jnp.ones((3, 5))
    listnet_loss(s, y, weights=jnp.ones((3, 1)))  # one weight per list broadcasts into [B, L]
    with pytest.raises(ValueError, match=r"listnet_loss: weights of shape \[3, 1, 5\]"):
        listnet_loss(s, y, weights=jnp.ones((3, 1, 5)))
    with pytest.raises(ValueError, match=r"pairwise_list_loss: pair_weights of shape \[3, 5\]"):
        pairwise_list_loss(lambda z: z, s, y, pair_weights=jnp.ones((3, 5)))
