"""Multi-head reward models: a bias-free linear head on the last non-pad token's hidden state.

MORE (Zeng et al., "Diversified preferences ... MORE", docs/methods/more.md): ``r(x, y) = Wᵀ h(x, y)`` with ``h`` the backbone's
final hidden state at the last real token of prompt + response. ``features`` and ``head`` are exposed separately so
MORE can take head-only gradients ``g_k = ∇_W L_k`` on stop-gradient features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mojax.sharding import partitioned

__all__ = ["RewardModel", "last_token_index", "gather_last_token"]


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of the last position whose mask is nonzero, per row: ``[..., T] → [...]`` int32.

    Works for right padding (``1…1 0…0``), left padding (``0…0 1…1``) and both at once. A row with no real token
    gets index ``T − 1`` (its reward is then meaningless but finite; callers mask such rows).
    """
    attention_mask = jnp.asarray(attention_mask)
    t = attention_mask.shape[-1]
    # argmax returns the first maximum, so argmax over the reversed mask finds the last real token.
    from_end = jnp.argmax(jnp.flip(attention_mask != 0, axis=-1), axis=-1)
    return (t - 1 - from_end).astype(jnp.int32)


def gather_last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """``hidden[..., last_token_index(mask), :]``: ``[..., T, D], [..., T] → [..., D]``."""
    idx = last_token_index(attention_mask)
    return jnp.take_along_axis(hidden, idx[..., None, None], axis=-2)[..., 0, :]


class RewardModel(nnx.Module):
    """K reward heads on one backbone: ``r_k(x, y) = w_kᵀ h_last(x, y)``, ``W ∈ R^{D×K}``, no bias.

    Input may carry any leading axes (e.g. ``[B, N, T]`` pairs): they are flattened for the backbone and restored.

    Args:
      backbone: a module with ``__call__(input_ids [B, T], *, attention_mask, positions, return_hidden=True,
        use_lora)`` returning hidden states ``[B, T, D]`` (``mojax.models.Decoder``).
      num_heads: K, the number of reward heads (objectives / datasets).
      d_model: D, the backbone's hidden width.
      head_init_std: std of the head's normal init; 0.02 is transformers' ``initializer_range`` for the ``score``
        head of ``*ForSequenceClassification`` models (the heads MORE and TRL reward models start from).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, backbone: Any, num_heads: int = 1, *, d_model: int, head_init_std: float = 0.02,
                 rngs: nnx.Rngs):
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        backbone_d = getattr(getattr(backbone, "config", None), "d_model", None)
        if backbone_d is not None and backbone_d != d_model:
            raise ValueError(f"d_model={d_model} != backbone d_model={backbone_d}")
        self.backbone = backbone
        self.num_heads = num_heads
        self.d_model = d_model
        self.score = nnx.Linear(d_model, num_heads, use_bias=False,
                                kernel_init=partitioned(jax.nn.initializers.normal(head_init_std), "embed",
                                                        "objectives"), rngs=rngs)

    def features(self, input_ids: jax.Array, *, attention_mask: jax.Array, use_lora: bool = True) -> jax.Array:
        """Final hidden state at the last non-pad token: ``[..., T] → [..., D]`` float32.

        Args:
          input_ids: ``[..., T]`` int tokens (left or right padded).
          attention_mask: ``[..., T]``, nonzero at real tokens.
        """
        input_ids = jnp.asarray(input_ids)
        attention_mask = jnp.asarray(attention_mask)
        if input_ids.ndim < 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids [..., B, T] and attention_mask of the same shape expected, got "
                             f"{input_ids.shape} and {attention_mask.shape}")
        lead, t = input_ids.shape[:-1], input_ids.shape[-1]
        flat_ids = input_ids.reshape(-1, t)
        flat_mask = attention_mask.reshape(-1, t)
        # Positions count real tokens only, so a left-padded sequence sees the positions of its right-padded twin.
        positions = jnp.maximum(jnp.cumsum(flat_mask != 0, axis=-1) - 1, 0).astype(jnp.int32)
        hidden = self.backbone(flat_ids, attention_mask=flat_mask, positions=positions, return_hidden=True,
                               use_lora=use_lora)
        feats = gather_last_token(hidden, flat_mask).astype(jnp.float32)  # [B', D]
        return feats.reshape(*lead, feats.shape[-1])

    def head(self, features: jax.Array) -> jax.Array:
        """The linear heads alone: ``[..., D] → [..., K]`` (MORE's head-only gradients go through this)."""
        features = jnp.asarray(features)
        if features.shape[-1] != self.d_model:
            raise ValueError(f"features must end in d_model={self.d_model}, got shape {features.shape}")
        return self.score(features)

    def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array, use_lora: bool = True) -> jax.Array:
        """Rewards ``[..., K]`` for token sequences ``[..., T]``."""
        return self.head(self.features(input_ids, attention_mask=attention_mask, use_lora=use_lora))
