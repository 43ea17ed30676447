"""Shared helpers of the decoder tests: tiny random Hugging Face checkpoints (built once per process with torch),
reference logits from transformers, and the padded-batch layouts."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
VOCAB = 97
_TMP = Path(tempfile.mkdtemp(prefix="mojax_hf_"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is the PyTorch peer for Hugging Face parity tests")


def _hf_config(name: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, **common)
    if name == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0, **common)
    if name == "llama":  # GQA 4/2, untied, attention and MLP biases on
        return tf.LlamaConfig(tie_word_embeddings=False, attention_bias=True, mlp_bias=True, **llama_like)
    if name == "llama_rope_llama3":
        return tf.LlamaConfig(tie_word_embeddings=False, rope_parameters=dict(
            rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16), **llama_like)
    if name == "llama_rope_linear":
        return tf.LlamaConfig(tie_word_embeddings=True, rope_parameters=dict(rope_type="linear", rope_theta=500.0,
                                                                            factor=4.0), **llama_like)
    if name == "llama_rope_yarn":
        return tf.LlamaConfig(tie_word_embeddings=False, rope_parameters=dict(
            rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16), **llama_like)
    if name == "qwen2":  # qkv bias, tied
        return tf.Qwen2Config(tie_word_embeddings=True, use_sliding_window=False, **llama_like)
    if name == "mistral":  # a sliding window short enough to matter on the test sequences
        return tf.MistralConfig(sliding_window=4, tie_word_embeddings=False, **llama_like)
    if name == "qwen2_swa":  # transformers' Qwen sliding window: layers >= max_window_layers slide
        return tf.Qwen2Config(tie_word_embeddings=False, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                              **llama_like)
    if name == "qwen3":  # q/k RMSNorm per head, head_dim 16 != hidden / heads, untied, attention bias on
        return tf.Qwen3Config(head_dim=16, tie_word_embeddings=False, attention_bias=True, use_sliding_window=False,
                              **llama_like)
    gemma = dict(llama_like, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if name == "gemma2":  # caps low enough to bite on the test's random weights
        return tf.Gemma2Config(attn_logit_softcapping=3.0, final_logit_softcapping=8.0, tie_word_embeddings=True,
                               **gemma)
    if name == "gemma3":  # local rope base far from the global one; linear scaling on the global layers
        return tf.Gemma3TextConfig(final_logit_softcapping=None, tie_word_embeddings=True, rope_parameters={
            "full_attention": dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
            "sliding_attention": dict(rope_type="default", rope_theta=100.0)}, **gemma)
    if name == "gpt_neox":  # parallel residual, partial rotary
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64, rotary_pct=0.5, use_parallel_residual=True,
                                hidden_dropout=0.0, attention_dropout=0.0, **common)
    if name == "gpt_neox_seq":  # sequential residual
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=False,
                                hidden_dropout=0.0, attention_dropout=0.0, **common)
    raise KeyError(name)


@functools.cache
def hf_checkpoint(name: str) -> Path:
    """A tiny random transformers causal LM saved to a temp dir. Every parameter (biases and norm gains too) is
    redrawn with a large scale, so a wrong transpose/permutation/bias mapping moves the logits by O(1)."""
    torch = torch_or_skip()
    import transformers as tf

    torch.manual_seed(abs(hash(name)) % 2**31)
    model = tf.AutoModelForCausalLM.from_config(_hf_config(name), attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("weight") and p.ndim == 1:  # norm gains around 1
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    path = _TMP / name
    model.save_pretrained(path, safe_serialization=True)
    return path


@functools.cache
def hf_model(path: str):
    """The transformers model saved at ``path`` (float32, eval mode)."""
    torch_or_skip()
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype="float32").eval()


def hf_logits(path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with ``position_ids = cumsum(mask) - 1`` (what ``generate`` uses for left padding)."""
    import torch

    model = hf_model(str(path))
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.numpy()


def batch(kind: str, *, B: int = 3, T: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask ``[B, T]``: ``kind`` = "full", "left" (left padding) or "right" (right padding); rows
    have different lengths (one full)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(B, T))
    mask = np.ones((B, T), np.int64)
    if kind != "full":
        lengths = [T] + list(rng.integers(2, T, size=B - 1))
        for b, n in enumerate(lengths):
            if kind == "left":
                mask[b, : T - n] = 0
            else:
                mask[b, n:] = 0
        ids = np.where(mask == 1, ids, 0)
    return ids, mask


@functools.partial(__import__("jax").jit, static_argnums=0)
def _forward(graphdef, state, ids, mask):
    from flax import nnx

    return nnx.merge(graphdef, state)(ids, attention_mask=mask)


def forward(model, ids, mask=None) -> np.ndarray:
    """The model's float32 logits as NumPy, through one jitted call (eager op-by-op dispatch recompiles every
    primitive for every new shape, which dominates test time on 2 cores)."""
    from flax import nnx

    ids = np.asarray(ids)
    mask = np.ones(ids.shape, np.int32) if mask is None else np.asarray(mask)
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, ids, mask))


def random_model(config, *, seed: int = 0, scale: float = 0.3):
    """A :class:`Decoder` with NumPy-drawn weights (normal * ``scale``; norm gains ``1 + 0.2 * normal``) placed
    through ``model_from_weights``: no JAX random-number program is compiled, which costs seconds per shape on a
    loaded 2-core machine."""
    from flax import nnx, traverse_util

    from mojax.models import Decoder
    from mojax.models.hf import model_from_weights

    rng = np.random.default_rng(seed)
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract)))
    weights = {}
    for key, sds in flat.items():
        if key[-1] == "scale":
            weights[key] = (1.0 + 0.2 * rng.standard_normal(sds.shape)).astype(np.float32)
        else:
            weights[key] = (scale * rng.standard_normal(sds.shape)).astype(np.float32)
    return model_from_weights(config, weights)


@functools.partial(__import__("jax").jit, static_argnums=(0, 6))
def _call(graphdef, state, ids, mask, prefix, cache, return_hidden):
    from flax import nnx

    return nnx.merge(graphdef, state)(ids, attention_mask=mask, prefix_embeds=prefix, cache=cache,
                                      return_hidden=return_hidden)


def call(model, ids, mask, *, prefix=None, cache=None, return_hidden=False):
    """``model(ids, attention_mask=mask, prefix_embeds=prefix, cache=cache, return_hidden=...)`` through one jitted
    program."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    return _call(graphdef, state, np.asarray(ids), np.asarray(mask), prefix, cache, return_hidden)
