"""Small solvers used by the training objectives (pure array math, jittable)."""

from mojax.solvers.min_norm import (
    ema_update,
    gram_min_norm_weights,
    min_norm_kkt_residual,
    min_norm_weights,
    normalize_rows,
)

__all__ = [
    "ema_update",
    "gram_min_norm_weights",
    "min_norm_kkt_residual",
    "min_norm_weights",
    "normalize_rows",
]
