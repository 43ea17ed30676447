import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import log_softmax as sp_log_softmax

from mojax.losses import (
    compact_sequence_logps_from_hidden,
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


def test_chunked_one_chunk_and_loop_agree_in_value_and_dtype():
    # chunk >= T takes the loop-free path; it must give what the scan gives, dtype included (float64 under x64).
    hidden, unemb, targets, where = make(5)
    with jax.enable_x64(True):
        one, loop = (sequence_logps_from_hidden(np.float64(hidden), np.float64(unemb), targets, where=where,
                                                chunk_size=c) for c in (T, 2))
        assert one.dtype == loop.dtype == jnp.float64
        np.testing.assert_allclose(one, loop, rtol=1e-6)


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


# ----------------------------------------------------------------------------------------------------------------
# compact_sequence_logps_from_hidden: logits only at loss positions, packed into chunks of rows.


def _padded_batch(seed, lead=(2, 3), t=13, d=5, v=17):
    """Hidden states, an unembedding, targets and a mask holding right- and left-padded sequences and all-masked
    ones (the shapes of a [B, N, T] batch)."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal(lead + (t, d))
    unemb = rng.standard_normal((d, v)) / np.sqrt(d)
    targets = rng.integers(0, v, lead + (t,))
    pos = np.arange(t)
    m = int(np.prod(lead))
    start, stop = rng.integers(0, t // 2, m), rng.integers(t // 2, t + 1, m)
    where = (pos >= start[:, None]) & (pos < stop[:, None])  # right padding after stop
    where[1] = pos >= t - 4  # left padding: the response is the last 4 positions
    where[2] = False  # no loss position
    if m > 3:
        where[3] = rng.random(t) < 0.5  # scattered positions
    return hidden, unemb, targets, where.reshape(lead + (t,))


def _np_sequence_logps64(hidden, unemb, targets, where):
    return np_sequence_logps(np.float64(hidden) @ np.float64(unemb), targets, where)


@pytest.mark.parametrize("chunk_rows", [1, 7, 32, 78, 1000])  # 78 = exactly the positions; 1000: one chunk
def test_compact_matches_float64_values_and_grads(chunk_rows):
    hidden, unemb, targets, where = _padded_batch(0)
    cot = np.random.default_rng(1).standard_normal(where.shape[:-1])  # distinct per-sequence cotangents
    with jax.enable_x64(True):
        def compact(h, w):
            return jnp.sum(cot * compact_sequence_logps_from_hidden(h, w, targets, where=where, chunk_rows=chunk_rows))

        def full(h, w):
            return jnp.sum(cot * sequence_logps(h @ w, targets, where=where))

        got = compact_sequence_logps_from_hidden(hidden, unemb, targets, where=where, chunk_rows=chunk_rows)
        assert got.dtype == jnp.float64 and got.shape == where.shape[:-1]
        np.testing.assert_allclose(got, _np_sequence_logps64(hidden, unemb, targets, where), rtol=1e-12, atol=1e-12)
        assert np.all(np.asarray(got)[np.asarray(~where.any(-1))] == 0.0)  # all-masked sequences give exactly 0
        g_compact = jax.jit(jax.grad(compact, argnums=(0, 1)))(hidden, unemb)
        g_full = jax.grad(full, argnums=(0, 1))(hidden, unemb)
        for a, b in zip(g_compact, g_full):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
        # Masked rows get exactly zero gradient (they never reach the head).
        assert np.all(np.asarray(g_compact[0])[~where] == 0.0)


def test_compact_float32_and_bf16_inputs():
    hidden, unemb, targets, where = _padded_batch(2)
    expected = _np_sequence_logps64(hidden, unemb, targets, where)
    got = compact_sequence_logps_from_hidden(np.float32(hidden), np.float32(unemb), targets, where=where,
                                             chunk_rows=8)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    h16, w16 = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(unemb, jnp.bfloat16)
    got16 = compact_sequence_logps_from_hidden(h16, w16, targets, where=where, chunk_rows=8)
    assert got16.dtype == jnp.float32  # bf16 in, float32 logits and sums
    ref16 = _np_sequence_logps64(np.asarray(h16, np.float64), np.asarray(w16, np.float64), targets, where)
    np.testing.assert_allclose(got16, ref16, rtol=1e-4, atol=1e-3)


def test_compact_equals_dense_chunked_path_and_ignores_padding_garbage():
    hidden, unemb, targets, where = (np.float32(x) if x.dtype == np.float64 else x for x in _padded_batch(3))
    dense = sequence_logps_from_hidden(hidden, unemb, targets, where=where, chunk_size=4)
    # NaN hidden states and out-of-range targets at masked positions change neither values nor gradients.
    dirty_h = np.where(where[..., None], hidden, np.nan).astype(np.float32)
    dirty_t = np.where(where, targets, -100)
    f = lambda h, w: jnp.sum(compact_sequence_logps_from_hidden(h, w, dirty_t, where=where, chunk_rows=6))  # noqa
    value, (gh, gw) = jax.value_and_grad(f, argnums=(0, 1))(dirty_h, unemb)
    np.testing.assert_allclose(value, jnp.sum(dense), rtol=1e-5)
    assert np.all(np.isfinite(gh)) and np.all(np.isfinite(gw))
    clean = jax.grad(lambda h, w: jnp.sum(sequence_logps(h @ w, targets, where=where)), argnums=(0, 1))(hidden, unemb)
    np.testing.assert_allclose(gh, clean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, clean[1], rtol=1e-5, atol=1e-6)


def test_compact_all_masked_is_zero_with_zero_gradient():
    hidden, unemb, targets, where = _padded_batch(4)
    none = np.zeros_like(where)
    f = lambda h, w: jnp.sum(compact_sequence_logps_from_hidden(h, w, targets, where=none, chunk_rows=4))  # noqa
    value, grads = jax.value_and_grad(f, argnums=(0, 1))(np.float32(hidden), np.float32(unemb))
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)


def test_compact_second_order_and_vmap_match_full_logits():
    # Hessian-vector products (Stable PO's bilevel step differentiates through a gradient) and vmap (cond becomes
    # a select there) give the full-logits answers.
    hidden, unemb, targets, where = _padded_batch(5, lead=(4,), t=9)
    with jax.enable_x64(True):
        cot = jnp.arange(1.0, 5.0)
        tangent = np.random.default_rng(6).standard_normal(unemb.shape)

        def hvp(fn):
            grad = jax.grad(lambda w: jnp.sum(cot * fn(hidden, w)))
            return jax.jvp(grad, (unemb,), (tangent,))[1]

        compact = lambda h, w: compact_sequence_logps_from_hidden(h, w, targets, where=where, chunk_rows=5)  # noqa
        full = lambda h, w: sequence_logps(h @ w, targets, where=where)  # noqa
        np.testing.assert_allclose(hvp(compact), hvp(full), rtol=1e-10, atol=1e-12)
        rev = jax.grad(lambda w: jnp.sum(jax.grad(lambda u: jnp.sum(cot * compact(hidden, u)))(w) * tangent))(unemb)
        np.testing.assert_allclose(rev, hvp(full), rtol=1e-10, atol=1e-12)  # reverse-over-reverse, same HVP
        per_example = jax.vmap(lambda h, t, w: compact_sequence_logps_from_hidden(h, unemb, t, where=w,
                                                                                  chunk_rows=3))(hidden, targets, where)
        np.testing.assert_allclose(per_example, full(hidden, unemb), rtol=1e-12)


def test_compact_never_builds_full_logits_nor_stacks_the_unembedding():
    b, t, d, v, rows = 2, 64, 8, 512, 8
    hidden = jnp.ones((b, t, d))
    unemb = jnp.ones((d, v))
    targets = jnp.zeros((b, t), jnp.int32)
    where = jnp.ones((b, t), bool)
    loss = lambda h, w: jnp.sum(compact_sequence_logps_from_hidden(h, w, targets, where=where, chunk_rows=rows))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, unemb).jaxpr
    # Largest intermediate: one chunk's logits [rows, V] or the [D, V] gradient — never [B, T, V] (16x larger) and
    # never a per-chunk stack of [D, V] residuals (the scan saves only its inputs; 16 chunks here).
    assert _max_intermediate_size(jaxpr) <= max(rows * v, d * v)


def test_compact_validation():
    hidden, unemb, targets, where = make()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="chunk_rows"):
            compact_sequence_logps_from_hidden(hidden, unemb, targets, where=jnp.asarray(where), chunk_rows=bad)
    with pytest.raises(ValueError, match="unembedding"):
        compact_sequence_logps_from_hidden(hidden, unemb.T, targets, where=jnp.asarray(where))
    with pytest.raises(ValueError, match="targets"):
        compact_sequence_logps_from_hidden(hidden, unemb, targets[:, :-1], where=jnp.asarray(where))
    with pytest.raises(TypeError, match="boolean"):
        compact_sequence_logps_from_hidden(hidden, unemb, targets, where=jnp.asarray(where, jnp.int32))


@pytest.mark.parametrize("chunk", [3, 1000])  # a loop of chunks, and one chunk
def test_from_hidden_paths_apply_the_logit_softcap(chunk):
    """Both from-hidden paths give cap·tanh(h·W/cap) log-probs (float64 NumPy reference), and the cap matters."""
    hidden, unemb, targets, where = make(3)
    hidden = hidden * 4.0  # logits well beyond the cap, so capping changes the answer
    cap = 2.0
    logits64 = np.float64(hidden) @ np.float64(unemb)
    want = np_sequence_logps(cap * np.tanh(logits64 / cap), targets, where)
    got = sequence_logps_from_hidden(hidden, unemb, targets, where=where, chunk_size=chunk, logit_softcap=cap)
    got_c = compact_sequence_logps_from_hidden(hidden, unemb, targets, where=where, chunk_rows=chunk,
                                               logit_softcap=cap)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_c, want, rtol=1e-5, atol=1e-5)
    assert np.abs(np_sequence_logps(logits64, targets, where) - want).max() > 0.1
    with pytest.raises(ValueError, match="logit_softcap"):
        sequence_logps_from_hidden(hidden, unemb, targets, where=where, logit_softcap=0.0)
