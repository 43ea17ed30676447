"""Gemma 3 text (``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``): Gemma 2's layout and switches plus
RMSNorm ``(1 + g)`` on each head of q and k, a separate rotary base for the sliding layers (``rope_parameters``
per layer type; v4 ``rope_local_base_freq``), one global layer in ``sliding_window_pattern`` (6), and no attention
soft-capping (transformers' Gemma 3 ignores ``attn_logit_softcapping``; so does mojax, to give its logits).
"""

from __future__ import annotations

from mojax.models.config import DecoderConfig
from mojax.models.families._base import Family, require, rope_from_hf, rope_to_hf
from mojax.models.families.gemma2 import DEFAULTS, WEIGHTS, gemma_from_hf, gemma_to_hf


def _from_hf(cfg: dict) -> dict:
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:  # v5: one entry per layer type
        full = {"rope_theta": 1_000_000.0, **(params.get("full_attention") or {})}
        local = {"rope_theta": 10_000.0, **(params.get("sliding_attention") or {})}
    else:  # v4: rope_theta (+ rope_scaling) for global layers, rope_local_base_freq for local ones
        full = {"rope_theta": cfg.get("rope_theta", 1_000_000.0), **(cfg.get("rope_scaling") or {}), **params}
        local = {"rope_theta": cfg.get("rope_local_base_freq", 10_000.0)}
    if local.get("rope_type", "default") != "default":
        raise ValueError("gemma3_text with a scaled rope on the sliding layers is not supported")
    theta, scaling, _ = rope_from_hf(cfg, full)
    return gemma_from_hf(cfg, 6, qk_norm=True, rope_theta=theta, rope_scaling=scaling,
                         rope_local_theta=float(local["rope_theta"]))


def _to_hf(c: DecoderConfig) -> dict:
    require(c, qk_norm=True, attn_logit_softcap=None)
    local = c.rope_local_theta if c.rope_local_theta is not None else c.rope_theta
    if c.rope_local_theta is None and c.rope_scaling is not None:
        raise ValueError("gemma3_text export needs rope_local_theta when the rope is scaled (HF's local layers are "
                         "unscaled)")
    rope = {"full_attention": rope_to_hf(c), "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    return dict(gemma_to_hf(c), rope_parameters=rope)


FAMILY = Family(model_type="gemma3_text", architecture="Gemma3ForCausalLM", weights=WEIGHTS, from_hf=_from_hf,
                to_hf=_to_hf, defaults=dict(DEFAULTS, qk_norm=True, rope_theta=1_000_000.0,
                                            rope_local_theta=10_000.0),
                tiny=dict(num_kv_heads=2, head_dim=16, sliding_window=4), sliding_pattern=6)
