"""Reward models: last non-pad token, left/right padding agreement, a float64 NumPy check of the head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models.config import DecoderConfig
from mojax.models.decoder import Decoder
from mojax.models.reward import RewardModel, gather_last_token, last_token_index

# One layer, narrow: the head and the last-token read are under test, and every op costs compile time.
_DCFG = DecoderConfig.tiny(num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32, vocab_size=64)
VOCAB, D, K = _DCFG.vocab_size, _DCFG.d_model, 3
_RM = RewardModel(Decoder(_DCFG, rngs=nnx.Rngs(0)), K, d_model=D, rngs=nnx.Rngs(1))
_CALL = nnx.jit(lambda m, ids, mask: m(ids, attention_mask=mask))
_FEATS = nnx.jit(lambda m, ids, mask: m.features(ids, attention_mask=mask))


def _pad(seqs, t, *, left, pad_id=0):
    ids = np.full((len(seqs), t), pad_id, np.int32)
    mask = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
        sl = slice(t - len(s), t) if left else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return jnp.asarray(ids), jnp.asarray(mask)


def test_last_token_index_against_python_loop():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2, size=(4, 5, 9))
    mask[0, 0] = 0  # an all-pad row
    expected = np.full(mask.shape[:-1], 8)
    for idx in np.ndindex(mask.shape[:-1]):
        nz = np.flatnonzero(mask[idx])
        if nz.size:
            expected[idx] = nz[-1]
    np.testing.assert_array_equal(last_token_index(jnp.asarray(mask)), expected)
    hidden = rng.normal(size=(4, 5, 9, 2))
    np.testing.assert_allclose(gather_last_token(jnp.asarray(hidden), jnp.asarray(mask)),
                               np.take_along_axis(hidden, expected[..., None, None], -2)[..., 0, :], rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=8), min_size=2, max_size=2))
def test_left_and_right_padding_give_the_same_reward(seqs):
    right = _CALL(_RM, *_pad(seqs, 8, left=False))  # one T keeps it to one compile
    left = _CALL(_RM, *_pad(seqs, 8, left=True))
    assert right.shape == (2, K)
    np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-5)


def test_reads_the_last_real_token_and_head_in_float64():
    ids, mask = _pad([[3, 4, 5], [6, 7, 8, 9, 10]], 6, left=False)
    hidden = nnx.jit(lambda m, i, a: m(i, attention_mask=a, return_hidden=True))(_RM.backbone, ids, mask)
    feats = _FEATS(_RM, ids, mask)
    np.testing.assert_allclose(feats, np.stack([hidden[0, 2], hidden[1, 4]]), rtol=1e-6)
    kernel = np.asarray(_RM.score.kernel[...], np.float64)
    expected = np.asarray(feats, np.float64) @ kernel  # r_k = w_kᵀ h, no bias
    np.testing.assert_allclose(_CALL(_RM, ids, mask), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_RM.head(feats), expected, rtol=1e-5, atol=1e-6)
    # Tokens after the last real one (pads) don't matter, whatever their ids.
    garbage = jnp.where(mask == 1, ids, VOCAB - 1)
    np.testing.assert_allclose(_CALL(_RM, garbage, mask), expected, rtol=1e-5, atol=1e-6)
    assert "bias" not in nnx.state(_RM.score)
    # and padding changes nothing: each sequence alone, unpadded, gets the same reward.
    for i, n in enumerate((3, 5)):
        alone = _CALL(_RM, ids[i:i + 1, :n], mask[i:i + 1, :n])
        np.testing.assert_allclose(alone[0], expected[i], rtol=1e-5, atol=1e-6)


def test_leading_axes_pairs_layout():
    ids, mask = _pad([[1, 2], [3, 4, 5], [6], [7, 8, 9, 10]], 5, left=False)
    flat = _CALL(_RM, ids, mask)
    pairs = _CALL(_RM, ids.reshape(2, 2, 5), mask.reshape(2, 2, 5))  # [B, N, T] batch layout
    assert pairs.shape == (2, 2, K)
    np.testing.assert_allclose(pairs.reshape(4, K), flat, rtol=1e-6)


def test_head_only_gradient_matches_closed_form():
    """MORE's g_k = ∇_W L_k on stop-gradient features: mean[−σ(−wᵀΔh)·Δh] (docs/methods/more.md)."""
    ids, mask = _pad([[1, 2, 3], [4, 5], [6, 7, 8, 9], [2, 2]], 5, left=False)
    feats = jax.lax.stop_gradient(_FEATS(_RM, ids, mask)).reshape(2, 2, D)  # [pairs, chosen/rejected, D]

    def loss(head):
        r = head(feats)[..., 0]  # objective 0
        return -jnp.mean(jax.nn.log_sigmoid(r[:, 0] - r[:, 1]))

    g = nnx.grad(loss)(_RM.score).kernel[...][:, 0]
    f64 = np.asarray(feats, np.float64)
    dh = f64[:, 0] - f64[:, 1]
    w = np.asarray(_RM.score.kernel[...], np.float64)[:, 0]
    expected = np.mean(-(1 / (1 + np.exp(dh @ w)))[:, None] * dh, axis=0)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="same shape"):
        _RM(jnp.zeros((2, 4), jnp.int32), attention_mask=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="d_model"):
        _RM.head(jnp.zeros((2, D + 1)))
    with pytest.raises(ValueError, match="num_heads"):
        RewardModel(_RM.backbone, 0, d_model=D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="backbone d_model"):
        RewardModel(_RM.backbone, 1, d_model=D + 1, rngs=nnx.Rngs(0))
