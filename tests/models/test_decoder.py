"""The Decoder: configs and presets, batch axes, prefix embeddings, hidden states, remat, bf16, and an 8-device
sharded forward equal to the single-device one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import batch, call, forward, random_model
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models import Decoder, DecoderConfig, RopeScaling
from mojax.models.decoder import positions_from_mask


@pytest.fixture(scope="module")
def tiny():
    return random_model(DecoderConfig.tiny("llama", vocab_size=97), seed=3)


def _num_params(config):
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("preset, count", [
    # published parameter counts (Hugging Face model cards / num_parameters())
    ("gpt2_small", 124_439_808),
    ("pythia_160m", 162_322_944),
    ("llama3_8b", 8_030_261_248),
    ("qwen2_0_5b", 494_032_768),
    # transformers' num_parameters() of the released configs (Qwen3-0.6B, gemma-2-2b, gemma-3-1b)
    ("qwen3_0_6b", 596_049_920),
    ("gemma2_2b", 2_614_341_888),
    ("gemma3_1b", 999_885_952),
])
def test_presets_have_the_published_sizes(preset, count):
    assert _num_params(getattr(DecoderConfig, preset)()) == count


@pytest.mark.parametrize("bad, match", [
    (dict(num_heads=4, num_kv_heads=3), "multiple"),
    (dict(activation="swish2"), "activation"),
    (dict(model_type="bert"), "model_type"),
    (dict(rotary_pct=0.1), "rotary"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(param_dtype=jnp.float16), "param_dtype"),
    (dict(d_model=30, num_heads=4), "divisible"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig.tiny("llama").replace(**bad)
    with pytest.raises(ValueError, match="dynamic"):
        RopeScaling(type="dynamic", factor=2.0)


def test_rope_default_frequencies_closed_form():
    c = DecoderConfig.tiny("llama", rope_theta=500.0)
    inv, scale = c.rope_inv_freq()
    d = c.head_size
    np.testing.assert_allclose(inv, 500.0 ** (-np.arange(0, d, 2) / d), rtol=1e-6)
    assert scale == 1.0
    neox = DecoderConfig.tiny("gpt_neox", rotary_pct=0.5)
    assert neox.rope_inv_freq()[0].shape == (neox.head_size // 4,)


def test_positions_from_mask():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1]])
    np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 0, 1, 1, 2]])
    np.testing.assert_array_equal(positions_from_mask(mask, jnp.array([3, 0, 1]))[:, -1], [5, 2, 3])


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.booleans()), min_size=3, max_size=3), st.integers(0, 1000))
def test_padding_is_invisible(rows, seed):
    """Whatever the padding (left or right, any amount), real tokens get the logits of the unpadded row, computed
    independently one row at a time at full width (one compiled shape)."""
    T = 8
    model = _padding_model()
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 97, (3, T))
    mask = np.zeros((3, T), np.int32)
    for b, (n, left) in enumerate(rows):
        mask[b, T - n:] = 1 if left else 0
        mask[b, :n] = 0 if left else 1
    padded = forward(model, np.where(mask == 1, ids, 0), mask)
    for b in range(3):
        real = ids[b, mask[b] == 1]
        alone = forward(model, np.concatenate([real, np.zeros(T - len(real), int)])[None].repeat(3, 0),
                        (np.arange(T) < len(real))[None].repeat(3, 0).astype(np.int32))[0, : len(real)]
        np.testing.assert_allclose(padded[b, mask[b] == 1], alone, atol=2e-5)


_PADDING_MODEL = []


def _padding_model():
    if not _PADDING_MODEL:
        _PADDING_MODEL.append(random_model(DecoderConfig.tiny("qwen2", vocab_size=97), seed=9))
    return _PADDING_MODEL[0]


def test_rotary_logits_are_invariant_to_a_position_shift(tiny):
    """RoPE scores depend on relative positions only: shifting every position by c leaves the logits unchanged,
    while a learned-position model (GPT-2) changes."""
    ids, mask = batch("full", B=2, T=6, seed=7)
    base = np.asarray(tiny(jnp.asarray(ids), positions=jnp.arange(6)[None].repeat(2, 0)))
    np.testing.assert_allclose(base, forward(tiny, ids, mask), atol=2e-5)  # eager vs jit rounding
    shifted = np.asarray(tiny(jnp.asarray(ids), positions=jnp.arange(6)[None].repeat(2, 0) + 17))
    np.testing.assert_allclose(shifted, base, atol=1e-4)
    gpt2 = random_model(DecoderConfig.tiny("gpt2", vocab_size=97), seed=1)
    pos = jnp.arange(6)[None].repeat(2, 0)
    assert np.abs(np.asarray(gpt2(jnp.asarray(ids), positions=pos + 17) - gpt2(jnp.asarray(ids), positions=pos))
                  ).max() > 1e-2


def test_leading_axes_are_flattened(tiny):
    """[B, N, T] pairs give the same logits as the flattened [B·N, T] batch."""
    ids, mask = batch("right", B=4, T=7, seed=1)
    flat = forward(tiny, ids, mask)
    pairs = np.asarray(call(tiny, ids.reshape(2, 2, 7), mask.reshape(2, 2, 7)))
    np.testing.assert_allclose(pairs.reshape(4, 7, -1), flat, atol=1e-5)


def test_prefix_embeds_equal_prepended_tokens(tiny):
    """Token embeddings passed as a prefix give the logits of the longer token sequence (rotary model), for left
    padding too; a [B, P, D] prefix is shared by all N responses of [B, N, T] input."""
    ids, mask = batch("left", B=2, T=6, seed=2)
    pre_ids = np.array([[5, 6, 7], [8, 9, 10]])
    prefix = tiny.embed(jnp.asarray(pre_ids))
    with_prefix = np.asarray(call(tiny, ids, mask, prefix=prefix))
    # the reference: prefix tokens, then (left-padded) tokens; the padding sits between them, masked out
    full_ids = np.concatenate([pre_ids, ids], axis=1)
    full_mask = np.concatenate([np.ones_like(pre_ids), mask], axis=1)
    ref = forward(tiny, full_ids, full_mask)[:, 3:]
    np.testing.assert_allclose(with_prefix[mask == 1], ref[mask == 1], atol=2e-5)
    pairs = np.asarray(call(tiny, np.stack([ids] * 2, 1), np.stack([mask] * 2, 1), prefix=prefix))
    np.testing.assert_allclose(pairs[:, 1], with_prefix, atol=1e-5)
    with pytest.raises(ValueError, match="prefix_embeds"):
        tiny(jnp.asarray(ids), prefix_embeds=jnp.zeros((2, 3, 5)))


def test_hidden_times_unembedding_is_logits():
    model = random_model(DecoderConfig.tiny("gpt_neox", vocab_size=97), seed=4)  # untied: lm_head
    ids, mask = batch("right", B=2, T=5)
    hidden = call(model, ids, mask, return_hidden=True)
    assert hidden.shape == (2, 5, model.config.d_model) and model.unembedding().shape == (model.config.d_model, 97)
    np.testing.assert_allclose(np.asarray(hidden @ model.unembedding()), forward(model, ids, mask), atol=1e-4)


def test_unembedding_refuses_soft_capped_logits():
    """Gemma 2's logits are cap·tanh(h·W/cap): handing out W for a from-hidden log-prob path would skip the cap."""
    model = random_model(DecoderConfig.tiny("gemma2", vocab_size=61))
    with pytest.raises(ValueError, match="soft-caps its logits"):
        model.unembedding()
    assert random_model(DecoderConfig.tiny("gemma2", vocab_size=61, final_logit_softcap=None)).unembedding().shape == (
        32, 61)


