"""SPO's decision on the paper's terms: per-dimension win rates with intervals over training seeds, fronts and their
hypervolume, and the computed :class:`experiments._report.Verdict`.

Host-side NumPy/SciPy only. The unit of replication is a training seed (its own pairs, batch order, held-out
prompts and sampling noise; π_0 is shared): each seed gives one win rate per comparison and dimension (paired
samples on that seed's held-out prompts, ties ½), and the interval is Student's t over the seeds' values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from experiments._report import Verdict
from mojax.metrics import hypervolume

__all__ = ["CLAIM", "decide", "front_hypervolumes", "paired_win_rates", "t_interval"]

CLAIM = ("SPO's responses win more than half of the paired comparisons against DPO-Mix and against S-DPO on both "
         "preference dimensions (the paper reports SPO's win rates against its baselines per dimension, e.g. 87.3% "
         "against DPO-Mix on HH-helpful, and that it outperforms S-DPO).")


def paired_win_rates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-dimension win rate of A over B on the same prompts, ties ½: ``[N, K]`` and ``[N, K]`` → ``[K]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"scores must both be [N, K], got {a.shape} and {b.shape}")
    return (a > b).mean(0) + 0.5 * (a == b).mean(0)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95, axis: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, lo, hi)`` along ``axis``: Student's t interval of the mean (n − 1 degrees of freedom).

    With one value the interval is unbounded (``lo = −inf``, ``hi = +inf``): one seed cannot bound a mean.
    """
    x = np.asarray(values, np.float64)
    n = x.shape[axis]
    mean = x.mean(axis)
    if n < 2:
        return mean, np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(axis, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def decide(win: np.ndarray, baselines: Sequence[str], dimensions: Sequence[str], *, level: float = 0.95,
           claim: str = CLAIM) -> tuple[Verdict, dict]:
    """The verdict from per-seed win rates ``win [S, B, K]`` of SPO against ``baselines`` on ``dimensions``.

    Rule (each comparison a t interval over the S seeds at ``level``): **held** when every comparison's interval
    lies above ½; **did_not_hold** when some comparison's interval lies below ½; otherwise **inconclusive** (also
    with fewer than 2 seeds). The verdict's ``ci`` is the interval of the comparison with the lowest mean win rate,
    which is the one that decides.

    Returns:
      ``(verdict, table)``; ``table[baseline][dimension] = {"mean", "lo", "hi", "vs_half", "per_seed"}`` with
      ``vs_half`` = "above" / "below" / "undecided" (where that comparison's interval lies relative to ½).
    """
    win = np.asarray(win, np.float64)
    if win.ndim != 3 or win.shape[1:] != (len(baselines), len(dimensions)):
        raise ValueError(f"win must be [seeds, {len(baselines)}, {len(dimensions)}], got {win.shape}")
    mean, lo, hi = t_interval(win, level)
    bound = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731 (one seed: no interval)
    each = np.where(lo > 0.5, "above", np.where(hi < 0.5, "below", "undecided"))
    table = {b: {d: {"mean": float(mean[i, k]), "lo": bound(lo[i, k]), "hi": bound(hi[i, k]),
                     "vs_half": str(each[i, k]), "per_seed": win[:, i, k].tolist()} for k, d in enumerate(dimensions)}
             for i, b in enumerate(baselines)}
    i, k = np.unravel_index(np.argmin(mean), mean.shape)
    weakest = f"{baselines[i]} on {dimensions[k]}"
    if win.shape[0] < 2:
        result = "inconclusive"
    elif np.all(lo > 0.5):
        result = "held"
    elif np.any(hi < 0.5):
        result = "did_not_hold"
    else:
        result = "inconclusive"
    below = [f"{baselines[a]} on {dimensions[c]}" for a, c in zip(*np.nonzero(hi < 0.5))]
    test = (f"per-dimension win rate of SPO (paired samples on held-out prompts, ties 1/2) against each of "
            f"{', '.join(baselines)}; {level:.0%} Student-t interval over {win.shape[0]} training seeds; held if "
            f"every interval lies above 0.5, did not hold if any lies below 0.5, else inconclusive. Weakest "
            f"comparison: {weakest}" + (f"; below 0.5: {', '.join(below)}" if below else ""))
    ci = (float(lo[i, k]), float(hi[i, k])) if np.isfinite(lo[i, k]) else None
    return Verdict(claim=claim, result=result, test=test, seeds=int(win.shape[0]), ci=ci), table


def front_hypervolumes(families: Mapping[str, np.ndarray], reference: Sequence[float]) -> dict[str, np.ndarray]:
    """Hypervolume (maximisation, w.r.t. ``reference``) of each family's points ``[S, n, K]`` per seed → ``[S]``."""
    ref = np.asarray(reference, np.float64)
    return {name: np.array([float(hypervolume(np.asarray(p, np.float64), ref, maximize=True)) for p in pts])
            for name, pts in families.items()}
