"""Gemma 2 (``Gemma2ForCausalLM``): Gemma RMSNorm ``(1 + g)``, embeddings × √D, GeGLU (tanh GELU), norms before
and after both the attention and the MLP, ``query_pre_attn_scalar`` scaling, soft-capped attention scores and
logits, sliding-window and global layers alternating, tied embeddings. Linear weights as in Llama. The weight
table also serves Gemma 3 (its q/k-norm rows apply only when the config has ``qk_norm``).
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
    (_L + "self_attn.q_norm.weight", _B + "attn.q_norm.scale", VECTOR),  # Gemma 3 only
    (_L + "self_attn.k_norm.weight", _B + "attn.k_norm.scale", VECTOR),
    *((_L + f"mlp.{n}.weight", _B + f"mlp.{n}.kernel", linear()) for n in ("gate_proj", "up_proj", "down_proj")),
    (_L + "input_layernorm.weight", _B + "attn_norm.scale", VECTOR),
    (_L + "post_attention_layernorm.weight", _B + "post_attn_norm.scale", VECTOR),
    (_L + "pre_feedforward_layernorm.weight", _B + "mlp_norm.scale", VECTOR),
    (_L + "post_feedforward_layernorm.weight", _B + "post_mlp_norm.scale", VECTOR),
    ("model.norm.weight", "final_norm.scale", VECTOR),
    ("lm_head.weight", "lm_head.kernel", linear()),
)

DEFAULTS = dict(norm="gemma_rmsnorm", activation="gelu_pytorch_tanh", scale_embeddings=True, sandwich_norms=True,
                tie_embeddings=True)


def gemma_from_hf(cfg: dict, pattern: int, **switches: Any) -> dict[str, Any]:
    """The :class:`DecoderConfig` fields shared by Gemma 2 and 3 (``pattern``: the HF default sliding pattern)."""
    if cfg.get("use_bidirectional_attention"):
        raise ValueError(f"{cfg['model_type']} with use_bidirectional_attention=True is not supported")
    heads, layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types") or ["full_attention" if (i + 1) % cfg.get("sliding_window_pattern", pattern) == 0
                                       else "sliding_attention" for i in range(layers)]
    bias = cfg.get("attention_bias", False)
    fields = dict(
        DEFAULTS, vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"], num_layers=layers, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim"),
        mlp_dim=cfg["intermediate_size"], max_positions=cfg.get("max_position_embeddings", 8192),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        activation=cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh",
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", 256), qkv_bias=bias, attn_out_bias=bias,
        sliding_window=window, layer_types=tuple(types) if window is not None else None,
        final_logit_softcap=cfg.get("final_logit_softcapping"), tie_embeddings=cfg.get("tie_word_embeddings", True))
    return {**fields, **switches}


def gemma_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """The HF config fields shared by Gemma 2 and 3 (checks the switches they cannot express)."""
    require(c, norm="gemma_rmsnorm", gated_mlp=True, positional="rope", parallel_residual=False, rotary_pct=1.0,
            scale_embeddings=True, sandwich_norms=True, mlp_bias=False)
    if c.qkv_bias != c.attn_out_bias:
        raise ValueError(f"{c.model_type} export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
    types = ["sliding_attention" if s else "full_attention" for s in c.sliding_layers]
    scalar = c.query_pre_attn_scalar or c.head_size  # None: HF's equivalent of 1/√h
    scalar = int(scalar) if float(scalar).is_integer() else scalar  # transformers' strict config wants an int
    return dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
                head_dim=c.head_size, hidden_activation=c.activation, max_position_embeddings=c.max_positions,
                rms_norm_eps=c.norm_eps, attention_bias=c.qkv_bias, attention_dropout=0.0,
                query_pre_attn_scalar=scalar,
                sliding_window=c.sliding_window or c.max_positions, layer_types=types,
                final_logit_softcapping=c.final_logit_softcap)


def _from_hf(cfg: dict) -> dict:
    theta, scaling, _ = rope_from_hf(cfg)
    return gemma_from_hf(cfg, 2, rope_theta=theta, rope_scaling=scaling,
                         attn_logit_softcap=cfg.get("attn_logit_softcapping", 50.0),
                         final_logit_softcap=cfg.get("final_logit_softcapping", 30.0))


def _to_hf(c: DecoderConfig) -> dict:
    require(c, qk_norm=False, rope_local_theta=None)
    return dict(gemma_to_hf(c), rope_parameters=rope_to_hf(c), attn_logit_softcapping=c.attn_logit_softcap)


FAMILY = Family(model_type="gemma2", architecture="Gemma2ForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=dict(DEFAULTS, attn_logit_softcap=50.0, final_logit_softcap=30.0),
                tiny=dict(num_kv_heads=2, head_dim=16, sliding_window=4), sliding_pattern=2)
