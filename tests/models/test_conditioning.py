"""Conditioned policies (HPT, deep HPT, w-mixed LoRA, hyper-LoRA): π_ref at init for any w, the decoder's prefix
hook against a float64 NumPy reference, COS-DPO through ``fit`` moving every conditioning parameter and making the
output depend on w, and merge/export parity against transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import torch_or_skip
from flax import nnx

from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.data.tokenize import TokenizeConfig, collate
from mojax.models import Decoder, DecoderConfig, LoRAConfig
from mojax.models.conditioning import CONDITIONINGS, ConditionedPolicy, ConditioningConfig, build_conditioned, \
    export_hf
from mojax.train import OptimizerConfig, TrainConfig, fit
from mojax.train.objectives import COSDPOSampling, cos_dpo_objective

CFG = DecoderConfig.tiny("llama", vocab_size=97)
LORA = LoRAConfig(rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj"))


def _policy(kind, config=CFG, seed=1, **kw):
    base = Decoder(config, rngs=nnx.Rngs(seed))
    return base, build_conditioned(base, ConditioningConfig(kind=kind, lora=LORA, **kw), rngs=seed + 1)


@nnx.jit
def _logits(policy, ids, mask, w):
    return policy(ids, weights=w, attention_mask=mask)


@nnx.jit
def _base_logits(policy, ids, mask):
    return policy.backbone(ids, attention_mask=mask, use_lora=False)


def _inputs(b=3, n=2, t=7, seed=0, vocab=CFG.vocab_size):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(3, vocab, (b, n, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None, None] >= rng.integers(0, 3, (b, n, 1)))  # some left padding
    return ids, mask


@pytest.mark.parametrize("kind", CONDITIONINGS)
def test_equals_the_reference_at_init_for_any_w(kind):
    _, policy = _policy(kind)
    ids, mask = _inputs()
    ref = np.asarray(_base_logits(policy, ids, mask))
    for w in ([[1.0, 0.0]] * 3, [[0.0, 1.0], [0.3, 0.7], [0.5, 0.5]]):
        np.testing.assert_array_equal(np.asarray(_logits(policy, ids, mask, jnp.asarray(w))), ref)


def test_prefix_hook_matches_float64_numpy():
    """One layer's attention with a per-layer (keys, values) prefix = tokens' own softmax + the prefix's own."""
    from mojax.models.layers import Attention

    attn = Attention(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    B, T, P, K, h, H = 2, 5, 3, CFG.kv_heads, CFG.head_size, CFG.num_heads
    x = rng.standard_normal((B, T, CFG.d_model)).astype(np.float32)
    pk = rng.standard_normal((B, P, K, h)).astype(np.float32)
    pv = rng.standard_normal((B, P, K, h)).astype(np.float32)
    pos = np.broadcast_to(np.arange(T), (B, T))
    mask = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    plain, _ = attn(jnp.asarray(x), positions=jnp.asarray(pos), mask=jnp.asarray(mask))
    got, _ = attn(jnp.asarray(x), positions=jnp.asarray(pos), mask=jnp.asarray(mask),
                  prefix_kv=(jnp.asarray(pk), jnp.asarray(pv)))
    # The reference: q from the layer's own projection + rotary (float32 path), then the prefix term in float64.
    from mojax.models.layers import apply_rope

    q = attn.q_proj(jnp.asarray(x))
    inv, scale = CFG.rope_inv_freq()
    q = np.asarray(apply_rope(q, jnp.asarray(pos), inv, scale), np.float64).reshape(B, T, K, H // K, h)
    s = np.einsum("btkgh,bpkh->bkgtp", q, pk.astype(np.float64)) / np.sqrt(h)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    extra = np.einsum("bkgtp,bpkh->btkgh", p, pv.astype(np.float64)).reshape(B, T, H, h)
    o = np.asarray(attn.o_proj.kernel[...], np.float64)
    want = np.asarray(plain, np.float64) + np.einsum("bthd,hdD->btD", extra, o)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def _synthetic_batches(steps, batch_size=8, seed=0):
    task = SyntheticLMConfig()
    pairs = synthetic_lm.make_pairs(task, num_pairs=steps * batch_size, seed=seed)
    width = 32
    arrays = collate(pairs.examples, TokenizeConfig(max_length=width, max_prompt_length=width - 1, pad_id=0,
                                                    bucket="pow2", min_bucket=16), length=width)
    arrays["labels"] = arrays["labels"][:, :2]
    for i in range(steps):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        yield {k: arrays[k][sl] for k in ("input_ids", "attention_mask", "loss_mask", "labels")}, task


@pytest.mark.parametrize("kind", CONDITIONINGS)
def test_cos_dpo_through_fit_trains_the_conditioning(kind):
    task = SyntheticLMConfig()
    config = DecoderConfig.tiny("llama", vocab_size=task.vocab_size)
    _, policy = _policy(kind, config=config)
    before = nnx.to_flat_state(nnx.state(policy, ConditionedPolicy.trainable))
    objective = cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2, per_example=True), beta=0.1,
                                  ref_mode="lora")
    batches = (b for b, _ in _synthetic_batches(6))
    result = fit(policy, objective, batches, config=TrainConfig(steps=6, batch_size=8, log_every=1, progress=False),
                 optimizer=OptimizerConfig(learning_rate=3e-2), wrt=ConditionedPolicy.trainable)
    assert np.isfinite(result.metrics("loss")).all()
    trained = result.model()
    after = dict(nnx.to_flat_state(nnx.state(trained, ConditionedPolicy.trainable)))
    moved = {p: float(np.abs(np.asarray(after[p][...]) - np.asarray(v[...])).max()) for p, v in before}
    assert all(m > 0 for m in moved.values()), [p for p, m in moved.items() if m == 0]  # gradient reached each
    frozen = nnx.All(nnx.Param, nnx.Not(ConditionedPolicy.trainable))
    for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(policy, frozen)),
                              nnx.to_flat_state(nnx.state(trained, frozen))):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
    ids, mask = _inputs(vocab=task.vocab_size)
    ends = [np.asarray(_logits(trained, ids, mask, jnp.asarray([w] * 3))) for w in ([1.0, 0.0], [0.0, 1.0])]
    assert np.abs(ends[0] - ends[1]).max() > 1e-4  # the output now depends on w


