"""Listwise rankers for learning-to-rank: a permutation-equivariant transformer over the items of a list.

COS-DPO §4.1 (LTR on MSLR-WEB10K): a 2-layer transformer scores the items of a query's list, with the weight vector
``w`` concatenated to every item's features at the first layer ("training from scratch"), or an augmentation network
``f(x, y; w) = f_ref(x, y) + g_θ(x, y, w)`` on a frozen base ranker (§A.6.3). The encoder has no positional encoding,
so a permutation of the items permutes the scores the same way; padded items are zeroed before the first layer and
masked out of every attention, so they never influence valid items, and they get score 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mojax.sharding import partitioned

__all__ = ["ListRankerConfig", "ListRanker", "AugmentedRanker", "num_params"]

# LeCun init with a plain (not truncated) normal: same variance 1/fan_in, and XLA compiles a normal sampler far
# faster than a truncated one (which recompiles per shape and dominated eager construction time on CPU).
_dense = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


@dataclasses.dataclass(frozen=True, kw_only=True)
class ListRankerConfig:
    """Configuration of :class:`ListRanker`.

    Attributes:
      num_features: F, the per-item feature width (136 for MSLR-WEB10K).
      d_model: encoder width (the paper: 64 for the W-COS network, 128 for the base model).
      num_layers: transformer encoder layers; 0 gives an item-wise MLP (one residual MLP block), much faster.
      num_heads: attention heads; must divide ``d_model``.
      mlp_dim: hidden width of each block's MLP.
      cond_dim: C, the width of the conditioning vector concatenated to every item (K for W-COS-DPO, 2K for
        T-COS-DPO); 0 for an unconditioned ranker.
      dropout: dropout rate on the attention and MLP outputs (active only with ``deterministic=False``).
    """

    num_features: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    cond_dim: int = 0
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("num_features", "d_model", "num_heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ListRankerConfig.{name} must be a positive int, got {value!r}")
        for name in ("num_layers", "cond_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ListRankerConfig.{name} must be a non-negative int, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls, num_features: int = 8, cond_dim: int = 0) -> ListRankerConfig:
        """A one-layer, width-16 preset for tests."""
        return cls(num_features=num_features, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, cond_dim=cond_dim)


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    # No module (and no RNG state) at rate 0, so deterministic models carry parameters only.
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def _maybe_drop(drop: nnx.Dropout | None, x: jax.Array, deterministic: bool) -> jax.Array:
    return x if drop is None else drop(x, deterministic=deterministic)


def _layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, scale_init=partitioned(_ones, "norm"), bias_init=partitioned(_zeros, "norm"), rngs=rngs)


class _MLPBlock(nnx.Module):
    """Pre-LN residual MLP: ``x + W₂·gelu(W₁·LN(x))``, applied item-wise."""

    def __init__(self, d_model: int, mlp_dim: int, dropout: float, rngs: nnx.Rngs):
        self.norm = _layer_norm(d_model, rngs)
        self.up = nnx.Linear(d_model, mlp_dim, kernel_init=partitioned(_dense, "embed", "mlp"),
                             bias_init=partitioned(_zeros, "mlp"), rngs=rngs)
        self.down = nnx.Linear(mlp_dim, d_model, kernel_init=partitioned(_dense, "mlp", "embed"),
                               bias_init=partitioned(_zeros, "embed"), rngs=rngs)
        self.drop = _dropout(dropout, rngs)

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        return x + _maybe_drop(self.drop, self.down(jax.nn.gelu(self.up(self.norm(x)))), deterministic)


class _EncoderBlock(nnx.Module):
    """Pre-LN transformer encoder block over the item axis with a key-padding mask, no positional encoding."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, rngs: nnx.Rngs):
        head_dim = d_model // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.norm = _layer_norm(d_model, rngs)
        qkv_init = partitioned(_dense, "embed", "heads", "head_dim")
        self.query = nnx.Param(qkv_init(rngs.params(), (d_model, num_heads, head_dim)))
        self.key = nnx.Param(qkv_init(rngs.params(), (d_model, num_heads, head_dim)))
        self.value = nnx.Param(qkv_init(rngs.params(), (d_model, num_heads, head_dim)))
        # lecun_normal on a [N, H, D] kernel would take fan-in from axis -2 only; init the out projection as the
        # [N·H, D] matrix it is and reshape.
        out = partitioned(lambda key, shape, dtype=jnp.float32: _dense(key, (num_heads * head_dim, d_model), dtype)
                          .reshape(shape), "heads", "head_dim", "embed")
        self.out = nnx.Param(out(rngs.params(), (num_heads, head_dim, d_model)))
        self.attn_drop = _dropout(dropout, rngs)
        self.mlp = _MLPBlock(d_model, mlp_dim, dropout, rngs)

    def __call__(self, x: jax.Array, where: jax.Array, deterministic: bool) -> jax.Array:
        h = self.norm(x)  # [B, L, D]
        q = jnp.einsum("BLD,DNH->BLNH", h, self.query[...])
        k = jnp.einsum("BLD,DNH->BLNH", h, self.key[...])
        v = jnp.einsum("BLD,DNH->BLNH", h, self.value[...])
        logits = jnp.einsum("BQNH,BKNH->BNQK", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        # Padded keys get the most negative finite logit: exp underflows to exactly 0 beside any valid key, and a
        # list with no valid item still gives a finite (uniform) softmax instead of NaN.
        logits = jnp.where(where[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        attn = jnp.einsum("BNQK,BKNH->BQNH", probs, v)
        x = x + _maybe_drop(self.attn_drop, jnp.einsum("BQNH,NHD->BQD", attn, self.out[...]), deterministic)
        return self.mlp(x, deterministic)


class ListRanker(nnx.Module):
    """Scores the items of lists: ``features [..., L, F] → scores [..., L]``, permutation-equivariant over L.

    ``x_i = W_in·[features_i, cond] + b`` (cond broadcast to every item), then ``num_layers`` pre-LN encoder blocks
    with a key-padding mask from ``where`` (or one residual MLP block when ``num_layers == 0``), a final LayerNorm and
    a linear scoring head. Padded items are zeroed at the input and score 0.

    Args:
      config: :class:`ListRankerConfig`.
      rngs: ``nnx.Rngs`` (a ``params`` stream; a ``dropout`` stream, or the default one, when ``dropout > 0``).
    """

    def __init__(self, config: ListRankerConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        self.input_proj = nnx.Linear(c.num_features + c.cond_dim, c.d_model,
                                     kernel_init=partitioned(_dense, "features", "embed"),
                                     bias_init=partitioned(_zeros, "embed"), rngs=rngs)
        if c.num_layers == 0:
            self.blocks = nnx.List([_MLPBlock(c.d_model, c.mlp_dim, c.dropout, rngs)])
        else:
            self.blocks = nnx.List([_EncoderBlock(c.d_model, c.num_heads, c.mlp_dim, c.dropout, rngs)
                                    for _ in range(c.num_layers)])
        self.final_norm = _layer_norm(c.d_model, rngs)
        self.head = nnx.Linear(c.d_model, 1, kernel_init=partitioned(_dense, "embed", None),
                               bias_init=partitioned(_zeros, None), rngs=rngs)

    def __call__(self, features: jax.Array, *, where: jax.Array | None = None, cond: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Item scores.

        Args:
          features: ``[..., L, F]`` item features; any leading axes are batch.
          where: ``[..., L]`` bool, True for real items (default: all real).
          cond: ``[..., C]`` conditioning vector (e.g. the weights w), required iff ``config.cond_dim > 0``.
          deterministic: False enables dropout.
        Returns:
          ``[..., L]`` float32 scores, 0 at padded items.
        """
        c = self.config
        features = jnp.asarray(features)
        if features.ndim < 2 or features.shape[-1] != c.num_features:
            raise ValueError(f"features must be [..., L, {c.num_features}], got shape {features.shape}")
        lead, num_items = features.shape[:-2], features.shape[-2]
        if where is None:
            where = jnp.ones(features.shape[:-1], bool)
        where = jnp.asarray(where)
        if where.shape != features.shape[:-1]:
            raise ValueError(f"where must have shape {features.shape[:-1]}, got {where.shape}")
        where = where.astype(bool)
        x = jnp.where(where[..., None], features, 0).astype(jnp.float32)  # garbage in padded slots never enters
        if c.cond_dim:
            if cond is None:
                raise ValueError(f"this ranker is conditioned (cond_dim={c.cond_dim}): pass cond [..., C]")
            cond = jnp.asarray(cond, jnp.float32)
            if cond.shape != (*lead, c.cond_dim):
                raise ValueError(f"cond must have shape {(*lead, c.cond_dim)}, got {cond.shape}")
            x = jnp.concatenate([x, jnp.broadcast_to(cond[..., None, :], (*lead, num_items, c.cond_dim))], -1)
        elif cond is not None:
            raise ValueError("cond was given but config.cond_dim == 0")
        x = x.reshape(-1, num_items, x.shape[-1])
        flat_where = where.reshape(-1, num_items)
        h = self.input_proj(x)  # [B, L, D]
        for block in self.blocks:
            h = block(h, deterministic) if c.num_layers == 0 else block(h, flat_where, deterministic)
        scores = self.head(self.final_norm(h))[..., 0]
        scores = jnp.where(flat_where, scores, 0.0)
        return scores.reshape(*lead, num_items)


class AugmentedRanker(nnx.Module):
    """Augmentation network (COS-DPO §A.6.3): ``f(x, y; w) = stop_gradient(f_ref(x, y)) + g_θ(x, y, w)``.

    ``self.base`` is the frozen reference ranker (unconditioned, always deterministic; its scores are
    stop-gradient so it receives exactly zero gradient) and ``self.delta`` the trainable, conditioned correction.
    Train with ``wrt=AugmentedRanker.trainable`` (= ``nnx.All(nnx.Param, nnx.PathContains("delta"))``) so the
    optimizer never touches the base — a zero gradient alone would not stop weight decay from moving it.

    Args:
      base: the reference :class:`ListRanker` (``cond_dim == 0``).
      delta: the correction :class:`ListRanker` (usually ``cond_dim = K``) with the same ``num_features``.
      zero_init_delta: zero ``delta``'s scoring head (kernel and bias) so ``g ≡ 0`` and ``f = f_ref`` at init; the
        head still gets gradient (∂g/∂W_head = the final features), and the rest of ``delta`` from step 2 on.
    """

    trainable = nnx.All(nnx.Param, nnx.PathContains("delta"))

    def __init__(self, base: ListRanker, delta: ListRanker, *, zero_init_delta: bool = True):
        if base.config.num_features != delta.config.num_features:
            raise ValueError(f"base and delta must read the same features: {base.config.num_features} != "
                             f"{delta.config.num_features}")
        if base.config.cond_dim:
            raise ValueError("the base ranker must be unconditioned (cond_dim == 0); conditioning goes to delta")
        self.base = base
        self.delta = delta
        if zero_init_delta:
            delta.head.kernel[...] = jnp.zeros_like(delta.head.kernel[...])
            delta.head.bias[...] = jnp.zeros_like(delta.head.bias[...])

    def __call__(self, features: jax.Array, *, where: jax.Array | None = None, cond: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """Scores ``[..., L]``: frozen base plus correction (0 at padded items); arguments as :class:`ListRanker`."""
        ref = jax.lax.stop_gradient(self.base(features, where=where, deterministic=True))
        return ref + self.delta(features, where=where, cond=cond, deterministic=deterministic)

    def reference_scores(self, features: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
        """``f_ref`` alone (stop-gradient), e.g. for the reference term of listwise DPO."""
        return jax.lax.stop_gradient(self.base(features, where=where, deterministic=True))


def num_params(module_or_state: nnx.Module | nnx.State | Any, filter: Any = nnx.Param) -> int:
    """Number of scalar parameters selected by ``filter`` in a module or (possibly abstract) ``nnx.State``.

    E.g. ``num_params(ranker)``, ``num_params(model, AugmentedRanker.trainable)``, or on ``nnx.eval_shape`` output to
    count a model that was never materialised. The paper reports parameter counts beside training time (COS-DPO §4).
    """
    if isinstance(module_or_state, nnx.Module):
        state = nnx.state(module_or_state, filter)
    elif isinstance(module_or_state, nnx.State):
        state = nnx.filter_state(module_or_state, filter)
    else:
        raise TypeError(f"num_params takes an nnx.Module or nnx.State, got {type(module_or_state).__name__}")
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state)))
