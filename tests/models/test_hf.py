"""Hugging Face import/export against transformers' PyTorch models, the llama2.c loader against a NumPy
re-implementation of llama2.c's forward pass, and the real GPT-2 tokenizer."""

from __future__ import annotations

import json
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from decoder_testlib import SHARED, batch, forward, hf_checkpoint, hf_logits, random_model, torch_or_skip
from flax import nnx

from mojax.models import DecoderConfig, generate, load_hf, load_llama2c, load_tokenizer, save_hf
from mojax.models.hf import config_from_hf, read_safetensors

FAMILIES = ["gpt2", "llama", "qwen2", "mistral", "gpt_neox", "gpt_neox_seq", "llama_rope_llama3",
            "llama_rope_linear", "qwen2_swa", "qwen3", "gemma2", "gemma3"]
TOL = 1e-4
STORIES = SHARED / "data" / "tinyllamas-stories260K" / "stories260K.bin"
GPT2_BPE = SHARED / "data" / "gpt2-bpe"


def _ours(model, ids, mask):
    return forward(model, ids, mask)


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(name):
    """float32 logits equal transformers' (max abs ≤ 1e-4 on real tokens) unpadded, left- and right-padded."""
    torch_or_skip()
    path = hf_checkpoint(name)
    model = load_hf(path)
    for kind in ("full", "left", "right"):
        ids, mask = batch(kind, T=12)
        ref = hf_logits(path, ids, mask)
        ours = _ours(model, ids, mask)
        assert np.abs(ref).max() > 1.0  # the random weights are large enough for the comparison to mean something
        np.testing.assert_array_less(np.abs(ours - ref)[mask == 1].max(), TOL, err_msg=f"{name} {kind}")


@pytest.mark.parametrize("rope", [
    dict(rope_type="linear", factor=4.0),
    dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
         original_max_position_embeddings=64),
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=128, beta_fast=16, beta_slow=2,
         truncate=False),
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.5),
])
def test_rope_frequencies_match_transformers(rope):
    """Scaled rotary frequencies and the cos/sin factor equal transformers' ROPE_INIT_FUNCTIONS."""
    torch_or_skip()
    import transformers as tf
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = tf.LlamaConfig(hidden_size=256, num_attention_heads=2, num_key_value_heads=2, intermediate_size=8,
                        num_hidden_layers=1, vocab_size=8, max_position_embeddings=512,
                        rope_parameters={"rope_theta": 10000.0, **rope})
    inv_ref, scale_ref = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
    ours = config_from_hf(hf.to_dict())
    inv, scale = ours.rope_inv_freq()
    np.testing.assert_allclose(inv, inv_ref.numpy(), rtol=1e-5)
    assert scale == pytest.approx(scale_ref, rel=1e-6)
    default, _ = ours.replace(rope_scaling=None).rope_inv_freq()
    assert not np.allclose(inv, default)  # the scaling did something


def test_left_padding_equals_unpadded():
    """A left-padded row gives the unpadded row's logits: positions come from the mask."""
    torch_or_skip()
    model = load_hf(hf_checkpoint("llama"))
    ids, mask = batch("left", T=10, seed=3)
    padded = _ours(model, ids, mask)
    for b in range(ids.shape[0]):
        keep = mask[b] == 1
        alone = _ours(model, ids[b: b + 1, keep], mask[b: b + 1, keep])[0]
        np.testing.assert_allclose(padded[b, keep], alone, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "gpt_neox", "llama_rope_llama3", "qwen2_swa",
                                  "qwen3", "gemma2", "gemma3"])
def test_save_hf_round_trip(name, tmp_path):
    """save_hf writes a checkpoint transformers loads with our logits (and load_hf reads back bit-exactly)."""
    torch = torch_or_skip()
    import transformers as tf

    model = load_hf(hf_checkpoint(name))
    save_hf(model, tmp_path)
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = batch("right", T=10, seed=1)
    with torch.no_grad():
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        ref = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.numpy()
    ours = _ours(model, ids, mask)
    assert np.abs(ours - ref)[mask == 1].max() < TOL
    again = load_hf(tmp_path)
    for a, b in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(again, nnx.Param))):
        assert a[0] == b[0]
        np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))


