"""Hugging Face checkpoints in and out, the llama2.c checkpoint format, and tokenizers.

Weight layouts (mojax ← Hugging Face):

* Llama / Mistral / Qwen2 ``nn.Linear`` weights are stored ``(out, in)``: ``q_proj [H·h, D]`` → ``[D, H, h]`` by
  transpose + reshape; ``o_proj [D, H·h]`` → ``[H, h, D]``; MLP ``[F, D]`` → ``[D, F]``; ``lm_head [V, D]`` →
  ``[D, V]``.
* GPT-2 ``Conv1D`` weights are already ``(in, out)``: ``c_attn [D, 3D]`` splits along the output into q, k, v.
* GPT-NeoX ``query_key_value [3·H·h, D]`` is laid out per head: output row ``n·3h + j`` is head ``n``'s q
  (``j < h``), k (``h ≤ j < 2h``) or v; i.e. ``W.reshape(H, 3, h, D)``.
* llama2.c (Karpathy) rotates *interleaved* pairs ``(2i, 2i+1)`` of each head; Hugging Face and mojax rotate halves
  ``(i, i + h/2)``. Permuting each head's output rows of ``wq``/``wk`` from ``[pair, 2]`` to ``[2, pair]`` order
  maps one onto the other (the permutation in HF's ``convert_llama_weights_to_hf.py``); q·k is invariant because
  q and k are permuted alike.

Safetensors files are read with a small memory-mapped reader (no torch; bf16 via ``ml_dtypes``), so a weight is
read from disk only when placed, straight onto its sharding.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from mojax.models.config import DecoderConfig, RopeScaling
from mojax.models.decoder import Decoder
from mojax.sharding import state_shardings

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

# Buffers some checkpoints carry that are not weights (causal-mask tables, cached rotary frequencies).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                     "rotary_emb.inv_freq")


# ----------------------------------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only memory-mapped NumPy arrays (nothing is copied)."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buf = raw[8 + n + start: 8 + n + end]
        out[name] = buf.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights: dict[str, np.ndarray] = {}
        for name in files:
            weights.update(read_safetensors(path / name))
        return weights
    single = path / "model.safetensors"
    if single.exists():
        return read_safetensors(single)
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
                            "checkpoints are supported; convert .bin files with transformers first)")


# ----------------------------------------------------------------------------------------------------------------
# config.json <-> DecoderConfig


def _rope_from_hf(cfg: dict) -> tuple[float, RopeScaling | None, dict]:
    params = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0))))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, params
    if kind not in ("linear", "llama3", "yarn"):
        raise ValueError(f"rope type {kind!r} is not supported (supported: default, linear, llama3, yarn)")
    scaling = RopeScaling(
        type=kind, factor=params.get("factor"), low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        original_max_positions=params.get("original_max_position_embeddings"),
        beta_fast=params.get("beta_fast"), beta_slow=params.get("beta_slow"),
        attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"), truncate=params.get("truncate", True))
    return theta, scaling, params


def _first_id(value):
    if isinstance(value, list):
        return value[0] if value else None
    return value


def config_from_hf(cfg: dict, *, dtype=jnp.float32) -> DecoderConfig:
    """A :class:`DecoderConfig` from a Hugging Face ``config.json`` dict; raises on unsupported features."""
    mt = cfg.get("model_type")
    special = dict(bos_token_id=_first_id(cfg.get("bos_token_id")), eos_token_id=_first_id(cfg.get("eos_token_id")),
                   pad_token_id=_first_id(cfg.get("pad_token_id")),
                   initializer_range=cfg.get("initializer_range", 0.02), dtype=dtype)
    if mt == "gpt2":
        if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError("gpt2 configs with scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True "
                             "are not supported")
        if cfg.get("add_cross_attention", False):
            raise ValueError("gpt2 with add_cross_attention=True (encoder-decoder) is not supported")
        d = cfg.get("n_embd", 768)
        return DecoderConfig(
            model_type="gpt2", vocab_size=cfg["vocab_size"], d_model=d, num_layers=cfg.get("n_layer", 12),
            num_heads=cfg.get("n_head", 12), mlp_dim=cfg.get("n_inner") or 4 * d,
            max_positions=cfg.get("n_positions", 1024), norm="layernorm",
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5), activation=cfg.get("activation_function", "gelu_new"),
            gated_mlp=False, positional="learned", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
            tie_embeddings=cfg.get("tie_word_embeddings", True), **special)
    if mt in ("llama", "mistral", "qwen2"):
        theta, scaling, params = _rope_from_hf(cfg)
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"{mt} with partial_rotary_factor != 1 is not supported")
        window = None
        if mt == "mistral":
            window = cfg.get("sliding_window")
        if mt == "qwen2":
            layer_types = cfg.get("layer_types") or []
            sliding = cfg.get("use_sliding_window", False) and cfg.get("max_window_layers", 0) < cfg[
                "num_hidden_layers"]
            if sliding or "sliding_attention" in layer_types:
                raise ValueError("qwen2 with use_sliding_window=True (per-layer sliding-window attention) is not "
                                 "supported")
        attn_bias = cfg.get("attention_bias", False)
        heads = cfg["num_attention_heads"]
        return DecoderConfig(
            model_type=mt, vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim"), mlp_dim=cfg["intermediate_size"],
            max_positions=cfg.get("max_position_embeddings", 2048), norm="rmsnorm",
            norm_eps=cfg.get("rms_norm_eps", 1e-6), activation=cfg.get("hidden_act", "silu"), gated_mlp=True,
            positional="rope", rope_theta=theta, rope_scaling=scaling,
            qkv_bias=True if mt == "qwen2" else attn_bias, attn_out_bias=False if mt == "qwen2" else attn_bias,
            mlp_bias=cfg.get("mlp_bias", False), tie_embeddings=cfg.get("tie_word_embeddings", False),
            sliding_window=window, **special)
    if mt == "gpt_neox":
        theta, scaling, params = _rope_from_hf(cfg)
        pct = params.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25))
        bias = cfg.get("attention_bias", True)
        return DecoderConfig(
            model_type="gpt_neox", vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
            mlp_dim=cfg["intermediate_size"], max_positions=cfg.get("max_position_embeddings", 2048),
            norm="layernorm", norm_eps=cfg.get("layer_norm_eps", 1e-5), activation=cfg.get("hidden_act", "gelu"),
            gated_mlp=False, positional="rope", rope_theta=theta, rope_scaling=scaling, rotary_pct=pct,
            parallel_residual=cfg.get("use_parallel_residual", True), qkv_bias=bias, attn_out_bias=bias,
            mlp_bias=True, tie_embeddings=cfg.get("tie_word_embeddings", False), **special)
    raise ValueError(f"model_type {mt!r} is not supported by mojax.models.load_hf "
                     "(supported: gpt2, llama, mistral, qwen2, gpt_neox)")


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a :class:`DecoderConfig`."""
    special = dict(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                   initializer_range=c.initializer_range, tie_word_embeddings=c.tie_embeddings, dtype="float32")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rs = c.rope_scaling
        rope = {"rope_type": rs.type, "rope_theta": c.rope_theta}
        for key, value in (("factor", rs.factor), ("low_freq_factor", rs.low_freq_factor),
                           ("high_freq_factor", rs.high_freq_factor),
                           ("original_max_position_embeddings", rs.original_max_positions),
                           ("beta_fast", rs.beta_fast), ("beta_slow", rs.beta_slow),
                           ("attention_factor", rs.attention_factor), ("mscale", rs.mscale),
                           ("mscale_all_dim", rs.mscale_all_dim)):
            if value is not None:
                rope[key] = value
        if rs.type == "yarn":
            rope["truncate"] = rs.truncate
    if c.model_type == "gpt2":
        _require(c, norm="layernorm", gated_mlp=False, positional="learned", qkv_bias=True, attn_out_bias=True,
                 mlp_bias=True, parallel_residual=False, num_kv_heads=(None, c.num_heads),
                 head_dim=(None, c.d_model // c.num_heads), sliding_window=None)
        return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=c.vocab_size,
                    n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads, n_inner=c.mlp_dim,
                    n_positions=c.max_positions, layer_norm_epsilon=c.norm_eps, activation_function=c.activation,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    if c.model_type in ("llama", "mistral", "qwen2"):
        _require(c, norm="rmsnorm", gated_mlp=True, positional="rope", parallel_residual=False, rotary_pct=1.0)
        out = dict(architectures=[{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                   "qwen2": "Qwen2ForCausalLM"}[c.model_type]],
                   model_type=c.model_type, vocab_size=c.vocab_size, hidden_size=c.d_model,
                   intermediate_size=c.mlp_dim, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                   num_key_value_heads=c.kv_heads, head_dim=c.head_size, hidden_act=c.activation,
                   max_position_embeddings=c.max_positions, rms_norm_eps=c.norm_eps, rope_parameters=rope,
                   attention_dropout=0.0, **special)
        if c.model_type == "llama":
            if c.qkv_bias != c.attn_out_bias:
                raise ValueError("llama export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
            _require(c, sliding_window=None)
            out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
        elif c.model_type == "mistral":
            _require(c, qkv_bias=False, attn_out_bias=False, mlp_bias=False)
            out.update(sliding_window=c.sliding_window)
        else:
            _require(c, qkv_bias=True, attn_out_bias=False, mlp_bias=False, sliding_window=None)
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
        return out
    _require(c, norm="layernorm", gated_mlp=False, positional="rope", mlp_bias=True, sliding_window=None,
             num_kv_heads=(None, c.num_heads), head_dim=(None, c.d_model // c.num_heads))
    if c.qkv_bias != c.attn_out_bias:
        raise ValueError("gpt_neox export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
    rope["partial_rotary_factor"] = c.rotary_pct
    return dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", vocab_size=c.vocab_size,
                hidden_size=c.d_model, intermediate_size=c.mlp_dim, num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads, hidden_act=c.activation, max_position_embeddings=c.max_positions,
                layer_norm_eps=c.norm_eps, use_parallel_residual=c.parallel_residual, rope_parameters=rope,
                attention_bias=c.qkv_bias, hidden_dropout=0.0, attention_dropout=0.0, **special)


def _require(c: DecoderConfig, **expected):
    for key, want in expected.items():
        got = getattr(c, key)
        ok = got in want if isinstance(want, tuple) else got == want
        if not ok:
            raise ValueError(f"cannot export a {c.model_type} config with {key}={got!r} (Hugging Face's "
                             f"{c.model_type} needs {want!r})")


# ----------------------------------------------------------------------------------------------------------------
# weights: HF names <-> mojax state paths


def _strip(weights: dict[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in weights.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        for p in prefixes:
            if key.startswith(p):
                key = key[len(p):]
                break
        out[key] = value
    return out


def _weights_from_hf(c: DecoderConfig, hf: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    """mojax flat state ``{path: array}`` from Hugging Face tensors (names with their model prefix)."""
    D, H, K, h = c.d_model, c.num_heads, c.kv_heads, c.head_size
    out: dict[tuple, np.ndarray] = {}
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    if c.model_type == "gpt2":
        w = _strip(hf, ("transformer.",))
        out[("embed", "embedding")] = w.pop("wte.weight")
        out[("pos_embed", "embedding")] = w.pop("wpe.weight")
        for i in range(c.num_layers):
            p, b = f"h.{i}.", ("blocks", i)
            qkv = f32(w.pop(p + "attn.c_attn.weight"))  # [D, 3D] (in, out)
            qkv_b = f32(w.pop(p + "attn.c_attn.bias"))
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[b + ("attn", name, "kernel")] = qkv[:, j * D:(j + 1) * D].reshape(D, H, h)
                out[b + ("attn", name, "bias")] = qkv_b[j * D:(j + 1) * D].reshape(H, h)
            out[b + ("attn", "o_proj", "kernel")] = f32(w.pop(p + "attn.c_proj.weight")).reshape(H, h, D)
            out[b + ("attn", "o_proj", "bias")] = w.pop(p + "attn.c_proj.bias")
            out[b + ("mlp", "up_proj", "kernel")] = w.pop(p + "mlp.c_fc.weight")
            out[b + ("mlp", "up_proj", "bias")] = w.pop(p + "mlp.c_fc.bias")
            out[b + ("mlp", "down_proj", "kernel")] = w.pop(p + "mlp.c_proj.weight")
            out[b + ("mlp", "down_proj", "bias")] = w.pop(p + "mlp.c_proj.bias")
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + (ours, "scale")] = w.pop(p + theirs + ".weight")
                out[b + (ours, "bias")] = w.pop(p + theirs + ".bias")
        out[("final_norm", "scale")] = w.pop("ln_f.weight")
        out[("final_norm", "bias")] = w.pop("ln_f.bias")
        _unembed(c, w, out, "lm_head.weight")
    elif c.model_type in ("llama", "mistral", "qwen2"):
        w = _strip(hf, ("model.",))
        out[("embed", "embedding")] = w.pop("embed_tokens.weight")
        for i in range(c.num_layers):
            p, b = f"layers.{i}.", ("blocks", i)
            for name, heads in (("q_proj", H), ("k_proj", K), ("v_proj", K)):
                out[b + ("attn", name, "kernel")] = f32(w.pop(p + f"self_attn.{name}.weight")).T.reshape(D, heads, h)
                if (p + f"self_attn.{name}.bias") in w:
                    out[b + ("attn", name, "bias")] = f32(w.pop(p + f"self_attn.{name}.bias")).reshape(heads, h)
            out[b + ("attn", "o_proj", "kernel")] = f32(w.pop(p + "self_attn.o_proj.weight")).T.reshape(H, h, D)
            if (p + "self_attn.o_proj.bias") in w:
                out[b + ("attn", "o_proj", "bias")] = w.pop(p + "self_attn.o_proj.bias")
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[b + ("mlp", name, "kernel")] = f32(w.pop(p + f"mlp.{name}.weight")).T
                if (p + f"mlp.{name}.bias") in w:
                    out[b + ("mlp", name, "bias")] = w.pop(p + f"mlp.{name}.bias")
            out[b + ("attn_norm", "scale")] = w.pop(p + "input_layernorm.weight")
            out[b + ("mlp_norm", "scale")] = w.pop(p + "post_attention_layernorm.weight")
        out[("final_norm", "scale")] = w.pop("norm.weight")
        _unembed(c, w, out, "lm_head.weight")
    else:  # gpt_neox
        w = _strip(hf, ("gpt_neox.",))
        out[("embed", "embedding")] = w.pop("embed_in.weight")
        for i in range(c.num_layers):
            p, b = f"layers.{i}.", ("blocks", i)
            qkv = f32(w.pop(p + "attention.query_key_value.weight")).reshape(H, 3, h, D)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[b + ("attn", name, "kernel")] = qkv[:, j].transpose(2, 0, 1)  # [D, H, h]
            if (p + "attention.query_key_value.bias") in w:
                qkv_b = f32(w.pop(p + "attention.query_key_value.bias")).reshape(H, 3, h)
                for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[b + ("attn", name, "bias")] = qkv_b[:, j]
            out[b + ("attn", "o_proj", "kernel")] = f32(w.pop(p + "attention.dense.weight")).T.reshape(H, h, D)
            if (p + "attention.dense.bias") in w:
                out[b + ("attn", "o_proj", "bias")] = w.pop(p + "attention.dense.bias")
            out[b + ("mlp", "up_proj", "kernel")] = f32(w.pop(p + "mlp.dense_h_to_4h.weight")).T
            out[b + ("mlp", "up_proj", "bias")] = w.pop(p + "mlp.dense_h_to_4h.bias")
            out[b + ("mlp", "down_proj", "kernel")] = f32(w.pop(p + "mlp.dense_4h_to_h.weight")).T
            out[b + ("mlp", "down_proj", "bias")] = w.pop(p + "mlp.dense_4h_to_h.bias")
            for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
                out[b + (ours, "scale")] = w.pop(p + theirs + ".weight")
                out[b + (ours, "bias")] = w.pop(p + theirs + ".bias")
        out[("final_norm", "scale")] = w.pop("final_layer_norm.weight")
        out[("final_norm", "bias")] = w.pop("final_layer_norm.bias")
        _unembed(c, w, out, "embed_out.weight")
    if w:
        raise ValueError(f"unexpected tensors in the {c.model_type} checkpoint: {sorted(w)[:10]}")
    return out


def _unembed(c: DecoderConfig, w: dict, out: dict, key: str) -> None:
    if c.tie_embeddings:
        w.pop(key, None)  # a tied checkpoint may still store the (identical) output matrix
    else:
        if key not in w:
            raise ValueError(f"untied {c.model_type} checkpoint has no {key!r}")
        out[("lm_head", "kernel")] = np.asarray(w.pop(key), np.float32).T


def _weights_to_hf(c: DecoderConfig, flat: dict[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face tensors (full names, ``(out, in)`` Linear layout) from a mojax flat state."""
    D, H, K, h = c.d_model, c.num_heads, c.kv_heads, c.head_size
    g = lambda *path: np.asarray(flat[path], np.float32)  # noqa: E731
    has = lambda *path: path in flat  # noqa: E731
    out: dict[str, np.ndarray] = {}
    L = c.num_layers
    if c.model_type == "gpt2":
        out["transformer.wte.weight"] = g("embed", "embedding")
        out["transformer.wpe.weight"] = g("pos_embed", "embedding")
        for i in range(L):
            p, b = f"transformer.h.{i}.", ("blocks", i)
            names = ("q_proj", "k_proj", "v_proj")
            out[p + "attn.c_attn.weight"] = np.concatenate([g(*b, "attn", n, "kernel").reshape(D, D) for n in names],
                                                           axis=1)
            out[p + "attn.c_attn.bias"] = np.concatenate([g(*b, "attn", n, "bias").reshape(D) for n in names])
            out[p + "attn.c_proj.weight"] = g(*b, "attn", "o_proj", "kernel").reshape(D, D)
            out[p + "attn.c_proj.bias"] = g(*b, "attn", "o_proj", "bias")
            out[p + "mlp.c_fc.weight"] = g(*b, "mlp", "up_proj", "kernel")
            out[p + "mlp.c_fc.bias"] = g(*b, "mlp", "up_proj", "bias")
            out[p + "mlp.c_proj.weight"] = g(*b, "mlp", "down_proj", "kernel")
            out[p + "mlp.c_proj.bias"] = g(*b, "mlp", "down_proj", "bias")
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[p + theirs + ".weight"] = g(*b, ours, "scale")
                out[p + theirs + ".bias"] = g(*b, ours, "bias")
        out["transformer.ln_f.weight"] = g("final_norm", "scale")
        out["transformer.ln_f.bias"] = g("final_norm", "bias")
        if not c.tie_embeddings:
            out["lm_head.weight"] = g("lm_head", "kernel").T
    elif c.model_type in ("llama", "mistral", "qwen2"):
        out["model.embed_tokens.weight"] = g("embed", "embedding")
        for i in range(L):
            p, b = f"model.layers.{i}.", ("blocks", i)
            for name, heads in (("q_proj", H), ("k_proj", K), ("v_proj", K)):
                out[p + f"self_attn.{name}.weight"] = g(*b, "attn", name, "kernel").reshape(D, heads * h).T
                if has(*b, "attn", name, "bias"):
                    out[p + f"self_attn.{name}.bias"] = g(*b, "attn", name, "bias").reshape(heads * h)
            out[p + "self_attn.o_proj.weight"] = g(*b, "attn", "o_proj", "kernel").reshape(H * h, D).T
            if has(*b, "attn", "o_proj", "bias"):
                out[p + "self_attn.o_proj.bias"] = g(*b, "attn", "o_proj", "bias")
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[p + f"mlp.{name}.weight"] = g(*b, "mlp", name, "kernel").T
                if has(*b, "mlp", name, "bias"):
                    out[p + f"mlp.{name}.bias"] = g(*b, "mlp", name, "bias")
            out[p + "input_layernorm.weight"] = g(*b, "attn_norm", "scale")
            out[p + "post_attention_layernorm.weight"] = g(*b, "mlp_norm", "scale")
        out["model.norm.weight"] = g("final_norm", "scale")
        if not c.tie_embeddings:
            out["lm_head.weight"] = g("lm_head", "kernel").T
    else:
        out["gpt_neox.embed_in.weight"] = g("embed", "embedding")
        for i in range(L):
            p, b = f"gpt_neox.layers.{i}.", ("blocks", i)
            names = ("q_proj", "k_proj", "v_proj")
            qkv = np.stack([g(*b, "attn", n, "kernel").transpose(1, 2, 0) for n in names], axis=1)  # [H, 3, h, D]
            out[p + "attention.query_key_value.weight"] = qkv.reshape(3 * H * h, D)
            if has(*b, "attn", "q_proj", "bias"):
                out[p + "attention.query_key_value.bias"] = np.stack(
                    [g(*b, "attn", n, "bias") for n in names], axis=1).reshape(3 * H * h)
            out[p + "attention.dense.weight"] = g(*b, "attn", "o_proj", "kernel").reshape(H * h, D).T
            if has(*b, "attn", "o_proj", "bias"):
                out[p + "attention.dense.bias"] = g(*b, "attn", "o_proj", "bias")
            out[p + "mlp.dense_h_to_4h.weight"] = g(*b, "mlp", "up_proj", "kernel").T
            out[p + "mlp.dense_h_to_4h.bias"] = g(*b, "mlp", "up_proj", "bias")
            out[p + "mlp.dense_4h_to_h.weight"] = g(*b, "mlp", "down_proj", "kernel").T
            out[p + "mlp.dense_4h_to_h.bias"] = g(*b, "mlp", "down_proj", "bias")
            for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
                out[p + theirs + ".weight"] = g(*b, ours, "scale")
                out[p + theirs + ".bias"] = g(*b, ours, "bias")
        out["gpt_neox.final_layer_norm.weight"] = g("final_norm", "scale")
        out["gpt_neox.final_layer_norm.bias"] = g("final_norm", "bias")
        out["embed_out.weight"] = g("lm_head", "kernel").T
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# building a model from a flat weight dict


def param_shardings(model_or_state: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` per leaf of a model's (possibly abstract) state: the logical-axis rules of
    :mod:`mojax.sharding`, with mesh axes that do not divide a dimension dropped. Returns a pure nested dict."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return nnx.to_pure_dict(state_shardings(state, mesh))  # state_shardings already applies sharding.fit_spec


def model_from_weights(config: DecoderConfig, weights: dict[tuple, np.ndarray], *, mesh: Mesh | None = None
                       ) -> Decoder:
    """Build a :class:`Decoder` abstractly (``nnx.eval_shape``: nothing allocated) and fill it from ``{path: array}``,
    placing each array directly onto its sharding when ``mesh`` is given (only each device's slice is copied)."""
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    pure = nnx.to_pure_dict(abs_state)
    shardings = traverse_util.flatten_dict(param_shardings(abs_state, mesh)) if mesh is not None else None
    flat = traverse_util.flatten_dict(pure)
    missing = [k for k in flat if k not in weights]
    extra = [k for k in weights if k not in flat]
    if missing or extra:
        raise ValueError(f"weights do not match the {config.model_type} model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    filled = {}
    for key, sds in flat.items():
        arr = weights[key]
        if tuple(arr.shape) != tuple(sds.shape):
            raise ValueError(f"weight {'/'.join(map(str, key))} has shape {arr.shape}, model expects {sds.shape}")
        if shardings is None:
            filled[key] = jnp.asarray(np.asarray(arr, np.float32))
        else:
            sh = shardings[key]
            filled[key] = jax.make_array_from_callback(
                tuple(arr.shape), sh, lambda idx, a=arr: np.asarray(a[idx], np.float32))
    nnx.replace_by_pure_dict(abs_state, traverse_util.unflatten_dict(filled))
    return nnx.merge(graphdef, abs_state)


# ----------------------------------------------------------------------------------------------------------------
# public API


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None) -> Decoder:
    """Load a Hugging Face causal LM from a local directory (``config.json`` + ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``), without torch.

    Supported ``model_type``: gpt2, llama, mistral, qwen2, gpt_neox (see :func:`config_from_hf` for the features;
    anything else raises ``ValueError`` naming it).

    Args:
      path: checkpoint directory.
      dtype: compute dtype of the model (parameters are float32).
      mesh: place every weight straight onto its ``NamedSharding`` (logical rules of :mod:`mojax.sharding`).
    Returns:
      a :class:`Decoder` whose logits match ``transformers``' to float32 precision.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no config.json")
    return from_hf_state(json.loads(cfg_path.read_text()), _read_checkpoint(path), dtype=dtype, mesh=mesh)


def from_hf_state(hf_config: dict, tensors: Mapping[str, np.ndarray], *, dtype=jnp.float32,
                  mesh: Mesh | None = None) -> Decoder:
    """A placed :class:`Decoder` from a Hugging Face ``config.json`` dict and its tensors under their Hugging Face
    names (``model.layers.0.self_attn.q_proj.weight``, ...; any float dtype, e.g. memory-mapped bf16).

    The common back end of :func:`load_hf` and of converters from other formats (GGUF): build the HF-style config
    and the HF-named tensors, then call this. ``dtype`` and ``mesh`` are as in :func:`load_hf`.
    """
    config = config_from_hf(dict(hf_config), dtype=dtype)
    return model_from_weights(config, _weights_from_hf(config, dict(tensors)), mesh=mesh)


def flat_weights(model: Decoder, *, merge_lora: bool = True) -> dict[tuple, np.ndarray]:
    """The model's parameters as ``{path: float32 NumPy array}`` (LoRA adapters folded into their kernels unless
    ``merge_lora=False``, in which case adapter parameters are excluded)."""
    from mojax.models.lora import effective_kernels  # lora imports layers only; late import keeps hf→lora one-way

    params = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    if merge_lora:
        flat.update(effective_kernels(model))
    return flat


def save_hf(model: Decoder, path: str | os.PathLike, *, merge_lora: bool = True) -> None:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers.AutoModelForCausalLM.from_pretrained``
    loads with the same logits. LoRA adapters are folded into the exported weights (the model is not changed)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = model.config
    hf_config = config_to_hf(c)
    tensors = _weights_to_hf(c, flat_weights(model, merge_lora=merge_lora))
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def load_llama2c(path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None) -> Decoder:
    """Load a llama2.c (Karpathy) "version 0" checkpoint: a 7 × int32 header ``dim, hidden_dim, n_layers,
    n_heads, n_kv_heads, vocab_size, seq_len`` (negative vocab_size = untied classifier appended) followed by float32
    arrays ``token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real,
    freq_cis_imag[, wcls]``. Weights are ``(out, in)``; ``wq``/``wk`` rows are permuted from interleaved to
    rotate-half rotary layout. Rope theta 10000, RMSNorm eps 1e-5 (llama2.c's values)."""
    raw = np.fromfile(path, dtype=np.uint8)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28].tobytes())
    tied = vocab > 0
    vocab = abs(vocab)
    data = raw[28:].view(np.float32)
    h = dim // heads
    offset = 0

    def take(*shape):
        nonlocal offset
        n = int(np.prod(shape))
        if offset + n > data.size:
            raise ValueError(f"{path}: file too short for the header's sizes")
        out = data[offset: offset + n].reshape(shape)
        offset += n
        return out

    emb = take(vocab, dim)
    rms_att = take(layers, dim)
    wq, wk = take(layers, heads * h, dim), take(layers, kv_heads * h, dim)
    wv, wo = take(layers, kv_heads * h, dim), take(layers, dim, heads * h)
    rms_ffn = take(layers, dim)
    w1, w2, w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, h // 2)
    take(seq_len, h // 2)  # freq_cis real/imag: recomputed from theta
    wcls = None if tied else take(vocab, dim)
    if offset != data.size:
        raise ValueError(f"{path}: {data.size - offset} trailing floats; not a llama2.c version-0 checkpoint?")

    def permute(w, n):  # interleaved pairs -> rotate-half, per head, on the output rows
        return w.reshape(n, h // 2, 2, dim).transpose(0, 2, 1, 3).reshape(n * h, dim)

    config = DecoderConfig(model_type="llama", vocab_size=vocab, d_model=dim, num_layers=layers, num_heads=heads,
                           num_kv_heads=kv_heads, mlp_dim=hidden, max_positions=seq_len, norm_eps=1e-5,
                           tie_embeddings=tied, dtype=dtype)
    hf = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = permute(wq[i], heads)
        hf[p + "self_attn.k_proj.weight"] = permute(wk[i], kv_heads)
        hf[p + "self_attn.v_proj.weight"] = wv[i]
        hf[p + "self_attn.o_proj.weight"] = wo[i]
        hf[p + "mlp.gate_proj.weight"] = w1[i]
        hf[p + "mlp.down_proj.weight"] = w2[i]
        hf[p + "mlp.up_proj.weight"] = w3[i]
        hf[p + "input_layernorm.weight"] = rms_att[i]
        hf[p + "post_attention_layernorm.weight"] = rms_ffn[i]
    if wcls is not None:
        hf["lm_head.weight"] = wcls
    return model_from_weights(config, _weights_from_hf(config, hf), mesh=mesh)


def load_tokenizer(path: str | os.PathLike):
    """A ``transformers`` tokenizer from a Hugging Face directory (``tokenizer.json`` / ``vocab.json`` +
    ``merges.txt`` / ``tokenizer_config.json``) or from OpenAI's raw GPT-2 BPE layout (``encoder.json`` +
    ``vocab.bpe``, which are HF's ``vocab.json`` + ``merges.txt`` under other names)."""
    path = Path(path)
    if (path / "encoder.json").exists() and (path / "vocab.bpe").exists() and not (path / "vocab.json").exists():
        from transformers import GPT2TokenizerFast

        with tempfile.TemporaryDirectory() as tmp:  # the fast tokenizer is built in memory; the copies can go
            shutil.copy(path / "encoder.json", Path(tmp) / "vocab.json")
            shutil.copy(path / "vocab.bpe", Path(tmp) / "merges.txt")
            return GPT2TokenizerFast.from_pretrained(tmp)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a tokenizer directory")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
