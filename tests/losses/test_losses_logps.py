import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import log_softmax as sp_log_softmax

from mojax.losses import (
    next_token_targets,
    sequence_logps,
    sequence_logps_from_hidden,
    sft_loss,
    sft_loss_from_logps,
    token_counts,
    token_logps,
)

B, T, D, V = 2, 7, 8, 11


def make(seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, D)).astype(np.float32)
    unemb = (rng.standard_normal((D, V)) / np.sqrt(D)).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    where = rng.random((B, T)) > 0.3
    where[1] = False  # a sequence with no response token
    where[0, 0] = True
    return hidden, unemb, targets, where


def np_sequence_logps(logits, targets, where):
    lp = sp_log_softmax(np.float64(logits), axis=-1)
    tok = np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    return np.sum(np.where(where, tok, 0.0), -1)


def test_uniform_logits_closed_form():
    # Uniform over V: each counted token has log-prob -log V.
    logits = jnp.zeros((3, 5, V))
    where = jnp.array([[True] * 5, [True, False, True, False, False], [False] * 5])
    got = sequence_logps(logits, jnp.ones((3, 5), jnp.int32), where=where)
    np.testing.assert_allclose(got, -np.log(V) * np.array([5, 2, 0]), rtol=1e-6)
    np.testing.assert_array_equal(token_counts(where), [5, 2, 0])


def test_sequence_logps_matches_float64_and_ignores_padding_targets():
    hidden, unemb, targets, where = make()
    logits = hidden @ unemb
    padded = np.where(where, targets, -100)  # out-of-range ids in padding must not matter
    got = sequence_logps(logits, padded, where=jnp.asarray(where))
    np.testing.assert_allclose(got, np_sequence_logps(logits, targets, where), rtol=1e-5, atol=1e-5)
    assert got.shape == (B,) and got.dtype == jnp.float32
    # Leading axes [B, N] (pairs) work the same.
    pair = np.stack([logits, logits[::-1]], 1)
    pair_where = jnp.asarray(np.stack([where, where[::-1]], 1))
    got2 = sequence_logps(pair, np.stack([targets, targets[::-1]], 1), where=pair_where)
    np.testing.assert_allclose(got2[:, 0], got, rtol=1e-6)


def test_bf16_logits_use_float32_log_softmax():
    hidden, unemb, targets, where = make(1)
    logits = jnp.asarray(hidden @ unemb * 8.0, jnp.bfloat16)
    got = sequence_logps(logits, targets, where=jnp.asarray(where))
    assert got.dtype == jnp.float32
    ref = np_sequence_logps(np.asarray(logits.astype(jnp.float32)), targets, where)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_next_token_targets_alignment():
    ids = jnp.array([[10, 11, 12, 13]])
    mask = jnp.array([[False, False, True, True]])  # tokens 12, 13 are the response
    targets, where = next_token_targets(ids, mask)
    np.testing.assert_array_equal(targets, [[11, 12, 13, 0]])
    np.testing.assert_array_equal(where, [[False, True, True, False]])
    # logits at position t score targets[t] = ids[t + 1]: response log-prob reads positions 1 and 2.
    logits = jnp.log(jax.nn.one_hot(jnp.array([[0, 12, 13, 0]]), 16) * 0.5 + 0.5 / 16)
    expected = 2 * np.log(0.5 + 0.5 / 16)
    np.testing.assert_allclose(sequence_logps(logits, targets, where=where), [expected], rtol=1e-6)
    with pytest.raises(TypeError, match="boolean"):
        next_token_targets(ids, mask.astype(jnp.int32))


