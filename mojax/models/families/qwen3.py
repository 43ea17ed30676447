"""Qwen3 (``Qwen3ForCausalLM``): Llama's layout plus an RMSNorm over each head of q and k (before the rotary
embedding); one ``attention_bias`` flag for q/k/v and o; sliding layers as in Qwen2."""

from __future__ import annotations

from mojax.models.families._base import Family, require
from mojax.models.families.llama import WEIGHTS, llama_like_from_hf, llama_like_to_hf
from mojax.models.families.qwen2 import qwen_window_from_hf, qwen_window_to_hf


def _from_hf(cfg: dict) -> dict:
    return llama_like_from_hf(cfg, qk_norm=True, **qwen_window_from_hf(cfg))


def _to_hf(c):
    if c.qkv_bias != c.attn_out_bias:
        raise ValueError("qwen3 export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
    require(c, qk_norm=True, mlp_bias=False)
    return dict(llama_like_to_hf(c), attention_bias=c.qkv_bias, **qwen_window_to_hf(c))


FAMILY = Family(model_type="qwen3", architecture="Qwen3ForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=dict(qk_norm=True), tiny=dict(num_kv_heads=2, head_dim=16))
