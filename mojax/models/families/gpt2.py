"""GPT-2 (``GPT2LMHeadModel``): ``Conv1D`` weights are already ``(in, out)``; ``c_attn [D, 3D]`` is q | k | v
along its output axis; learned positions, LayerNorm, tied embeddings."""

from __future__ import annotations

from mojax.models.families._base import SAME, VECTOR, Family, linear, require, reshape, split

_L = "transformer.h.{i}."
_B = "blocks.{i}."
_QKV = tuple(_B + f"attn.{n}" for n in ("q_proj", "k_proj", "v_proj"))

WEIGHTS = (
    ("transformer.wte.weight", "embed.embedding", SAME),
    ("transformer.wpe.weight", "pos_embed.embedding", SAME),
    (_L + "attn.c_attn.weight", tuple(p + ".kernel" for p in _QKV), split(n_in=1)),
    (_L + "attn.c_attn.bias", tuple(p + ".bias" for p in _QKV), split(n_in=0)),
    (_L + "attn.c_proj.weight", _B + "attn.o_proj.kernel", reshape(n_in=2)),
    (_L + "attn.c_proj.bias", _B + "attn.o_proj.bias", VECTOR),
    (_L + "mlp.c_fc.weight", _B + "mlp.up_proj.kernel", SAME),
    (_L + "mlp.c_fc.bias", _B + "mlp.up_proj.bias", VECTOR),
    (_L + "mlp.c_proj.weight", _B + "mlp.down_proj.kernel", SAME),
    (_L + "mlp.c_proj.bias", _B + "mlp.down_proj.bias", VECTOR),
    (_L + "ln_1.weight", _B + "attn_norm.scale", VECTOR),
    (_L + "ln_1.bias", _B + "attn_norm.bias", VECTOR),
    (_L + "ln_2.weight", _B + "mlp_norm.scale", VECTOR),
    (_L + "ln_2.bias", _B + "mlp_norm.bias", VECTOR),
    ("transformer.ln_f.weight", "final_norm.scale", VECTOR),
    ("transformer.ln_f.bias", "final_norm.bias", VECTOR),
    ("lm_head.weight", "lm_head.kernel", linear()),
)

DEFAULTS = dict(norm="layernorm", norm_eps=1e-5, activation="gelu_new", gated_mlp=False, positional="learned",
                qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True)


def _from_hf(cfg: dict) -> dict:
    if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("gpt2 configs with scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True "
                         "are not supported")
    if cfg.get("add_cross_attention", False):
        raise ValueError("gpt2 with add_cross_attention=True (encoder-decoder) is not supported")
    d = cfg.get("n_embd", 768)
    return dict(DEFAULTS, vocab_size=cfg["vocab_size"], d_model=d, num_layers=cfg.get("n_layer", 12),
                num_heads=cfg.get("n_head", 12), mlp_dim=cfg.get("n_inner") or 4 * d,
                max_positions=cfg.get("n_positions", 1024), norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                activation=cfg.get("activation_function", "gelu_new"),
                tie_embeddings=cfg.get("tie_word_embeddings", True))


def _to_hf(c) -> dict:
    require(c, norm="layernorm", gated_mlp=False, positional="learned", qkv_bias=True, attn_out_bias=True,
            mlp_bias=True, parallel_residual=False, num_kv_heads=(None, c.num_heads),
            head_dim=(None, c.d_model // c.num_heads), sliding_window=None, layer_types=None, qk_norm=False,
            scale_embeddings=False, query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None,
            sandwich_norms=False)
    return dict(vocab_size=c.vocab_size, n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads,
                n_inner=c.mlp_dim, n_positions=c.max_positions, layer_norm_epsilon=c.norm_eps,
                activation_function=c.activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


FAMILY = Family(model_type="gpt2", architecture="GPT2LMHeadModel", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=DEFAULTS, prefix="transformer.")