@pytest.mark.parametrize("chunk_size", [3, 64])  # padded last chunk; one chunk (clipped to T)
def test_chunked_equals_naive_values_and_grads(chunk_size):
    hidden, unemb, targets, where = make(2)
    where = jnp.asarray(where)
    weights = jnp.array([1.0, -0.5])

    def naive(h, w):
        return jnp.sum(weights * sequence_logps(h @ w, targets, where=where))

    def chunked(h, w):
        return jnp.sum(weights * sequence_logps_from_hidden(h, w, targets, where=where, chunk_size=chunk_size))

    np.testing.assert_allclose(
        sequence_logps_from_hidden(hidden, unemb, targets, where=where, chunk_size=chunk_size),
        sequence_logps(hidden @ unemb, targets, where=where), rtol=1e-5, atol=1e-5,
    )
    g_naive = jax.grad(naive, argnums=(0, 1))(hidden, unemb)
    g_chunk = jax.jit(jax.grad(chunked, argnums=(0, 1)))(hidden, unemb)
    for a, b in zip(g_chunk, g_naive):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _max_intermediate_size(jaxpr) -> int:
    """Largest array produced anywhere in a (closed) jaxpr, including inside scan / remat / pjit bodies."""
    best = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    best = max(best, _max_intermediate_size(getattr(inner, "jaxpr", inner)))
    return best


def test_chunked_never_materialises_full_logits_forward_or_backward():
    b, t, d, v, chunk = 2, 64, 8, 512, 8
    hidden = jnp.ones((b, t, d))
    unemb = jnp.ones((d, v))
    targets = jnp.zeros((b, t), jnp.int32)
    where = jnp.ones((b, t), bool)
    loss = lambda h, w: jnp.sum(sequence_logps_from_hidden(h, w, targets, where=where, chunk_size=chunk))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, unemb).jaxpr
    assert _max_intermediate_size(jaxpr) <= b * chunk * v
    naive = lambda h, w: jnp.sum(sequence_logps(h @ w, targets, where=where))
    assert _max_intermediate_size(jax.make_jaxpr(jax.grad(naive))(hidden, unemb).jaxpr) >= b * t * v


def test_chunked_validation():
    hidden, unemb, targets, where = make()
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps_from_hidden(hidden, unemb, targets, where=jnp.asarray(where), chunk_size=0)
    with pytest.raises(ValueError, match="unembedding"):
        sequence_logps_from_hidden(hidden, unemb.T, targets, where=jnp.asarray(where))
    with pytest.raises(ValueError, match="targets"):
        sequence_logps(hidden @ unemb, targets[:, :-1], where=jnp.asarray(where))


def test_sft_loss_is_token_sum_over_count():
    hidden, unemb, targets, where = make(3)
    logits = hidden @ unemb
    lp = sp_log_softmax(np.float64(logits), -1)
    tok = np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    expected = -tok[where].sum() / where.sum()  # sum/count, not a mean of per-sequence means
    loss, m = sft_loss(logits, targets, where=jnp.asarray(where), return_metrics=True)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(m["num_tokens"], where.sum())
    seq = sequence_logps(logits, targets, where=jnp.asarray(where))
    np.testing.assert_allclose(sft_loss_from_logps(seq, token_counts(where)), expected, rtol=1e-5)
    np.testing.assert_allclose(token_logps(logits, targets, where=jnp.asarray(where)), np.where(where, tok, 0),
                               rtol=1e-5, atol=1e-6)
    # All masked: 0 with finite gradient.
    none = jnp.zeros_like(jnp.asarray(where))
    assert float(sft_loss(logits, targets, where=none)) == 0.0
    assert np.all(np.isfinite(jax.grad(lambda x: sft_loss(x, targets, where=none))(logits)))
    # Example mask on the from-logps form equals truncation.
    ex = jnp.array([True, False])
    np.testing.assert_allclose(sft_loss_from_logps(seq, token_counts(where), where=ex),
                               sft_loss_from_logps(seq[:1], token_counts(where)[:1]), rtol=1e-6)


def test_sequence_logps_check_grads():
    hidden, unemb, targets, where = make(4)
    with jax.enable_x64(True):
        logits = np.float64(hidden @ unemb)
        f = jax.jit(lambda x: jnp.sum(jnp.array([1.0, -2.0]) * sequence_logps(x, targets, where=jnp.asarray(where))))
        check_grads(f, (logits,), order=1, modes=("rev",))
        assert f(logits).dtype == jnp.float64  # float64 stays float64 (only narrower floats are upcast)
