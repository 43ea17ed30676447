"""Mistral (``MistralForCausalLM``): Llama's layout plus a sliding window on every layer."""

from __future__ import annotations

from mojax.models.families._base import Family, require
from mojax.models.families.llama import WEIGHTS, llama_like_from_hf, llama_like_to_hf


def _from_hf(cfg: dict) -> dict:
    return llama_like_from_hf(cfg, sliding_window=cfg.get("sliding_window"))


def _to_hf(c):
    require(c, qkv_bias=False, attn_out_bias=False, mlp_bias=False, qk_norm=False, layer_types=None)
    return dict(llama_like_to_hf(c), sliding_window=c.sliding_window)


FAMILY = Family(model_type="mistral", architecture="MistralForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, tiny=dict(num_kv_heads=2))
