"""Paired statistics of the Stable PO experiment: bootstrap over held-out problems (paired by seed and problem),
an exact McNemar test pooled over seeds, and the verdict decided from them. NumPy/SciPy only.

Layout: every per-problem quantity is ``[S, P]`` — S training seeds, the same P held-out problems for every seed
and method — so two methods are compared pair by pair (same seed, same problem).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

__all__ = ["CHOSEN_TOL", "decide", "mcnemar", "paired_bootstrap", "seed_means"]

# "The chosen log-prob did not fall" tolerates this many nats below π_0 (held-out mean; evaluation noise of a policy
# that barely moved).
CHOSEN_TOL = 0.05


def paired_bootstrap(diff: np.ndarray, *, n_boot: int = 4000, level: float = 0.95, seed: int = 0
                     ) -> dict[str, float]:
    """Mean of a paired difference ``[S, P]`` and its percentile bootstrap interval.

    Each resample draws P problem indices with replacement and keeps every seed's value at those problems (the
    problems are the sampling unit shared by all seeds; the seeds are fixed), then averages over seeds × problems.

    Returns:
      ``{"mean", "lo", "hi", "se"}`` (``se``: bootstrap standard deviation).
    """
    d = np.asarray(diff, np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"diff must be [seeds, problems >= 2], got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("diff has non-finite entries")
    rng = np.random.default_rng(seed)
    per_problem = d.mean(0)  # the seed average at each problem: resampling problems resamples these
    idx = rng.integers(0, d.shape[1], size=(n_boot, d.shape[1]))
    boots = per_problem[idx].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "se": float(boots.std(ddof=1))}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test of two methods' correctness ``[S, P]`` (bool), discordant pairs pooled over seeds.

    ``a_only``: pairs A got right and B wrong; ``b_only`` the reverse; ``p``: two-sided exact binomial p-value of
    ``a_only`` out of ``a_only + b_only`` at ½ (1.0 when there is no discordant pair).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def seed_means(x: np.ndarray) -> list[float]:
    """Per-seed means of ``[S, P]``."""
    return [float(v) for v in np.asarray(x, np.float64).mean(1)]


def decide(chosen: dict[str, float], accuracy: dict[str, float], *, tol: float = CHOSEN_TOL) -> dict[str, Any]:
    """The verdict on "Stable PO keeps the chosen log-prob from falling and gives higher exact match than DPO".

    Args:
      chosen: :func:`paired_bootstrap` of Stable PO's held-out Δ chosen log-prob (final − π_0) ``[S, P]``.
      accuracy: :func:`paired_bootstrap` of Stable PO's exact match minus DPO's ``[S, P]``.

    Both parts at 95 %: the chosen log-prob "holds" when the interval's lower end is ≥ −tol, "falls" when its upper
    end is < −tol; exact match is "higher" when the difference's interval is above 0, "lower" when below.
    ``held``: holds and higher; ``did_not_hold``: falls or lower; otherwise ``inconclusive``.
    """
    holds, falls = chosen["lo"] >= -tol, chosen["hi"] < -tol
    higher, lower = accuracy["lo"] > 0, accuracy["hi"] < 0
    if holds and higher:
        result = "held"
    elif falls or lower:
        result = "did_not_hold"
    else:
        result = "inconclusive"
    return {"result": result, "chosen_holds": bool(holds), "chosen_falls": bool(falls),
            "accuracy_higher": bool(higher), "accuracy_lower": bool(lower)}
