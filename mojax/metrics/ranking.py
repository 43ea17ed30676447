"""NDCG@k for ranked lists (JAX).

The list is the last axis and any leading axes are batch, as in the losses (rax: ``rax/_src/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ndcg"]


def ndcg(
    scores: jax.Array,
    labels: jax.Array,
    *,
    k: int | None = 10,
    where: jax.Array | None = None,
    reduce_fn: Callable[[jax.Array], jax.Array] | None = jnp.mean,
    empty_value: float = 0.0,
) -> jax.Array:
    """Normalised discounted cumulative gain at cutoff ``k``.

    .. math::

        \\mathrm{DCG@k} = \\sum_{r=1}^{\\min(k, L)} \\frac{2^{\\psi_{\\pi(r)}} - 1}{\\log_2(1 + r)}, \\qquad
        \\mathrm{NDCG@k} = \\frac{\\mathrm{DCG@k}}{\\mathrm{IDCG@k}}

    where π orders the valid items by descending score and IDCG@k is the DCG@k of the ideal order (labels
    descending). Ties in ``scores`` are broken by item index (the earlier item ranks higher), so the metric is
    deterministic and does not reward constant scores. Masked items (``where`` False) are removed before ranking:
    they neither take a rank nor contribute gain. A list whose IDCG is 0 (no valid item with positive label) has no
    defined NDCG and gets ``empty_value`` (default 0, as in rax / TF-Ranking; LightGBM uses 1). Used for the
    MSLR-WEB10K evaluation of COS-DPO (docs/methods/cos-dpo.md).

    Args:
      scores: ``[..., L]`` model scores.
      labels: ``[..., L]`` graded relevance ψ ≥ 0.
      k: cutoff (``None`` for the whole list); must be >= 1.
      where: optional ``[..., L]`` boolean validity mask.
      reduce_fn: reduction over lists (default mean); ``None`` returns per-list values ``[...]``.
      empty_value: NDCG assigned to lists with zero ideal DCG.

    Returns:
      Scalar (or ``[...]`` with ``reduce_fn=None``).

    Example:
      >>> float(ndcg(jnp.array([3.0, 2.0, 1.0]), jnp.array([2.0, 1.0, 0.0])))
      1.0
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels)
    if scores.shape != labels.shape or scores.ndim < 1:
        raise ValueError(f"scores and labels must share a shape [..., L], got {scores.shape} and {labels.shape}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    dtype = jnp.result_type(scores.dtype, labels.dtype, jnp.float32)
    scores = scores.astype(dtype)
    labels = labels.astype(dtype)
    valid = jnp.ones(scores.shape, bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), scores.shape)
    num_items = scores.shape[-1]
    position = jnp.arange(num_items)
    gains = jnp.where(valid, 2.0**labels - 1.0, 0.0)
    # Valid items first, then descending score, then ascending index (lexsort is stable; last key is primary).
    index = jnp.broadcast_to(position, scores.shape)
    order = jnp.lexsort((index, -scores, ~valid), axis=-1)
    discounts = 1.0 / jnp.log2(position + 2.0)
    if k is not None:
        discounts = jnp.where(position < k, discounts, 0.0)
    discounts = discounts.astype(dtype)
    dcg = jnp.sum(jnp.take_along_axis(gains, order, axis=-1) * discounts, axis=-1)
    # Masked items sort last (−inf) and then count 0, so they never displace a valid item from the ideal top k.
    ideal = -jnp.sort(-jnp.where(valid, gains, -jnp.inf), axis=-1)
    ideal = jnp.where(jnp.isfinite(ideal), ideal, 0.0)
    idcg = jnp.sum(ideal * discounts, axis=-1)
    values = jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0), jnp.asarray(empty_value, dtype))
    return values if reduce_fn is None else reduce_fn(values)
