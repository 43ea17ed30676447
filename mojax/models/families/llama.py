"""Llama 2/3 (``LlamaForCausalLM``); its table and config helpers also serve Mistral, Qwen2 and Qwen3.

``nn.Linear`` weights are ``(out, in)``: ``q_proj [H·h, D]`` → ``[D, H, h]``, ``o_proj [D, H·h]`` → ``[H, h, D]``,
MLP ``[F, D]`` → ``[D, F]``, ``lm_head [V, D]`` → ``[D, V]``.
"""

from __future__ import annotations

from typing import Any

from mojax.models.config import DecoderConfig
from mojax.models.families._base import SAME, VECTOR, Family, linear, require, rope_from_hf, rope_to_hf

_L = "model.layers.{i}."
_B = "blocks.{i}."

WEIGHTS = (
    ("model.embed_tokens.weight", "embed.embedding", SAME),
    *((_L + f"self_attn.{n}.weight", _B + f"attn.{n}.kernel", linear()) for n in ("q_proj", "k_proj", "v_proj")),
    *((_L + f"self_attn.{n}.bias", _B + f"attn.{n}.bias", VECTOR) for n in ("q_proj", "k_proj", "v_proj")),
    (_L + "self_attn.o_proj.weight", _B + "attn.o_proj.kernel", linear(n_in=2)),
    (_L + "self_attn.o_proj.bias", _B + "attn.o_proj.bias", VECTOR),
    (_L + "self_attn.q_norm.weight", _B + "attn.q_norm.scale", VECTOR),  # Qwen3 / Gemma 3 only
    (_L + "self_attn.k_norm.weight", _B + "attn.k_norm.scale", VECTOR),
    *((_L + f"mlp.{n}.weight", _B + f"mlp.{n}.kernel", linear()) for n in ("gate_proj", "up_proj", "down_proj")),
    *((_L + f"mlp.{n}.bias", _B + f"mlp.{n}.bias", VECTOR) for n in ("gate_proj", "up_proj", "down_proj")),
    (_L + "input_layernorm.weight", _B + "attn_norm.scale", VECTOR),
    (_L + "post_attention_layernorm.weight", _B + "mlp_norm.scale", VECTOR),
    ("model.norm.weight", "final_norm.scale", VECTOR),
    ("lm_head.weight", "lm_head.kernel", linear()),
)


def llama_like_from_hf(cfg: dict, **switches: Any) -> dict[str, Any]:
    """The :class:`DecoderConfig` fields shared by Llama-style configs (``switches`` override them)."""
    theta, scaling, params = rope_from_hf(cfg)
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{cfg.get('model_type')} with partial_rotary_factor != 1 is not supported")
    bias = cfg.get("attention_bias", False)
    heads = cfg["num_attention_heads"]
    fields = dict(
        vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
        num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim"),
        mlp_dim=cfg["intermediate_size"], max_positions=cfg.get("max_position_embeddings", 2048),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), activation=cfg.get("hidden_act", "silu"), rope_theta=theta,
        rope_scaling=scaling, qkv_bias=bias, attn_out_bias=bias, mlp_bias=cfg.get("mlp_bias", False))
    return {**fields, **switches}


def llama_like_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """The HF config fields shared by Llama-style families (checks the switches they cannot express)."""
    require(c, norm="rmsnorm", gated_mlp=True, positional="rope", parallel_residual=False, rotary_pct=1.0,
            scale_embeddings=False, query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None,
            sandwich_norms=False, rope_local_theta=None)
    return dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
                head_dim=c.head_size, hidden_act=c.activation, max_position_embeddings=c.max_positions,
                rms_norm_eps=c.norm_eps, rope_parameters=rope_to_hf(c), attention_dropout=0.0)


def _to_hf(c: DecoderConfig) -> dict[str, Any]:
    if c.qkv_bias != c.attn_out_bias:
        raise ValueError("llama export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
    require(c, sliding_window=None, layer_types=None, qk_norm=False)
    return dict(llama_like_to_hf(c), attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)


FAMILY = Family(model_type="llama", architecture="LlamaForCausalLM", weights=WEIGHTS,
                from_hf=llama_like_from_hf, to_hf=_to_hf, tiny=dict(num_kv_heads=2))