def test_chunked_logps_apply_gemma2_final_softcap():
    """The LM objectives' chunked from-hidden paths take (W, cap) from ``output_head()``: Gemma 2's log-probs equal
    the full-logits path (which the model soft-caps itself), compact or not."""
    from mojax.train.objectives._common import policy_logps

    model = random_model(DecoderConfig.tiny("gemma2", vocab_size=61, final_logit_softcap=2.0), seed=1)
    assert model.output_head()[1] == 2.0
    ids, mask = batch("right", B=2, T=8, seed=2)
    loss_mask = mask.copy()
    loss_mask[:, :3] = 0
    pb = {"input_ids": ids.reshape(1, 2, 8) % 61, "attention_mask": mask.reshape(1, 2, 8),
          "loss_mask": loss_mask.reshape(1, 2, 8)}
    full = np.asarray(policy_logps(model, pb, chunk_size=None))
    for compact in (True, False):
        np.testing.assert_allclose(np.asarray(policy_logps(model, pb, chunk_size=2, compact=compact)), full,
                                   rtol=1e-5, atol=1e-5)
    uncapped = random_model(DecoderConfig.tiny("gemma2", vocab_size=61, final_logit_softcap=None), seed=1)
    assert np.abs(np.asarray(policy_logps(uncapped, pb, chunk_size=None)) - full).max() > 1e-2


