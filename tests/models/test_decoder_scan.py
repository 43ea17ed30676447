"""Scanned layers (``scan_layers``) against the unrolled loop: logits and gradients (mixed local/global layers,
remat policies, LoRA), the stacked KV cache and generation, the per-layer prefix hook, and the unchanged parameter
layout that import/export and checkpoints address."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import batch, call, random_model
from flax import nnx
from test_layers import family_config

from mojax.models import Decoder, DecoderConfig, generate
from mojax.models.lora import LoRAConfig, add_lora


def _loss_and_grads(model, ids, mask, **kwargs):
    def loss(m):
        logits = m(jnp.asarray(ids), attention_mask=jnp.asarray(mask), **kwargs)
        return jnp.sum(jnp.where(jnp.asarray(mask) == 1, jax.nn.log_softmax(logits)[..., 5], 0.0)), logits

    (value, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return float(value), np.asarray(logits), grads


def _assert_close_grads(got, ref):
    flat_got, flat_ref = jax.tree.leaves(nnx.to_pure_dict(got)), jax.tree.leaves(nnx.to_pure_dict(ref))
    assert len(flat_got) == len(flat_ref)
    for a, b in zip(flat_got, flat_ref):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("model_type, extra", [
    ("gemma2", dict(num_layers=3)),  # local, global, local: the window is a scanned input; soft-capped einsum
    ("gemma3_text", dict(remat_policy="dots_saveable")),  # per-layer rotary base selected by the scanned flag
    ("llama", dict(remat_policy="nothing_saveable")),
])
def test_scanned_layers_equal_the_loop(model_type, extra):
    cfg = family_config(model_type, scan_layers=False, **extra)
    ids, mask = batch("left", B=2, T=10, seed=3)
    ids = ids % 61
    ref = _loss_and_grads(random_model(cfg, seed=1, scale=0.1), ids, mask)
    scanned_cfg = cfg.replace(scan_layers=True)
    assert scanned_cfg.scanned and not cfg.scanned
    got = _loss_and_grads(random_model(scanned_cfg, seed=1, scale=0.1), ids, mask)
    np.testing.assert_allclose(got[1][mask == 1], ref[1][mask == 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    _assert_close_grads(got[2], ref[2])


def test_scanned_lora_trains_the_same_adapters():
    """LoRA adapters live in each block's state, so they are stacked and scanned with it: adapter gradients equal
    the loop's (non-zero B after one nudge so that both A and B get gradient)."""
    grads = []
    for scan in (False, True):
        model = random_model(family_config("qwen3", scan_layers=scan), seed=2, scale=0.1)
        add_lora(model, LoRAConfig(rank=2, targets=("q_proj", "down_proj")), rngs=nnx.Rngs(7))
        for _, lora_b in nnx.iter_graph(model):
            if isinstance(lora_b, nnx.LoRAParam) and lora_b[...].shape[0] == 2:
                lora_b[...] = jnp.full(lora_b[...].shape, 0.05)
        assert model._can_scan() == scan
        ids, mask = batch("right", B=2, T=8, seed=1)
        ids = ids % 61

        def loss(m):
            return jnp.sum(jax.nn.log_softmax(m(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[..., 3])

        grads.append(nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam)))(model))
    _assert_close_grads(grads[1], grads[0])
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[0])) > 1e-3


def test_scanned_cache_and_generation_equal_the_loop():
    """The stacked ``[L, B, S, K, h]`` cache gives the loop's cached logits and greedy tokens (prefix, left
    padding, mixed local/global layers)."""
    cfg = family_config("gemma3_text", scan_layers=False)
    models = [random_model(cfg, seed=4), random_model(cfg.replace(scan_layers=True), seed=4)]
    stacked = models[1].init_cache(2, 9)
    assert stacked.keys.shape == (2, 2, 9, cfg.kv_heads, cfg.head_size)
    assert isinstance(models[0].init_cache(2, 9).keys, tuple)
    ids, mask = batch("left", B=2, T=9, seed=4)
    ids = ids % 61
    outs = []
    for model in models:
        cache = model.init_cache(2, 9)
        first, cache = call(model, ids[:, :6], mask[:, :6], cache=cache)
        steps = [np.asarray(first)]
        for t in range(6, 9):
            logits, cache = call(model, ids[:, t: t + 1], mask[:, t: t + 1], cache=cache)
            steps.append(np.asarray(logits))
        outs.append(np.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[1][mask == 1], outs[0][mask == 1], rtol=1e-5, atol=1e-5)
    prefix = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, cfg.d_model)), jnp.float32)
    toks = [np.asarray(generate(m, ids, attention_mask=mask, max_new_tokens=4, prefix_embeds=prefix).tokens)
            for m in models]
    np.testing.assert_array_equal(toks[1], toks[0])


def test_scanned_layer_prefixes_equal_the_loop():
    """The conditioning hook (per-layer key/value prefixes) is a scanned input too."""
    cfg = family_config("llama", scan_layers=False)
    rng = np.random.default_rng(0)
    prefixes = tuple((jnp.asarray(rng.normal(size=(2, 3, cfg.kv_heads, cfg.head_size)), jnp.float32),
                      jnp.asarray(rng.normal(size=(2, 3, cfg.kv_heads, cfg.head_size)), jnp.float32))
                     for _ in range(cfg.num_layers))
    ids, mask = batch("right", B=2, T=7, seed=2)
    ids = ids % 61
    outs = [np.asarray(nnx.jit(lambda m: m(jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                           layer_prefixes=prefixes))(random_model(c, seed=6)))
            for c in (cfg, cfg.replace(scan_layers=True))]
    np.testing.assert_allclose(outs[1][mask == 1], outs[0][mask == 1], rtol=1e-5, atol=1e-5)
    plain = np.asarray(call(random_model(cfg, seed=6), ids, mask))
    assert np.abs(plain - outs[0]).max() > 1e-3  # the prefixes matter, so the comparison can tell


def test_scan_keeps_the_parameter_layout_and_is_opt_in():
    """Scanning stacks inside the step: the parameter paths (``blocks.{i}...``: HF tables, LoRA, checkpoints) are
    the same either way; scanning is opt-in (``SCAN_MIN_LAYERS`` is None until stacked storage lands); bad
    policies are refused."""
    def paths(cfg):
        state = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
        return {k: v.shape for k, v in nnx.to_flat_state(state)}

    assert not DecoderConfig.tiny("gemma2", num_layers=32).scanned
    cfg = DecoderConfig.tiny("gemma2", num_layers=8, scan_layers=True)
    assert cfg.scanned
    assert paths(cfg) == paths(cfg.replace(scan_layers=False))
    assert DecoderConfig.tiny("llama", remat=True).remat_policy_name == "nothing_saveable"
    with pytest.raises(ValueError, match="remat_policy"):
        DecoderConfig.tiny("llama", remat_policy="save_everything_please")
