"""Qwen2 (``Qwen2ForCausalLM``): Llama's layout with q/k/v biases (none on ``o_proj``)."""

from __future__ import annotations

from mojax.models.families._base import Family, require
from mojax.models.families.llama import WEIGHTS, llama_like_from_hf, llama_like_to_hf


def reject_sliding(cfg: dict) -> None:
    """Qwen's per-layer sliding window (layers ≥ ``max_window_layers``) is not implemented: refuse it."""
    sliding = cfg.get("use_sliding_window", False) and cfg.get("max_window_layers", 0) < cfg["num_hidden_layers"]
    if sliding or "sliding_attention" in (cfg.get("layer_types") or []):
        raise ValueError(f"{cfg['model_type']} with use_sliding_window=True (per-layer sliding-window attention) "
                         "is not supported")


def _from_hf(cfg: dict) -> dict:
    reject_sliding(cfg)
    return llama_like_from_hf(cfg, qkv_bias=True, attn_out_bias=False)


def _to_hf(c):
    require(c, qkv_bias=True, attn_out_bias=False, mlp_bias=False, sliding_window=None, qk_norm=False)
    return dict(llama_like_to_hf(c), use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)


FAMILY = Family(model_type="qwen2", architecture="Qwen2ForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=dict(qkv_bias=True), tiny=dict(num_kv_heads=2))
