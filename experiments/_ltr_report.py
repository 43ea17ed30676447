"""COS-DPO learning-to-rank report: per-method metrics entries, the plots, the tables and the claim paragraph.

Everything here reads measured numbers (``metrics.json``'s schema, see :mod:`experiments.cos_dpo_ltr`) and writes
text or files; nothing trains. The claim paragraph is computed from the numbers, never written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiments._report import Verdict, command_line, plot_curves, plot_pareto_fronts, write_report
from mojax.metrics import hypervolume, pareto_front
from mojax.simplex import vertex_indices

METHOD_LABELS = {"w_cos_dpo": "W-COS-DPO", "w_cos_dpo_vc": "W-COS-DPO (vertex cover)", "dpo_ls": "DPO-LS",
                 "dpo_soup": "DPO Soup", "mo_dpo": "MO-DPO", "t_cos_dpo": "T-COS-DPO"}


def method_summary(points: np.ndarray, mains: np.ndarray, base_point: np.ndarray, *, seconds: float, params: int,
                   runs: int, steps: int, weights: np.ndarray, compile_seconds: float = 0.0) -> dict[str, Any]:
    """The metrics.json entry of one method (the front is every evaluated point, in weight order)."""
    points = np.asarray(points, np.float64)
    return {
        "hypervolume": float(hypervolume(points, np.zeros(points.shape[1]), maximize=True)),
        "hypervolume_gain": float(hypervolume(points, base_point, maximize=True)),
        "train_seconds": float(seconds),
        "compile_seconds": float(compile_seconds),
        "num_params": int(params),
        "num_runs": int(runs),
        "train_steps": int(steps),
        "main_ndcg_mean": float(np.mean(mains)),
        "main_ndcg_std": float(np.std(mains)),
        "front": points.tolist(),
        "nondominated": np.asarray(pareto_front(points, maximize=True, return_mask=True), bool).tolist(),
        "main_ndcg": np.asarray(mains).tolist(),
        "weights": np.asarray(weights).tolist(),
    }


def front_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding points of two fronts evaluated at the same weights."""
    return float(np.mean(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)))



def _ci(entry: dict[str, Any], fmt: str = ".4g") -> str:
    """``mean [lo, hi]`` of a :func:`experiments._ltr_verdict.seed_summary` interval (the mean alone for 1 seed)."""
    if entry["lo"] is None:
        return format(entry["mean"], fmt)
    return f"{entry['mean']:{fmt}} [{entry['lo']:{fmt}}, {entry['hi']:{fmt}}]"


