"""Expected calibration error with equal-width bins (JAX)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["expected_calibration_error"]


def expected_calibration_error(
    probs: jax.Array,
    labels: jax.Array,
    *,
    num_bins: int = 10,
    where: jax.Array | None = None,
) -> jax.Array:
    """Expected calibration error of predicted probabilities for binary outcomes.

    .. math::

        \\mathrm{ECE} = \\sum_{m=1}^{M} \\frac{|B_m|}{N}\\, \\big|\\mathrm{acc}(B_m) - \\mathrm{conf}(B_m)\\big|
                      = \\frac{1}{N} \\sum_m \\Big|\\sum_{i \\in B_m} y_i - \\sum_{i \\in B_m} p_i\\Big|

    with M equal-width bins ``B_1 = [0, 1/M]``, ``B_m = ((m−1)/M, m/M]``, ``acc`` the mean outcome and ``conf`` the mean
    probability in the bin (docs/methods/more.md; binning and formula as in MORE's released ``calibration_error``,
    ``np.searchsorted`` on the inner edges). For a reward model pass ``probs = σ(r(x, y_a) − r(x, y_b))`` and
    ``labels = 1`` where ``y_a`` is the preferred response. For the classification-style variant pass
    ``max(p, 1 − p)`` and whether the predicted side was right. Probabilities outside [0, 1] fall in the end bins.

    Args:
      probs: predicted probabilities of the positive outcome, any shape ``[...]``.
      labels: outcomes in {0, 1} (or soft labels in [0, 1]), same shape.
      num_bins: M (static), >= 1. The paper reports 10; 5 and 20 also.
      where: optional boolean mask of the same shape; masked entries are ignored. All masked gives 0.

    Returns:
      Scalar ECE in [0, 1].
    """
    probs = jnp.asarray(probs)
    labels = jnp.asarray(labels)
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels must have the same shape, got {probs.shape} and {labels.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    dtype = jnp.result_type(probs.dtype, jnp.float32)
    shape = probs.shape
    probs = probs.astype(dtype).reshape(-1)
    labels = labels.astype(dtype).reshape(-1)
    if where is None:
        weight = jnp.ones_like(probs)
    else:
        weight = jnp.broadcast_to(jnp.asarray(where, bool), shape).reshape(-1).astype(dtype)
    inner_edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=dtype)[1:-1]
    bins = jnp.searchsorted(inner_edges, probs, side="left")  # p on an edge goes to the lower bin: (a, b]
    sum_probs = jax.ops.segment_sum(weight * probs, bins, num_segments=num_bins)
    sum_labels = jax.ops.segment_sum(weight * labels, bins, num_segments=num_bins)
    total = jnp.sum(weight)
    return jnp.sum(jnp.abs(sum_labels - sum_probs)) / jnp.where(total > 0, total, 1.0)
