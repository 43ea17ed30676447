"""LoRA: identity at init, base model through ``use_lora=False``, merge, export, and optimiser steps that touch
only ``nnx.LoRAParam``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from decoder_testlib import batch, call, forward, random_model
from flax import nnx

from mojax.models import DecoderConfig, LoRAConfig, add_lora, load_hf, merge_lora, save_hf

CFG = DecoderConfig.tiny("llama", vocab_size=97)
LORA = LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))


def _base_params(model):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(
        nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))}


def _perturb(model, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_modules(model):
        lora = getattr(module, "lora", None)
        if lora is not None:
            lora.lora_b[...] = jnp.asarray(scale * rng.standard_normal(lora.lora_b.shape), jnp.float32)


@pytest.fixture()
def adapted():
    model = random_model(CFG, seed=2)
    base = forward(model, *batch("left", B=2, T=7))
    return add_lora(model, LORA, rngs=nnx.Rngs(0)), base


def test_adapters_are_lora_params_on_the_targets(adapted):
    model, _ = adapted
    lora = nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    paths = {tuple(p[:-2]) for p, _ in lora}
    assert paths == {("blocks", i, *t) for i in range(CFG.num_layers)
                     for t in (("attn", "q_proj"), ("attn", "v_proj"), ("mlp", "down_proj"))}
    D, H, K, h, F, r = CFG.d_model, CFG.num_heads, CFG.kv_heads, CFG.head_size, CFG.mlp_dim, LORA.rank
    want = CFG.num_layers * r * ((D + H * h) + (D + K * h) + (F + D))
    assert sum(int(np.prod(v[...].shape)) for _, v in lora) == want


def test_identity_at_init_and_base_without_lora(adapted):
    model, base = adapted
    ids, mask = batch("left", B=2, T=7)
    np.testing.assert_array_equal(forward(model, ids, mask), base)  # B = 0: exactly the base model
    _perturb(model)
    with_lora = forward(model, ids, mask)
    assert np.abs(with_lora - base).max() > 0.1
    without = np.asarray(nnx.jit(lambda m, i, a: m(i, attention_mask=a, use_lora=False))(model, ids, mask))
    np.testing.assert_array_equal(without, base)


def test_merge_equals_adapted_forward_and_exports(adapted, tmp_path):
    model, _ = adapted
    _perturb(model)
    ids, mask = batch("right", B=2, T=7)
    adapted_logits = forward(model, ids, mask)
    save_hf(model, tmp_path)  # folds the adapters into the exported kernels, leaves the model as is
    assert nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    np.testing.assert_allclose(forward(load_hf(tmp_path), ids, mask), adapted_logits, atol=1e-5)
    merge_lora(model)
    assert not nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    np.testing.assert_allclose(forward(model, ids, mask), adapted_logits, atol=1e-5)


def test_optimizer_on_lora_params_leaves_the_base_untouched(adapted):
    model, _ = adapted
    ids, mask = batch("right", B=2, T=7)
    before = _base_params(model)
    lora_before = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)

    def loss_fn(m):
        logp = jax.nn.log_softmax(m(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], jnp.asarray(ids)[:, 1:, None], -1))

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.LoRAParam))(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(3)]
    assert losses[-1] < losses[0]
    for k, v in _base_params(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=str(k))
    after = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}
    assert all(not np.array_equal(after[k], lora_before[k]) for k in after if k[-1] == "lora_b")


def test_dropout_only_in_train_mode():
    model = add_lora(random_model(CFG, seed=2), LoRAConfig(rank=2, dropout=0.5, targets=("q_proj",)),
                     rngs=nnx.Rngs(0, dropout=1))
    _perturb(model, scale=1.0)
    ids, mask = batch("full", B=2, T=7)
    train = np.asarray(call(model, ids, mask))
    model.eval()
    evaluated = np.asarray(call(model, ids, mask))
    assert np.abs(train - evaluated).max() > 1e-3
    merged = merge_lora(model)
    np.testing.assert_allclose(forward(merged, ids, mask), evaluated, atol=1e-4)  # float32 reassociation


def test_lora_config_and_targets_are_checked():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets=("lm_head",))
    gpt2 = random_model(DecoderConfig.tiny("gpt2", vocab_size=97))
    with pytest.raises(ValueError, match="no projection"):
        add_lora(gpt2, LoRAConfig(targets=("gate_proj",)), rngs=nnx.Rngs(0))  # GPT-2's MLP is ungated
    model = add_lora(random_model(CFG), LoRAConfig(rank=2, targets=("q_proj",)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="already"):
        add_lora(model, LoRAConfig(rank=2, targets=("q_proj",)), rngs=nnx.Rngs(0))
