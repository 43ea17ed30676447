"""Qwen2 (``Qwen2ForCausalLM``): Llama's layout with q/k/v biases (none on ``o_proj``); with
``use_sliding_window``, the layers from ``max_window_layers`` on (or those ``layer_types`` names) slide."""

from __future__ import annotations

from typing import Any

from mojax.models.config import DecoderConfig
from mojax.models.families._base import Family, require
from mojax.models.families.llama import WEIGHTS, llama_like_from_hf, llama_like_to_hf


def qwen_window_from_hf(cfg: dict) -> dict[str, Any]:
    """``sliding_window`` and ``layer_types`` of a Qwen2/Qwen3 config, by transformers' rule: the window exists
    only with ``use_sliding_window``; layer ``i`` slides when ``i >= max_window_layers`` unless ``layer_types``
    says otherwise."""
    layers = cfg["num_hidden_layers"]
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", False) else None
    types = cfg.get("layer_types") or ["sliding_attention" if window is not None and i >= cfg.get(
        "max_window_layers", 28) else "full_attention" for i in range(layers)]
    if "sliding_attention" not in types:
        return dict(sliding_window=None, layer_types=None)
    if window is None:
        raise ValueError(f"{cfg['model_type']} config has sliding_attention layers but no sliding window "
                         "(use_sliding_window=False)")
    return dict(sliding_window=window, layer_types=tuple(types))


def qwen_window_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """The HF fields of a config's sliding window (Qwen2/Qwen3)."""
    if not any(c.sliding_layers):
        return dict(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
    return dict(use_sliding_window=True, sliding_window=c.sliding_window,
                max_window_layers=c.sliding_layers.index(True), layer_types=["sliding_attention" if s else "full_attention" for s in c.sliding_layers])


def _from_hf(cfg: dict) -> dict:
    return llama_like_from_hf(cfg, qkv_bias=True, attn_out_bias=False, **qwen_window_from_hf(cfg))


def _to_hf(c):
    require(c, qkv_bias=True, attn_out_bias=False, mlp_bias=False, qk_norm=False)
    return dict(llama_like_to_hf(c), **qwen_window_to_hf(c))


FAMILY = Family(model_type="qwen2", architecture="Qwen2ForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=dict(qkv_bias=True), tiny=dict(num_kv_heads=2))