def seed_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The over-seeds table: per method, HV, its relative difference to DPO-LS, the vertex gap, main NDCG, time."""
    rows = []
    for m, e in metrics["summary"].items():
        rows.append({"method": METHOD_LABELS[m], "HV mean [95% CI]": _ci(e["hypervolume"]),
                     "(HV − HV DPO-LS) / HV DPO-LS [95% CI]": _ci(e["hv_rel_diff_to_dpo_ls"], "+.2%")
                     if "hv_rel_diff_to_dpo_ls" in e else "–",
                     "vertex gap to DPO-LS (NDCG) [95% CI]": _ci(e["vertex_gap"], "+.4f") if "vertex_gap" in e else "–",
                     "main NDCG@10 [95% CI]": _ci(e["main_ndcg_mean"]),
                     "train s (median)": e["train_seconds_median"]})
    return rows


def write_outputs(run_dir: Path, c: Any, metrics: dict[str, Any], curves: dict[str, np.ndarray],
                  tcos_fronts: dict[str, np.ndarray], verdict: Verdict | None = None) -> None:
    """Plots (first seed) and ``report.md`` from the measured metrics."""
    results = metrics["methods"]
    names = [f"NDCG@{c.ndcg_k} {n}" for n in metrics["objectives"]]
    base_point = np.asarray(metrics["base"]["aux_ndcg"])
    fronts = {METHOD_LABELS[m]: np.asarray(r["front"]) for m, r in results.items()}
    fronts["base"] = base_point[None]
    plots = [("fronts.png", "Pareto fronts of the auxiliary objectives (test NDCG@10), all methods")]
    plot_pareto_fronts(run_dir / "fronts.png", fronts, objective_names=names,
                       title=f"COS-DPO LTR, K = {len(names)}: fronts over {c.num_weights} weights")
    if metrics["prop31"]:
        p = metrics["prop31"]
        plot_pareto_fronts(run_dir / "prop31.png", {
            f"W-COS-DPO β={c.beta:g}": np.asarray(results["w_cos_dpo"]["front"]) if "w_cos_dpo" in results
            else np.asarray(p["front_rescaled"]) * np.nan,
            f"β={c.beta_alt:g} raw": np.asarray(p["front_raw"]),
            f"β={c.beta_alt:g} rescaled to {c.beta:g}": np.asarray(p["front_rescaled"])},
            objective_names=names, title="Prop. 3.1: post-training temperature rescaling")
        plots.append(("prop31.png", "Prop. 3.1: the β_alt model rescaled to β against the β model"))
    if tcos_fronts:
        plot_pareto_fronts(run_dir / "t_cos_dpo.png", tcos_fronts, objective_names=names,
                           title="T-COS-DPO: one model served at several temperature vectors")
        plots.append(("t_cos_dpo.png", "T-COS-DPO fronts at several temperature vectors"))
    plot_curves(run_dir / "train_loss.png", curves, ylabel="train loss", title="training losses",
                smooth=max(1, min(len(v) for v in curves.values()) // 20))
    plots.append(("train_loss.png", "training losses"))

    rows = []
    for m, r in results.items():
        rows.append({"method": METHOD_LABELS[m], "HV (ref 0)": r["hypervolume"],
                     "HV gain over base": r["hypervolume_gain"],
                     f"main NDCG@{c.ndcg_k} (mean ± std)": f"{r['main_ndcg_mean']:.4f} ± {r['main_ndcg_std']:.4f}",
                     "train seconds": r["train_seconds"], "of which compile": r["compile_seconds"],
                     "# params": r["num_params"], "runs": r["num_runs"],
                     "steps": r["train_steps"]})
    base = metrics["base"]
    rows.append({"method": "base (no fine-tuning)",
                 "HV (ref 0)": float(np.prod(base_point)), "HV gain over base": 0.0,
                 f"main NDCG@{c.ndcg_k} (mean ± std)": f"{base['main_ndcg']:.4f}",
                 "train seconds": base["train_seconds"],
                 "# params": base["num_params"], "runs": 1, "steps": c.base_steps})
    tables: dict[str, Any] = {}
    if len(metrics.get("seeds", [])) > 1:
        tables[f"Over {len(metrics['seeds'])} seeds (Student-t 95 % intervals)"] = seed_rows(metrics)
    tables["Methods (test split" + (f", first seed {metrics['seed']})" if len(metrics.get("seeds", [])) > 1
                                     else ")")] = rows
    if metrics.get("vertex"):
        tables["At the vertices (first seed): DPO-LS's objective-k NDCG at e_k minus the method's"] = [
            {"method": METHOD_LABELS[m], "mean gap": v["gap"], "per vertex": ", ".join(f"{g:+.4f}" for g in v["gaps"]),
             "its e_k points are nearest DPO-LS's w =": "; ".join(
                 "(" + ", ".join(f"{x:.2f}" for x in w) + ")" for w in v["nearest_ls_weight"])}
            for m, v in metrics["vertex"].items()]
    pts_rows = []
    for i, w in enumerate(metrics["weights"]):
        row = {"w": "(" + ", ".join(f"{x:.2f}" for x in w) + ")"}
        for m, r in results.items():
            row[METHOD_LABELS[m]] = "(" + ", ".join(f"{x:.3f}" for x in r["front"][i]) + ")"
        pts_rows.append(row)
    tables["Front points: auxiliary NDCG@10 per weight"] = pts_rows
    if metrics["prop31"]:
        p = metrics["prop31"]
        tables["Prop. 3.1 check"] = [
            {"compared with the β model": f"β={c.beta_alt:g} model, rescaled", "mean front distance":
             p["front_distance_rescaled"], "relative RMS of f − f_ref": p["score_rel_rms_rescaled"],
             "HV": p["hypervolume_rescaled"]},
            {"compared with the β model": f"β={c.beta_alt:g} model, raw", "mean front distance":
             p["front_distance_raw"], "relative RMS of f − f_ref": p["score_rel_rms_raw"], "HV": "–"}]
    d = metrics["data"]
    shares = ", ".join(f"{n} {v:.0%}" for n, v in d.get("label_zero_share", {}).items())
    reader = d.get("reader")
    what = (f"Data: {d['source']} ({d['train_queries']} train / {d['test_queries']} test queries, lists of up to "
            f"{d['list_size']} items, {d['num_features']} features"
            + (f"; file: kept {reader['kept']} of {reader['total']} lines, skipped {reader['skipped'] or 'none'}, "
               f"altered {reader['altered'] or 'none'}" if reader else "")
            + (f"; {d['lists_dropped_single_document']} one-document lists dropped"
               if d.get("lists_dropped_single_document") else "")
            + f"), K = {len(names)} auxiliary objectives "
            f"({', '.join(metrics['objectives'])}; share of zero labels: {shares}). Seeds: "
            f"{[s['seed'] for s in metrics.get('seeds', [])] or [metrics.get('seed')]}. Base ranker: ListNet on "
            f"relevance, {c.base_steps} steps, width {c.base_d_model}. Fine-tuning: `{c.conditioning}` "
            f"parametrisation, width {c.d_model}, {c.num_layers} layer(s), AdamW lr {c.learning_rate:g} "
            f"({c.lr_schedule}), batch {c.batch_size} queries, listwise DPO at β = {c.beta:g} "
            f"with `{d.get('label_norm', c.label_norm)}` label normalisation (config `{c.label_norm}`); "
            f"{c.run_steps} steps per DPO-LS / single / MO-DPO run, "
            f"{c.cos_steps} steps for the single W-COS-DPO / T-COS-DPO run (= {c.cos_steps / c.run_steps:.3g} DPO-LS "
            f"runs; the paper's Table 1 timings: 3.0) (Dirichlet α = {c.concentration:g}"
            + (f" mixed with {c.vertex_fraction:.0%} vertex draws for W-COS-DPO" if c.vertex_fraction else "")
            + f", one w per {'list' if c.per_example_weights else 'step'}, penalty μ = {c.penalty:g}"
            + (f"; vertex cover: α = {c.cover_concentration:g}, {metrics['cover_vertex_fraction']:.0%} exact vertices"
               if "w_cos_dpo_vc" in results else "") + "). Every method "
            f"is evaluated at the same {c.num_weights} weights on the test "
            f"queries; HV reference point = 0 (gain column: reference = the base model's point). Train seconds "
            f"include JIT compilation; DPO Soup and MO-DPO reuse DPO-LS's vertex runs as their single-objective "
            f"models and count their time.")
    write_report(run_dir, title=f"COS-DPO learning-to-rank (K = {len(names)})", what_ran=what,
                 command=command_line(), tables=tables, plots=plots, claim=claim_paragraph(c, metrics),
                 verdict=verdict)


def gap_analysis(c: Any, metrics: dict[str, Any], beaten: list[str]) -> str:
    """Where W-COS-DPO's front falls short of the baselines that beat it, measured weight by weight."""
    r = metrics["methods"]
    ours = np.asarray(r["w_cos_dpo"]["front"])
    weights = np.asarray(metrics["weights"])
    vertices = vertex_indices(weights)
    interior = [i for i in range(len(weights)) if i not in vertices]
    out = []
    for m in beaten:
        theirs = np.asarray(r[m]["front"])
        vertex_gap = np.mean([theirs[v, k] - ours[v, k] for k, v in enumerate(vertices)])
        dominated = sum(bool(np.all(theirs[i] >= ours[i]) and np.any(theirs[i] > ours[i])) for i in interior)
        # Swap the vertex points between the two fronts: how much of the HV gap the vertices alone explain.
        ours_their_vertices, theirs_our_vertices = ours.copy(), theirs.copy()
        ours_their_vertices[vertices], theirs_our_vertices[vertices] = theirs[vertices], ours[vertices]
        ref = np.zeros(ours.shape[1])
        swapped = [float(hypervolume(x, ref, maximize=True)) for x in (ours_their_vertices, theirs_our_vertices)]
        out.append(f"{METHOD_LABELS[m]} is ahead at the vertices by {vertex_gap:+.4f} NDCG on average (at w = e_k, "
                   f"in objective k) and its point dominates W-COS-DPO's at {dominated} of the {len(interior)} "
                   f"interior weights; W-COS-DPO's front with {METHOD_LABELS[m]}'s vertex points would have HV "
                   f"{swapped[0]:.4g} ({METHOD_LABELS[m]}'s with W-COS-DPO's vertex points {swapped[1]:.4g})")
    return (f"Where the gap is: {'; '.join(out)}. The conditioned model spreads {c.cos_steps} steps over the whole "
            f"simplex ({c.cos_steps / c.run_steps:.1f}× one dedicated run's budget) and Dirichlet("
            f"{c.concentration:g}) rarely draws weights near the vertices, where each baseline run is a specialist; "
            f"the paper trains every model to convergence on 10,000 queries (here: "
            f"{metrics['data']['train_queries']} training lists).")