def _perturbed(kind, config, seed=3):
    _, policy = _policy(kind, config=config, shared_adapter=kind == "mixed_lora")
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_modules(policy):
        if hasattr(module, "lora_b"):
            module.lora_b[...] = jnp.asarray(0.3 * rng.standard_normal(module.lora_b.shape), jnp.float32)
    return policy


@pytest.mark.parametrize("kind", ["mixed_lora", "hyper_lora"])
def test_merged_at_w_equals_the_conditioned_model(kind):
    policy = _perturbed(kind, CFG)
    ids, mask = _inputs()
    w = np.array([0.3, 0.7], np.float32)
    want = np.asarray(_logits(policy, ids, mask, jnp.asarray([w] * 3)))
    merged = policy.merged(w)
    assert not nnx.to_flat_state(nnx.state(merged, nnx.LoRAParam))
    got = np.asarray(nnx.jit(lambda m, i, a: m(i, attention_mask=a))(merged, ids, mask))
    np.testing.assert_allclose(got, want, atol=1e-5)
    other = np.asarray(_logits(policy, ids, mask, jnp.asarray([[0.9, 0.1]] * 3)))
    assert np.abs(other - want).max() > 1e-3  # a different w is a different model


def _token_logps(logits, ids):
    lp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return np.asarray(jnp.take_along_axis(lp[:, :-1], jnp.asarray(ids)[:, 1:, None], axis=-1)[..., 0])


@pytest.mark.parametrize("kind", ["mixed_lora", "hyper_lora"])
def test_export_hf_at_w_loads_in_transformers_with_the_same_logps(kind, tmp_path):
    torch = torch_or_skip()
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    policy = _perturbed(kind, CFG)
    w = np.array([0.3, 0.7], np.float32)
    export_hf(policy, w, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    ids = np.random.default_rng(5).integers(3, CFG.vocab_size, (3, 9))
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids)).logits.numpy()
    ours = np.asarray(nnx.jit(lambda p, i, w: p(i, weights=w))(policy, jnp.asarray(ids, jnp.int32),
                                                               jnp.asarray([w] * 3)))
    np.testing.assert_allclose(_token_logps(theirs, ids), _token_logps(ours, ids), atol=1e-4)


def test_prefix_kinds_cannot_merge_but_run_pinned_in_generate():
    from mojax.models import generate

    _, policy = _policy("deep_hpt")
    policy.conditioner.gate[...] = jnp.full(policy.conditioner.gate.shape, 0.5)
    with pytest.raises(ValueError, match="cannot be merged"):
        policy.merged([0.5, 0.5])
    ids = jnp.asarray(np.random.default_rng(1).integers(3, CFG.vocab_size, (2, 5)), jnp.int32)
    w = jnp.asarray([[0.2, 0.8]] * 2)
    pinned = policy.at([0.2, 0.8])
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, i: m(i))(pinned, ids)),
                               np.asarray(nnx.jit(lambda p, i, w: p(i, weights=w))(policy, ids, w)), atol=1e-6)
    out = generate(pinned, ids, max_new_tokens=3, temperature=0.0)
    # Greedy decoding with the cache = the argmax of a full forward over the grown sequence, token for token.
    grown = jnp.concatenate([ids, jnp.asarray(out.tokens[:, :2], jnp.int32)], axis=1)
    full = np.asarray(nnx.jit(lambda p, i, w: p(i, weights=w))(policy, grown, w))
    np.testing.assert_array_equal(np.asarray(out.tokens), full[:, 4:7].argmax(-1))


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown conditioning"):
        ConditioningConfig(kind="prefix")
    with pytest.raises(ValueError, match="needs a LoRAConfig"):
        ConditioningConfig(kind="mixed_lora", lora=None)
    with pytest.raises(ValueError, match="cannot read temperatures"):
        ConditioningConfig(kind="mixed_lora", condition_on_temperature=True)
    _, policy = _policy("hyper_lora")
    with pytest.raises(ValueError, match="weights must have shape"):
        policy(jnp.zeros((2, 4), jnp.int32), weights=jnp.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="without weights"):
        policy.backbone(jnp.zeros((2, 4), jnp.int32))