@pytest.mark.parametrize("name, switch, value", [
    ("qwen3", "qk_norm_gain", None), ("qwen2_swa", "layer_types", None),
    ("gemma2", "attn_logit_softcap", None), ("gemma2", "final_logit_softcap", None),
    ("gemma2", "layer_types", None), ("gemma2", "query_pre_attn_scalar", None), ("gemma2", "norm", "rmsnorm"),
    ("gemma2", "scale_embeddings", False), ("gemma3", "rope_local_theta", None),
])
def test_each_family_switch_moves_the_logits(name, switch, value):
    """The parity tests above can tell: undoing any one Qwen3/Gemma feature on the loaded weights moves the logits
    by far more than the tolerance (so none of them is a no-op in the test configurations)."""
    torch_or_skip()
    from mojax.models.hf import flat_weights, model_from_weights

    model = load_hf(hf_checkpoint(name))
    weights = flat_weights(model)
    if switch == "qk_norm_gain":  # q/k norms have parameters: set their gains to 1 instead
        config = model.config
        weights = {k: np.ones_like(v) if k[-2] in ("q_norm", "k_norm") else v for k, v in weights.items()}
    else:
        config = model.config.replace(**{switch: value})
    ids, mask = batch("right", T=12)
    moved = np.abs(_ours(model_from_weights(config, weights), ids, mask) - _ours(model, ids, mask))[mask == 1]
    assert moved.max() > 100 * TOL, (name, switch, moved.max())


def test_save_hf_fresh_models(tmp_path):
    """A randomly initialised mojax model (never seen by transformers) exports to identical logits."""
    torch = torch_or_skip()
    import transformers as tf

    ids, mask = batch("full", T=8)
    for mt in ("gpt_neox", "gpt2", "llama", "qwen3", "gemma2", "gemma3_text"):
        model = random_model(DecoderConfig.tiny(mt, vocab_size=97), seed=7)
        save_hf(model, tmp_path / mt)
        theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path / mt, attn_implementation="eager").eval()
        with torch.no_grad():
            ref = theirs(input_ids=torch.tensor(ids)).logits.numpy()
        assert np.abs(_ours(model, ids, mask) - ref).max() < TOL, mt


def test_sharded_checkpoint_and_bf16(tmp_path):
    """A checkpoint split over several safetensors files (index.json) loads; bf16 tensors are read exactly."""
    torch = torch_or_skip()
    import transformers as tf

    src = hf_checkpoint("llama")
    hf = tf.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids, mask = batch("left", T=8)
    np.testing.assert_allclose(_ours(load_hf(tmp_path / "sharded"), ids, mask), _ours(load_hf(src), ids, mask),
                               atol=0)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ours = read_safetensors(tmp_path / "bf16" / "model.safetensors")
    ref = hf.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        np.testing.assert_array_equal(ours[key].astype(np.float32), ref[key].float().numpy())
    model = load_hf(tmp_path / "bf16")
    assert np.isfinite(_ours(model, ids, mask)).all()