def smoke_paragraph(metrics: dict[str, Any]) -> str:
    """A smoke run's paragraph: what was measured, with no reading of it against the paper."""
    r = metrics["methods"]
    hvs = ", ".join(f"{METHOD_LABELS[m]} {e['hypervolume']:.4g}" for m, e in r.items())
    return (f"Smoke run (`--quick`: tiny task, models and budgets): it checks that every method, the evaluation and "
            f"the report run end to end. Measured HV (reference 0): {hvs}. These numbers say nothing about the "
            f"paper's claims.")


def claim_paragraph(c: Any, metrics: dict[str, Any]) -> str:
    """Whether the paper's §4.1 claims held in this run, written from the measured numbers (none for a smoke run)."""
    if c.smoke:
        return smoke_paragraph(metrics)
    r = metrics["methods"]
    parts = []
    summary, seeds = metrics.get("summary", {}), len(metrics.get("seeds", []))
    if seeds > 1 and "hv_rel_diff_to_dpo_ls" in summary.get("w_cos_dpo", {}):
        d = summary["w_cos_dpo"]["hv_rel_diff_to_dpo_ls"]
        parts.append(f"Over {seeds} seeds W-COS-DPO's HV differs from DPO-LS's by {_ci(d, '+.2%')} (relative, 95 % "
                     f"Student-t interval; the verdict above reads it); the paper's Table 1 has +24 %.")
        if "w_cos_dpo_vc" in summary:
            v, g0, g1 = (summary["w_cos_dpo_vc"]["hv_rel_diff_to_dpo_ls"], summary["w_cos_dpo"]["vertex_gap"],
                         summary["w_cos_dpo_vc"]["vertex_gap"])
            parts.append(f"With the vertex-cover sampler ({metrics['cover_vertex_fraction']:.0%} exact vertices): "
                         f"{_ci(v, '+.2%')}; the mean vertex gap to DPO-LS (NDCG of objective k at e_k) goes from "
                         f"{_ci(g0, '+.4f')} to {_ci(g1, '+.4f')}.")
        parts.append("The single-seed sentences below are about the first seed.")
    if "w_cos_dpo" in r:
        w = r["w_cos_dpo"]
        baselines = [m for m in ("dpo_ls", "dpo_soup", "mo_dpo") if m in r]
        if baselines:
            beaten = [m for m in baselines if r[m]["hypervolume"] > w["hypervolume"]]
            cmp = ", ".join(f"{METHOD_LABELS[m]} {r[m]['hypervolume']:.4g}" for m in baselines)
            gains = ", ".join(f"{METHOD_LABELS[m]} {r[m]['hypervolume_gain']:.3g}" for m in baselines)
            verdict = ("held: W-COS-DPO has the highest hypervolume" if not beaten else
                       "did not hold here: " + ", ".join(METHOD_LABELS[m] for m in beaten)
                       + " reached a higher hypervolume")
            parts.append(f"The paper's main claim (W-COS-DPO's front dominates the baselines', Table 1 / Fig. 2) "
                         f"{verdict} — HV with reference 0: W-COS-DPO {w['hypervolume']:.4g} vs {cmp}; the volume "
                         f"added over the base model's point: W-COS-DPO {w['hypervolume_gain']:.3g} vs {gains}.")
        if "dpo_ls" in r:
            ls = r["dpo_ls"]
            speed = ls["train_seconds"] / max(w["train_seconds"], 1e-9)
            steady = (ls["train_seconds"] - ls["compile_seconds"]) / max(
                w["train_seconds"] - w["compile_seconds"], 1e-9)
            parts.append(f"Cost: one W-COS-DPO run of {c.cos_steps} steps took {w['train_seconds']:.1f} s against "
                         f"{ls['train_seconds']:.1f} s for the {ls['num_runs']} DPO-LS runs ({speed:.1f}× faster, "
                         f"{steady:.1f}× without the one step compilation each method pays; the paper: 3.6× on MSLR "
                         f"with K = 5), with "
                         f"{w['num_params']:,} trained parameters against {r['dpo_ls']['num_params']:,}.")
        mains = {m: r[m]["main_ndcg_mean"] for m in baselines}
        if mains:
            best = max(mains, key=mains.get)
            ours = w["main_ndcg_mean"]
            verdict = ("better, as the paper reports" if ours > mains[best] + 0.01 else
                       "comparable (within 0.01), as the paper reports" if ours >= mains[best] - 0.01 else
                       "worse, unlike the paper's comparable-or-better")
            parts.append(f"Main objective (relevance NDCG@{c.ndcg_k}, mean over the front; base model "
                         f"{metrics['base']['main_ndcg']:.4f}): W-COS-DPO {ours:.4f} against the best baseline, "
                         f"{METHOD_LABELS[best]}, {mains[best]:.4f} — {verdict}.")
        if baselines and beaten:
            parts.append(gap_analysis(c, metrics, beaten))
    p = metrics.get("prop31")
    if p:
        held = p["front_distance_rescaled"] < p["front_distance_raw"]
        score_held = p["score_rel_rms_rescaled"] < p["score_rel_rms_raw"]
        parts.append(f"Prop. 3.1: the W-COS-DPO model trained at β = {p['beta_alt']:g} and rescaled to "
                     f"β = {p['beta']:g} lies {p['front_distance_rescaled']:.4f} (mean NDCG distance per weight) from "
                     f"the β-trained front, against {p['front_distance_raw']:.4f} before rescaling — "
                     + ("the fronts coincide more closely after rescaling, as the proposition predicts"
                        if held else "rescaling did not bring the fronts closer here")
                     + f". At the score level the rescaled correction f − f_ref matches the β model's to a relative "
                     f"RMS of {p['score_rel_rms_rescaled']:.3f} (unrescaled: {p['score_rel_rms_raw']:.3f})"
                     + ("." if score_held else
                        ": not closer, because both runs stop far from the loss minimum the proposition is about — "
                        "there the correction grows at the optimiser's pace rather than in proportion to 1/β, so "
                        "rankings (what NDCG sees) agree better than raw scores."))
    if not parts:
        return "Only the baselines ran (W-COS-DPO disabled), so there is no COS-DPO claim to check in this run."
    return " ".join(parts)
