"""Attention through the fused kernel (``jax.nn.dot_product_attention``) against the einsum reference, for every
family: logits (padding, sliding windows, prefixes), gradients, the KV-cache path and generation, segment ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import batch, call, random_model
from flax import nnx

from mojax.models import DecoderConfig, generate
from mojax.models.families import model_types
from mojax.models.layers import attention_impl

# Features switched on where they matter on 12-token sequences: windows of 4, mixed local/global layers (Gemma 3
# with its own local rotary base, so the local rotary path is exercised too).
_EXTRA = {"mistral": dict(sliding_window=4),
          "gemma3_text": dict(layer_types=("sliding_attention", "full_attention"), rope_local_theta=100.0)}


def family_config(model_type: str, **overrides) -> DecoderConfig:
    """A 2-layer tiny config of the family with its distinctive features on (Gemma: one local, one global)."""
    return DecoderConfig.tiny(model_type, **{"vocab_size": 61, "num_layers": 2, **_EXTRA.get(model_type, {}),
                                             **overrides})


def _loss_and_grads(model, ids, mask, prefix):
    def loss(m):
        logits = m(jnp.asarray(ids), attention_mask=jnp.asarray(mask), prefix_embeds=prefix)
        logp = jax.nn.log_softmax(logits)[..., 5]
        return jnp.sum(jnp.where(jnp.asarray(mask) == 1, logp, 0.0)), logits

    (value, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return float(value), np.asarray(logits), nnx.to_pure_dict(grads)


@pytest.mark.parametrize("model_type", model_types())
def test_fused_attention_equals_einsum(model_type):
    """Logits agree to 1e-5 and every parameter gradient to 1e-5 of its leaf's scale (float32; gradients are
    sums over the batch, so absolute float32 rounding grows with their magnitude), with left padding and a prefix."""
    cfg = family_config(model_type, attention_impl="einsum", scan_layers=False)
    ids, mask = batch("left", B=3, T=12, seed=1)
    ids = ids % 61
    prefix = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, cfg.d_model)), jnp.float32)
    ref = _loss_and_grads(random_model(cfg, seed=2, scale=0.1), ids, mask, prefix)
    got = _loss_and_grads(random_model(cfg.replace(attention_impl="auto"), seed=2, scale=0.1), ids, mask, prefix)
    real = mask == 1
    np.testing.assert_allclose(got[1][real], ref[1][real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    flat_ref, flat_got = jax.tree.leaves(ref[2]), jax.tree.leaves(got[2])
    assert len(flat_ref) == len(flat_got)
    for a, b in zip(flat_got, flat_ref):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())
    assert max(np.abs(np.asarray(b)).max() for b in flat_ref) > 0.1  # gradients flow


def test_auto_picks_fused_unless_scores_are_soft_capped(monkeypatch):
    """'auto' runs jax.nn.dot_product_attention (spied) except for Gemma 2's soft-capped scores; 'fused' with a
    soft-cap is refused at config time."""
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    ids = np.ones((1, 4), np.int32)
    for model_type, expect in (("llama", "fused"), ("gpt2", "fused"), ("gemma2", "einsum"), ("gemma3_text", "fused")):
        cfg = family_config(model_type, scan_layers=False)
        assert attention_impl(cfg) == expect
        calls.clear()
        jax.eval_shape(lambda: random_model(cfg)(ids))  # trace only
        assert (len(calls) == cfg.num_layers) == (expect == "fused"), (model_type, len(calls))
    with pytest.raises(ValueError, match="cannot soft-cap"):
        family_config("gemma2", attention_impl="fused")
    assert attention_impl(family_config("gemma2", attention_impl="einsum")) == "einsum"


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_fused_cache_path_and_generation_equal_einsum(model_type):
    """Prefill + one-token cached steps (the KV-cache mask is not top-left aligned) and greedy generation with a
    prefix give the einsum path's logits and tokens."""
    cfg = family_config(model_type, attention_impl="einsum", scan_layers=False)
    ref_model = random_model(cfg, seed=4)
    fused = random_model(cfg.replace(attention_impl="fused"), seed=4)
    ids, mask = batch("left", B=2, T=9, seed=4)
    ids = ids % 61
    outs = []
    for model in (ref_model, fused):
        cache = model.init_cache(2, 9)
        first, cache = call(model, ids[:, :5], mask[:, :5], cache=cache)
        steps = [np.asarray(first)]
        for t in range(5, 9):
            logits, cache = call(model, ids[:, t: t + 1], mask[:, t: t + 1], cache=cache)
            steps.append(np.asarray(logits))
        outs.append(np.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[1][mask == 1], outs[0][mask == 1], rtol=1e-5, atol=1e-5)
    prefix = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, cfg.d_model)), jnp.float32)
    toks = [np.asarray(generate(m, ids, attention_mask=mask, max_new_tokens=5, prefix_embeds=prefix).tokens)
            for m in (ref_model, fused)]
    np.testing.assert_array_equal(toks[1], toks[0])


@pytest.mark.parametrize("impl", ["einsum", "fused"])
def test_segment_ids_confine_attention_to_each_packed_sequence(impl):
    """Two sequences packed in one row with segment ids (positions restarting per segment) give each sequence's
    own logits, as if run alone."""
    cfg = family_config("mistral", attention_impl=impl, scan_layers=False)
    model = random_model(cfg, seed=5)
    rng = np.random.default_rng(3)
    a, b = rng.integers(3, 61, size=(1, 7)), rng.integers(3, 61, size=(1, 5))
    packed = np.concatenate([a, b, np.zeros((1, 2), np.int64)], axis=1)  # 2 padding tokens at the end
    seg = np.array([[1] * 7 + [2] * 5 + [0] * 2])
    pmask = (seg > 0).astype(np.int32)
    out = np.asarray(nnx.jit(lambda m, i, s, k: m(i, attention_mask=k, segment_ids=s))(
        model, jnp.asarray(packed), jnp.asarray(seg), jnp.asarray(pmask)))
    alone_a = np.asarray(call(model, a, np.ones_like(a), cache=None))
    alone_b = np.asarray(call(model, b, np.ones_like(b), cache=None))
    np.testing.assert_allclose(out[0, :7], alone_a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 7:12], alone_b[0], rtol=1e-5, atol=1e-5)
    # without the segment ids the second sequence would see the first: the test can tell
    mixed = np.asarray(call(model, packed, pmask))
    assert np.abs(mixed[0, 7:12] - alone_b[0]).max() > 1e-2
    with pytest.raises(ValueError, match="segment_ids"):
        model(jnp.asarray(packed), segment_ids=jnp.asarray(seg), cache=model.init_cache(1, 14))