def test_remat_gives_the_same_values_and_gradients(tiny):
    ids, mask = batch("right", B=2, T=6)
    remat = random_model(tiny.config.replace(remat=True), seed=3)  # the same NumPy weights as ``tiny``

    def loss(model):
        return jnp.mean(jax.nn.log_softmax(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[..., 3])

    l1, g1 = nnx.jit(nnx.value_and_grad(loss))(tiny)
    l2, g2 = nnx.jit(nnx.value_and_grad(loss))(remat)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g1))


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_bf16_compute_is_close_to_fp32(model_type):
    cfg = DecoderConfig.tiny(model_type, vocab_size=97)
    f32 = random_model(cfg, seed=5, scale=0.1)
    bf16 = random_model(cfg.replace(dtype=jnp.bfloat16), seed=5, scale=0.1)
    ids, mask = batch("left", B=3, T=8)
    a, b = forward(f32, ids, mask), forward(bf16, ids, mask)
    assert b.dtype == np.float32 and all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16)))
    pa, pb = jax.nn.softmax(a), jax.nn.softmax(b)
    assert float(jnp.abs(pa - pb)[mask == 1].max()) < 0.02
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_bf16_parameter_storage_rounds_the_float32_model(tmp_path):
    """``param_dtype=bfloat16``: every parameter stored in bfloat16, holding the float32 model's weights (same
    seed) rounded to nearest even — at build, through ``with_precision`` and through HF load; an export of it
    loads back bit-exactly; logits within bfloat16's tolerance of float32."""
    from mojax.models import load_hf, save_hf

    cfg = DecoderConfig.tiny("llama", vocab_size=97)
    f32 = Decoder(cfg, rngs=nnx.Rngs(4))
    built = Decoder(cfg.replace(param_dtype=jnp.bfloat16, dtype=jnp.bfloat16), rngs=nnx.Rngs(4))
    cast = f32.with_precision(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    save_hf(f32, tmp_path / "f32")
    loaded = load_hf(tmp_path / "f32", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    rounded = [np.asarray(x.astype(jnp.bfloat16), np.float32) for x in jax.tree.leaves(nnx.state(f32, nnx.Param))]
    for model in (built, cast, loaded):
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
        for a, b in zip(leaves, rounded):
            np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    assert float(jnp.abs(jax.tree.leaves(nnx.state(f32))[0] - rounded[0]).max()) > 0  # rounding did happen
    save_hf(built, tmp_path / "bf16", dtype="float32")
    again = load_hf(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(built))):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    ids, mask = batch("left", B=3, T=8)
    a, b = forward(f32, ids, mask), forward(built, ids, mask)
    assert b.dtype == np.float32
    assert float(jnp.abs(jax.nn.softmax(a) - jax.nn.softmax(b))[mask == 1].max()) < 0.02
    with pytest.raises(ValueError, match="plain Decoder"):
        from mojax.models.lora import LoRAConfig, add_lora
        add_lora(Decoder(cfg, rngs=nnx.Rngs(0)), LoRAConfig(rank=2), rngs=nnx.Rngs(1)).with_precision(
            param_dtype=jnp.bfloat16)


def test_bad_inputs_raise(tiny):
    with pytest.raises(ValueError, match="attention_mask"):
        tiny(jnp.ones((2, 4), jnp.int32), attention_mask=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="at least 2 axes"):
        tiny(jnp.ones((4,), jnp.int32))


_SHARDED = textwrap.dedent("""
    import os, sys, tempfile
    sys.path.insert(0, {testdir!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from decoder_testlib import forward, random_model
    from mojax.models import DecoderConfig, load_hf, save_hf
    from mojax.sharding import named_sharding
    assert jax.device_count() == 8, jax.device_count()
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    for mt in ("llama", "gpt2"):
        model = random_model(DecoderConfig.tiny(mt, vocab_size=96), seed=0, scale=0.2)
        tmp = tempfile.mkdtemp()
        save_hf(model, tmp)
        sharded = load_hf(tmp, mesh=mesh)
        q = sharded.blocks[0].attn.q_proj.kernel[...]
        assert q.sharding.spec == P("fsdp", "tensor", None), q.sharding
        assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 2, 8)
        rng = np.random.default_rng(0)
        ids = rng.integers(1, 96, (8, 10))
        mask = np.ones((8, 10), np.int32)
        mask[:4, :3] = 0
        ref = forward(model, ids, mask)
        with jax.set_mesh(mesh):
            ids_s = jax.device_put(ids, named_sharding(mesh, "batch", "seq"))
            mask_s = jax.device_put(mask, named_sharding(mesh, "batch", "seq"))
            out = forward(sharded, ids_s, mask_s)
        err = np.abs(out - ref).max()
        assert err < 1e-5, (mt, err)
        print(mt, "max abs diff", err)
    # tensor = 4 does not divide the 2 KV heads: those weights are replicated along that dimension, not refused
    mesh4 = jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    model = random_model(DecoderConfig.tiny("llama", vocab_size=96), seed=1, scale=0.2)
    tmp = tempfile.mkdtemp()
    save_hf(model, tmp)
    sharded = load_hf(tmp, mesh=mesh4)
    attn = sharded.blocks[0].attn
    assert attn.k_proj.kernel[...].sharding.spec == P(None, None, None), attn.k_proj.kernel[...].sharding
    assert attn.q_proj.kernel[...].sharding.spec == P(None, "tensor", None), attn.q_proj.kernel[...].sharding
    with jax.set_mesh(mesh4):
        out = forward(sharded, jax.device_put(ids, named_sharding(mesh4, "batch", "seq")),
                      jax.device_put(mask, named_sharding(mesh4, "batch", "seq")))
    assert np.abs(out - forward(model, ids, mask)).max() < 1e-5
    print("SHARDED_OK")
""")


def test_sharded_forward_equals_single_device(tmp_path):
    """load_hf(mesh=2×2×2 data×fsdp×tensor) shards weights by the logical rules and gives single-device logits;
    on a 2×1×4 mesh, weights whose dimension tensor = 4 does not divide are replicated along it."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED.format(testdir=str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).parents[2]))
    assert "SHARDED_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