def test_export_keeps_bf16_and_shards(tmp_path):
    """A bf16 checkpoint is exported as bf16 (bit-exact, half the float32 bytes); with a small ``max_shard_size``
    the export is split over several files plus an index that transformers loads with our logits."""
    torch = torch_or_skip()
    import transformers as tf

    src = hf_checkpoint("gemma3")
    hf = tf.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16")
    model = load_hf(tmp_path / "bf16")
    assert model.config.checkpoint_dtype == "bfloat16"
    save_hf(model, tmp_path / "out")
    theirs, ours = read_safetensors(tmp_path / "bf16" / "model.safetensors"), read_safetensors(
        tmp_path / "out" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype == ml_dtypes.bfloat16, k
        np.testing.assert_array_equal(ours[k], theirs[k])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    save_hf(model, tmp_path / "f32", dtype="float32")
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert 1.9 < size(tmp_path / "f32") / size(tmp_path / "out") < 2.05

    save_hf(model, tmp_path / "sharded", dtype="float32", max_shard_size="20KB")
    files = sorted((tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert all(f.stat().st_size < 20_000 + 4_096 for f in files)  # 20 KB of tensors + the header
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", attn_implementation="eager").eval()
    ids, mask = batch("left", T=8)
    with torch.no_grad():
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        ref = again(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos)).logits.float().numpy()
    assert np.abs(_ours(model, ids, mask) - ref)[mask == 1].max() < TOL
    np.testing.assert_array_equal(_ours(load_hf(tmp_path / "sharded"), ids, mask), _ours(model, ids, mask))
    save_hf(model, tmp_path / "sharded")  # re-export unsharded into the same directory: old shards are removed
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["config.json", "model.safetensors"]


def test_export_refuses_non_finite_weights(tmp_path):
    model = random_model(DecoderConfig.tiny("llama", vocab_size=97), seed=3)
    model.blocks[0].mlp.up_proj.kernel[...] = model.blocks[0].mlp.up_proj.kernel[...].at[0, 0].set(np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        save_hf(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_read_safetensors_equals_safetensors_numpy():
    from safetensors.numpy import load_file

    path = hf_checkpoint("gpt2") / "model.safetensors"
    ref, ours = load_file(str(path)), read_safetensors(path)
    assert ref.keys() == ours.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], ours[k])


@pytest.mark.parametrize("cfg, match", [
    ({"model_type": "bert"}, "bert"),
    ({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 8, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 8, "rope_scaling": {"type": "longrope"}}, "longrope"),
    ({"model_type": "qwen2", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
      "intermediate_size": 8, "layer_types": ["full_attention", "sliding_attention"]}, "no sliding window"),
    ({"model_type": "gpt2", "vocab_size": 8, "scale_attn_by_inverse_layer_idx": True}, "inverse_layer_idx"),
])
def test_unsupported_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf(cfg)


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "vocab_size": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf(tmp_path)


def test_legacy_config_fields():
    """v4-style configs (top-level rope_theta, rope_scaling with "type", GPT-NeoX rotary_pct) are understood."""
    c = config_from_hf({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 8, "rope_theta": 500000.0,
                        "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert c.rope_theta == 500000.0 and c.rope_scaling.type == "linear" and c.rope_scaling.factor == 2.0
    n = config_from_hf({"model_type": "gpt_neox", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 8, "rotary_pct": 0.5,
                        "rotary_emb_base": 100.0})
    assert n.rotary_pct == 0.5 and n.rope_theta == 100.0 and n.parallel_residual


# ---------------------------------------------------------------------------------------------------- llama2.c


def _read_llama2c(path):
    """An independent reader of llama2.c's version-0 file (float64)."""
    raw = open(path, "rb").read()
    dim, hidden, L, H, K, V, S = struct.unpack("<7i", raw[:28])
    data = np.frombuffer(raw[28:], np.float32).astype(np.float64)
    names = [("emb", (abs(V), dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)), ("wk", (L, K * dim // H, dim)),
             ("wv", (L, K * dim // H, dim)), ("wo", (L, dim, dim)), ("rms_ffn", (L, dim)), ("w1", (L, hidden, dim)),
             ("w2", (L, dim, hidden)), ("w3", (L, hidden, dim)), ("rms_final", (dim,)),
             ("fr", (S, dim // H // 2)), ("fi", (S, dim // H // 2))]
    w, o = {}, 0
    for name, shape in names:
        n = int(np.prod(shape))
        w[name] = data[o: o + n].reshape(shape)
        o += n
    return w, dict(dim=dim, L=L, H=H, K=K, V=abs(V))


def _llama2c_forward(w, hp, tokens, interleaved=True):
    """llama2.c's run.c forward in NumPy: rotary embedding on interleaved pairs (complex multiplication);
    ``interleaved=False`` rotates halves instead (what a loader that forgot the permutation would compute)."""
    H, K, dim = hp["H"], hp["K"], hp["dim"]
    h = dim // H
    T = len(tokens)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * g

    def rope(x, n):  # x [T, n*h]: pairs (2i, 2i+1) of each head rotated by pos * 10000^(-2i/h)
        freq = 10000.0 ** (-np.arange(0, h, 2) / h)
        if interleaved:
            xc = x.reshape(T, n, h // 2, 2)
            z = xc[..., 0] + 1j * xc[..., 1]
        else:
            xc = x.reshape(T, n, 2, h // 2)
            z = xc[:, :, 0] + 1j * xc[:, :, 1]
        z = z * np.exp(1j * np.arange(T)[:, None, None] * freq)
        parts = np.stack([z.real, z.imag], -1 if interleaved else 2)
        return parts.reshape(T, n * h)

    x = w["emb"][tokens]
    for layer in range(hp["L"]):
        xb = rms(x, w["rms_att"][layer])
        q = rope(xb @ w["wq"][layer].T, H).reshape(T, H, h)
        k = rope(xb @ w["wk"][layer].T, K).reshape(T, K, h)
        v = (xb @ w["wv"][layer].T).reshape(T, K, h)
        out = np.zeros((T, H, h))
        for n in range(H):
            kv = n // (H // K)
            s = q[:, n] @ k[:, kv].T / np.sqrt(h)
            s = np.where(np.tril(np.ones((T, T))) == 1, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, n] = (p / p.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(T, dim) @ w["wo"][layer].T
        xb = rms(x, w["rms_ffn"][layer])
        a = xb @ w["w1"][layer].T
        x = x + ((a / (1 + np.exp(-a))) * (xb @ w["w3"][layer].T)) @ w["w2"][layer].T
    return rms(x, w["rms_final"]) @ w["emb"].T


@pytest.fixture(scope="module")
def stories():
    if not STORIES.exists():
        pytest.skip(f"real llama2.c checkpoint not available at {STORIES}")
    return load_llama2c(STORIES)


def test_llama2c_matches_numpy_reference(stories):
    """The interleaved → rotate-half permutation is right: logits equal llama2.c's complex-RoPE forward."""
    w, hp = _read_llama2c(STORIES)
    # the file's freq_cis tables are cos/sin of pos * 10000^(-2i/h): the theta our config assumes
    h = hp["dim"] // hp["H"]
    freq = 10000.0 ** (-np.arange(0, h, 2) / h)
    np.testing.assert_allclose(w["fr"][:7], np.cos(np.arange(7)[:, None] * freq), atol=1e-6)
    tokens = np.array([1, 403, 407, 261, 378, 280, 429, 300, 47, 411])
    ref = _llama2c_forward(w, hp, tokens)
    ours = forward(stories, tokens[None])[0]
    assert np.abs(ours - ref).max() < 1e-4
    # the comparison can tell: rotating halves of the unpermuted weights (a forgotten permutation) is far off
    assert np.abs(_llama2c_forward(w, hp, tokens, interleaved=False) - ref).max() > 0.1


def test_llama2c_greedy_continuation_is_sensible(stories):
    """The real model is confident on its own greedy continuation (low NLL), unlike a random model of its shape."""
    prompt = jnp.array([[1]])
    out = generate(stories, prompt, max_new_tokens=32)
    seq = jnp.concatenate([prompt, out.tokens], axis=1)

    def nll(model):
        logp = np.asarray(jax_log_softmax(forward(model, seq[:, :-1])))
        return -np.mean(np.take_along_axis(logp, np.asarray(seq[:, 1:])[..., None], -1))

    trained, rand = nll(stories), nll(random_model(stories.config, scale=0.02))
    assert trained < 1.5 < np.log(512) - 0.5 < rand
    assert len(set(np.asarray(out.tokens[0]).tolist())) > 5  # not one token repeated


def jax_log_softmax(x):
    import jax

    return jax.nn.log_softmax(x, axis=-1)


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_gpt2_tokenizer_round_trip():
    if not (GPT2_BPE / "encoder.json").exists():
        pytest.skip(f"GPT-2 BPE files not available at {GPT2_BPE}")
    tok = load_tokenizer(GPT2_BPE)
    text = "Hello world! Multi-objective preference optimisation, in JAX.\n\nHuman: ünïcödé?"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert len(tok) == 50257
