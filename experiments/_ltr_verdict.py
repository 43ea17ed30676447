"""COS-DPO learning-to-rank across seeds: the vertex analysis, per-seed summaries with intervals, the verdict.

Host-side NumPy/SciPy on measured fronts (``metrics.json``'s schema, :mod:`experiments.cos_dpo_ltr`); nothing trains.
The verdict is computed from the per-seed hypervolume differences, never written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from experiments._report import Verdict
from mojax.simplex import vertex_indices

LEVEL = 0.95  # two-sided level of every interval
MIN_SEEDS = 3  # fewer seeds give no interval worth deciding on: the verdict is then "inconclusive"

CLAIM = ("One W-COS-DPO model conditioned on w reaches a higher hypervolume of the auxiliary objectives' front "
         "than DPO-LS's 11 dedicated runs (COS-DPO Table 1 / Fig. 2), here at a training budget of {budget:.3g} "
         "DPO-LS runs.")
TEST = ("per seed, the relative hypervolume difference (HV(W-COS-DPO) − HV(DPO-LS)) / HV(DPO-LS) on the test "
        "queries (reference point 0, same 11 weights); {level:.0%} Student-t interval over seeds: held if it lies "
        "above 0, did not hold if it lies below 0, inconclusive if it contains 0 or fewer than {min_seeds} seeds ran")


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the Student-t interval of the mean of ``values`` (``nan`` bounds for fewer than 2)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def vertex_analysis(weights: np.ndarray, front: np.ndarray, ls_front: np.ndarray) -> dict[str, Any]:
    """How a method's vertex points compare with DPO-LS's dedicated vertex runs.

    Returns ``gap`` (mean over k of DPO-LS's objective-k NDCG at e_k minus the method's: > 0 = the method falls
    short at the vertices), ``gaps`` (per k) and ``nearest_ls_weight``: for each vertex e_k, the DPO-LS weight whose
    front point is nearest (Euclidean) to the method's point at e_k — ``e_k`` itself for a map that reaches the
    vertex, an interior weight for a map shrunk inward.
    """
    weights, front, ls_front = (np.asarray(a, np.float64) for a in (weights, front, ls_front))
    gaps, nearest = [], []
    for k, v in enumerate(vertex_indices(weights)):
        gaps.append(float(ls_front[v, k] - front[v, k]))
        # rounded: the weights arrive as float32 (0.9 → 0.89999998), and this is a label
        nearest.append(np.round(weights[int(np.argmin(np.linalg.norm(ls_front - front[v], axis=-1)))], 6).tolist())
    return {"gap": float(np.mean(gaps)), "gaps": gaps, "nearest_ls_weight": nearest}


def seed_summary(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per method, over seeds: HV, its relative difference to DPO-LS, the vertex gap, main NDCG and time.

    ``per_seed``: one ``metrics.json``-shaped dict per seed (``methods`` and, when DPO-LS ran, ``vertex``). Each
    quantity is ``{"mean", "lo", "hi", "values"}`` (Student-t, :data:`LEVEL`; ``lo``/``hi`` ``None`` for one seed);
    time is the median over seeds.
    """
    out: dict[str, Any] = {}
    for m in per_seed[0]["methods"]:
        hv = [s["methods"][m]["hypervolume"] for s in per_seed]
        entry: dict[str, Any] = {"hypervolume": _interval(hv),
                                 "main_ndcg_mean": _interval([s["methods"][m]["main_ndcg_mean"] for s in per_seed]),
                                 "train_seconds_median": float(np.median([s["methods"][m]["train_seconds"]
                                                                          for s in per_seed]))}
        if "dpo_ls" in per_seed[0]["methods"] and m != "dpo_ls":
            ls = [s["methods"]["dpo_ls"]["hypervolume"] for s in per_seed]
            entry["hv_rel_diff_to_dpo_ls"] = _interval([(a - b) / b for a, b in zip(hv, ls)])
            entry["vertex_gap"] = _interval([s["vertex"][m]["gap"] for s in per_seed])
        out[m] = entry
    return out


def _interval(values: Sequence[float]) -> dict[str, Any]:
    mean, lo, hi = t_interval(values)
    bounds = (None, None) if math.isnan(lo) else (lo, hi)  # one seed: no interval (JSON null, not NaN)
    return {"mean": mean, "lo": bounds[0], "hi": bounds[1], "values": [float(v) for v in values]}


def decide(summary: Mapping[str, Any], *, budget_runs: float, smoke: bool) -> Verdict:
    """The verdict on W-COS-DPO vs DPO-LS from :func:`seed_summary`'s relative HV difference (see :data:`TEST`)."""
    claim = CLAIM.format(budget=budget_runs)
    test = TEST.format(level=LEVEL, min_seeds=MIN_SEEDS)
    if smoke:
        return Verdict.smoke(claim)
    if "w_cos_dpo" not in summary or "hv_rel_diff_to_dpo_ls" not in summary["w_cos_dpo"]:
        return Verdict(claim=claim, result="inconclusive", test=test + " (W-COS-DPO or DPO-LS did not run)")
    d = summary["w_cos_dpo"]["hv_rel_diff_to_dpo_ls"]
    seeds = len(d["values"])
    if seeds < MIN_SEEDS:
        return Verdict(claim=claim, result="inconclusive", test=test, seeds=seeds)
    lo, hi = d["lo"], d["hi"]
    result = "held" if lo > 0 else "did_not_hold" if hi < 0 else "inconclusive"
    return Verdict(claim=claim, result=result, test=test, seeds=seeds, ci=(lo, hi))
