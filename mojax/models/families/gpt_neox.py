"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): parallel residual, partial rotary, LayerNorm, untied ``embed_out``.

``query_key_value [3·H·h, D]`` is laid out per head: output row ``n·3h + j`` is head ``n``'s q (``j < h``),
k (``h ≤ j < 2h``) or v, i.e. ``W.reshape(H, 3, h, D)``.
"""

from __future__ import annotations

import numpy as np

from mojax.models.families._base import (SAME, VECTOR, Family, Transform, linear, require, rope_from_hf,
                                         rope_to_hf)


def _qkv_to_mojax(w, shapes):  # [3Hh, D] -> 3 x [D, H, h]
    H, h = shapes[0][1:]
    w = w.reshape(H, 3, h, -1)
    return [w[:, j].transpose(2, 0, 1) for j in range(3)]


def _qkv_bias_to_mojax(b, shapes):  # [3Hh] -> 3 x [H, h]
    H, h = shapes[0]
    return [b.reshape(H, 3, h)[:, j] for j in range(3)]


QKV = Transform(_qkv_to_mojax, lambda ks: np.stack([k.transpose(1, 2, 0) for k in ks], axis=1).reshape(
    -1, ks[0].shape[0]))
QKV_BIAS = Transform(_qkv_bias_to_mojax, lambda bs: np.stack(bs, axis=1).reshape(-1))

_L = "gpt_neox.layers.{i}."
_B = "blocks.{i}."
_QKV = tuple(_B + f"attn.{n}" for n in ("q_proj", "k_proj", "v_proj"))

WEIGHTS = (
    ("gpt_neox.embed_in.weight", "embed.embedding", SAME),
    (_L + "attention.query_key_value.weight", tuple(p + ".kernel" for p in _QKV), QKV),
    (_L + "attention.query_key_value.bias", tuple(p + ".bias" for p in _QKV), QKV_BIAS),
    (_L + "attention.dense.weight", _B + "attn.o_proj.kernel", linear(n_in=2)),
    (_L + "attention.dense.bias", _B + "attn.o_proj.bias", VECTOR),
    (_L + "mlp.dense_h_to_4h.weight", _B + "mlp.up_proj.kernel", linear()),
    (_L + "mlp.dense_h_to_4h.bias", _B + "mlp.up_proj.bias", VECTOR),
    (_L + "mlp.dense_4h_to_h.weight", _B + "mlp.down_proj.kernel", linear()),
    (_L + "mlp.dense_4h_to_h.bias", _B + "mlp.down_proj.bias", VECTOR),
    (_L + "input_layernorm.weight", _B + "attn_norm.scale", VECTOR),
    (_L + "input_layernorm.bias", _B + "attn_norm.bias", VECTOR),
    (_L + "post_attention_layernorm.weight", _B + "mlp_norm.scale", VECTOR),
    (_L + "post_attention_layernorm.bias", _B + "mlp_norm.bias", VECTOR),
    ("gpt_neox.final_layer_norm.weight", "final_norm.scale", VECTOR),
    ("gpt_neox.final_layer_norm.bias", "final_norm.bias", VECTOR),
    ("embed_out.weight", "lm_head.kernel", linear()),
)

DEFAULTS = dict(norm="layernorm", norm_eps=1e-5, activation="gelu", gated_mlp=False, rotary_pct=0.25,
                parallel_residual=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True)


def _from_hf(cfg: dict) -> dict:
    theta, scaling, params = rope_from_hf(cfg)
    bias = cfg.get("attention_bias", True)
    return dict(DEFAULTS, vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
                num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                mlp_dim=cfg["intermediate_size"], max_positions=cfg.get("max_position_embeddings", 2048),
                norm_eps=cfg.get("layer_norm_eps", 1e-5), activation=cfg.get("hidden_act", "gelu"),
                rope_theta=theta, rope_scaling=scaling,
                rotary_pct=params.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25)),
                parallel_residual=cfg.get("use_parallel_residual", True), qkv_bias=bias, attn_out_bias=bias)


def _to_hf(c) -> dict:
    require(c, norm="layernorm", gated_mlp=False, positional="rope", mlp_bias=True, sliding_window=None,
            num_kv_heads=(None, c.num_heads), head_dim=(None, c.d_model // c.num_heads), layer_types=None,
            qk_norm=False, scale_embeddings=False, query_pre_attn_scalar=None, attn_logit_softcap=None,
            final_logit_softcap=None, sandwich_norms=False, rope_local_theta=None)
    if c.qkv_bias != c.attn_out_bias:
        raise ValueError("gpt_neox export needs qkv_bias == attn_out_bias (HF has one attention_bias flag)")
    return dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_dim,
                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, hidden_act=c.activation,
                max_position_embeddings=c.max_positions, layer_norm_eps=c.norm_eps,
                use_parallel_residual=c.parallel_residual,
                rope_parameters=dict(rope_to_hf(c), partial_rotary_factor=c.rotary_pct),
                attention_bias=c.qkv_bias, hidden_dropout=0.0, attention_dropout=0.0)


FAMILY = Family(model_type="gpt_neox", architecture="GPTNeoXForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=DEFAULTS, prefix="gpt_neox.", tied_head="embed_out.weight")
