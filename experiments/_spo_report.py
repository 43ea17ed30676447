"""SPO's run-directory outputs: plots and ``report.md`` from the aggregated ``metrics`` of :mod:`experiments.spo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiments._common import command_line, plot_curves, plot_histograms, plot_pareto_fronts, write_report

__all__ = ["label", "write_real", "write_synthetic"]

LABELS = {"sft": "SFT (π_0)", "dpo_dim1": "DPO helpful (π_1)", "s_dpo": "S-DPO", "dpo_mix": "DPO-Mix"}


def label(name: str) -> str:
    """Display name of a method key."""
    if name.startswith("dpo_mix_"):
        return f"DPO-Mix (harmless share {name[len('dpo_mix_'):]})"
    return LABELS.get(name, name.replace("spo_a", "SPO α="))


def _ci(m: dict[str, Any], k: int | None = None) -> str:
    if m["lo"] is None:  # one seed: no interval
        return f"{m['mean'] if k is None else m['mean'][k]:.3f}"
    mean, lo, hi = (m[x] if k is None else m[x][k] for x in ("mean", "lo", "hi"))
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def write_synthetic(run_dir: Path, config: Any, metrics: dict[str, Any], run0: dict[str, Any]) -> Path:
    """Plots (``fronts.png``, ``phi.png``, ``round2.png``) and ``report.md`` of a synthetic run."""
    dims, methods = metrics["dimensions"], metrics["methods"]
    fronts = {name: np.array(f["points_mean"]) for name, f in metrics["fronts"].items()}
    fronts["π_0 / π_1"] = np.array([methods["sft"]["all"]["mean"], methods["dpo_dim1"]["all"]["mean"]])
    plot_pareto_fronts(run_dir / "fronts.png", fronts, objective_names=[f"{d} (mean true reward)" for d in dims],
                       annotate={**{n: f["labels"] for n, f in metrics["fronts"].items()}, "π_0 / π_1": ["π_0", "π_1"]},
                       title=f"fronts, mean over {config.seeds} seed(s); ideal (1, 1)")
    delta_u = run0["delta_u"]
    plot_histograms(run_dir / "phi.png",
                    {label(n): {"agreeing (Δu > 0)": v["values_end"][delta_u > 0],
                                "conflicting (Δu < 0)": v["values_end"][delta_u < 0]} for n, v in run0["phi"].items()},
                    xlabels="ϕ at the end of round 2 (seed 1)", bins=np.linspace(0, 1, 26))
    plot_curves(run_dir / "round2.png", {label(n): c for n, c in metrics["round2_curves"].items()},
                ylabel="round-2 training loss (seed 1)", smooth=10)

    win = [{"SPO vs": label(b), **{d: f"{_ci(metrics['win_rates'][b][d])} {metrics['win_rates'][b][d]['vs_half']}"
                                   for d in dims}, "decides": "yes"}
           for b in metrics["win_rates"]]
    win += [{"SPO vs": label(b), **{d: _ci(metrics["win_rates_other"][b][d]) for d in dims}, "decides": "no"}
            for b in metrics["win_rates_other"]]
    rows = []
    for n, m in methods.items():
        rows.append({"policy": label(n), **{f"{d} (all)": _ci(m["all"], k) for k, d in enumerate(dims)},
                     **{f"{d} (benign)": f"{m['benign']['mean'][k]:.3f}" for k, d in enumerate(dims)},
                     **{f"{d} (risky)": f"{m['risky']['mean'][k]:.3f}" for k, d in enumerate(dims)},
                     "train s": m["train_seconds"]})
    by_type = [{"SPO vs": label(b), "prompts": part, **{d: _ci(v[part], k) for k, d in enumerate(dims)}}
               for b, v in metrics["win_rates_by_prompt_type"].items() for part in ("benign", "risky")]
    hv = [{"front": n, "points (mean over seeds)": ", ".join(f"{lab} ({p[0]:.3f}, {p[1]:.3f})" for lab, p in
                                                                zip(f["labels"], f["points_mean"])),
           "hypervolume": _ci(f["hypervolume"]),
           "SPO − this": "–" if f["hypervolume_spo_minus_this"] is None else _ci(f["hypervolume_spo_minus_this"])}
          for n, f in metrics["fronts"].items()]
    phi = [{"run": label(n), "Δu > 0 (start)": v["start"]["agree_mean"],
            "Δu < 0 (start)": v["start"]["conflict_mean"],
            "Δu > 0 (end)": v["end"]["agree_mean"], "Δu < 0 (end)": v["end"]["conflict_mean"],
            "risky Δu > 0 (end)": v["end_risky"]["agree_mean"], "risky Δu < 0 (end)": v["end_risky"]["conflict_mean"]}
           for n, v in metrics["phi"].items()]
    comp = [{"policy": label(n), "prompts": part, **{c: v[part][c] for c in v[part]}}
            for n, v in metrics.get("composition", {}).items() for part in ("benign", "risky")]
    task = metrics["task"]
    bc = task["base_correlations"]
    what = (f"Synthetic helpful-vs-harmless task (experiments/_spo_task.py): risky topics "
            f"{list(config.hh.risky_topics)} of {config.task.num_topics} ({bc['risky_share']:.0%} of prompts), {config.hh.harmful_tokens} of "
            f"{config.task.tokens_per_class} class-A tokens harmful on risky prompts; base-distribution correlation "
            f"of the two rewards {bc['benign']:.2f} on benign and {bc['risky']:.2f} on risky prompts; attainable "
            f"front: {task['attainable_front']}. π_0 = the shared SFT decoder. Per seed ({config.seeds} seeds): "
            f"{config.num_pairs} pairs per dimension, round 1 {config.round1.steps} steps, round 2 "
            f"{config.round2.steps} steps (S-DPO evaluated every {config.stop_every}), DPO-Mix "
            f"{config.round1.steps + config.round2.steps} steps, β = {config.beta}, α ∈ {list(config.alphas)} "
            f"(headline {config.alphas[0]:g}), harmless shares {list(config.mix_shares)} (headline "
            f"{config.mix_shares[0]:g}); {config.num_samples} held-out prompts per seed sampled at temperature "
            f"{config.sample_temperature}, scored by the exact rewards. Intervals: 95% Student-t over seeds.")
    du = metrics["delta_u_vs_true_r1"]
    sections = {"Does π_1's implicit reward track helpfulness?": (
        f"On the harmless training pairs, Δu = Δ[logπ_1 − logπ_0] has correlation {_ci(du['corr'])} with the true "
        f"helpful difference and the same sign on {_ci(du['sign_agreement'])} of pairs.")}
    tables = {"Win rate of SPO (headline α) per dimension, mean [95% CI] over seeds": win,
              "Win rate of SPO split by prompt type, mean [95% CI]": by_type,
              "Mean true rewards per policy (all prompts: mean [95% CI]; benign / risky: mean)": rows,
              "Fronts: hypervolume w.r.t. (0, 0), mean [95% CI]": hv,
              "Gradient weight ϕ on harmless pairs (mean over seeds)": phi}
    if comp:
        tables["What the samples are made of (share of tokens before EOS; length in tokens; mean over seeds)"] = comp
    return write_report(run_dir, title="SPO: sequential helpful-then-harmless alignment", what_ran=what,
                        command=command_line(), tables=tables,
                        plots=[("fronts.png", "fronts (mean over seeds)"), ("phi.png", "ϕ at the end of round 2"),
                               ("round2.png", "round-2 training loss")],
                        sections=sections, verdict=metrics["verdict"], claim=claim_paragraph(metrics))


def claim_paragraph(metrics: dict[str, Any]) -> str:
    """What the numbers say, written from them (a smoke run says only that)."""
    verdict = metrics["verdict"]
    if verdict.result == "smoke":
        return "Smoke preset: the numbers only show that every stage ran."
    dims, w, m, spo = metrics["dimensions"], metrics["win_rates"], metrics["methods"], metrics["spo"]
    parts = [f"SPO ({label(spo)}) against {label(b)}: " + ", ".join(f"{_ci(w[b][d])} on {d}" for d in dims)
             for b in w]
    text = "; ".join(parts) + ". "
    mean = lambda n, part, k: m[n][part]["mean"][k]  # noqa: E731
    text += (f"On risky prompts SPO scores {mean(spo, 'risky', 0):.3f} helpful / {mean(spo, 'risky', 1):.3f} "
             f"harmless, S-DPO {mean('s_dpo', 'risky', 0):.3f} / {mean('s_dpo', 'risky', 1):.3f}, DPO-Mix "
             f"{mean('dpo_mix', 'risky', 0):.3f} / {mean('dpo_mix', 'risky', 1):.3f}; on benign prompts SPO "
             f"{mean(spo, 'benign', 0):.3f}, S-DPO {mean('s_dpo', 'benign', 0):.3f}, DPO-Mix "
             f"{mean('dpo_mix', 'benign', 0):.3f} (both rewards equal there). ")
    text += {"held": "Every interval lies above ½: the claim held here.",
             "did_not_hold": "At least one interval lies below ½: the claim did not hold here.",
             "inconclusive": "No interval decides: inconclusive at this number of seeds."}[verdict.result]
    return text


def write_real(run_dir: Path, config: Any, metrics: dict[str, Any], extras: dict[str, Any]) -> Path:
    """``report.md`` of a real-data run (accuracy table and the data reports; no plots)."""
    del extras
    names = metrics["dimensions"]
    rows = [{"policy": label(n), **{f"accuracy {d}": ("0.5 (reference)" if m["reference"] else
                                                      f"{m['held_out_accuracy'][k]:.3f}") for k, d in enumerate(names)},
             "train s": m["train_seconds"]} for n, m in metrics["methods"].items()]
    reports = ("Reader and tokeniser counts over each whole file"
               + ("" if config.data.max_examples is None else
                  f"; the run uses the first {config.data.max_examples} pairs the reader kept from each")
               + ":\n\n" + "\n\n".join(f"```\n{r}\n```" for r in metrics["data_reports"].values()))
    se = 0.5 / np.sqrt(max(min(metrics["held_out_pairs"]), 1))
    what = (f"Real pairs: {', '.join(config.data.data_paths)}; {metrics['train_pairs']} train / "
            f"{metrics['held_out_pairs']} held-out pairs per dimension. Round 1 {config.round1.steps}, round 2 "
            f"{config.round2.steps}, DPO-Mix {config.round1.steps + config.round2.steps} steps; β = {config.beta}, "
            f"α ∈ {list(config.alphas)}. Accuracy: share of held-out pairs whose chosen response has the larger "
            f"implicit reward against π_0 (ties ½; π_0 is the reference, ½ by definition). Standard error of an "
            f"accuracy near ½: about {se:.3f}.")
    m = metrics["methods"]
    claim = ("Real pairs have no true rewards and no judge: only implicit-reward accuracy is reported ("
             + ", ".join(f"{label(n)} {v['held_out_accuracy'][0]:.3f} / {v['held_out_accuracy'][1]:.3f}"
                         for n, v in m.items() if not v["reference"]) + ").")
    return write_report(run_dir, title="SPO on real preference pairs", what_ran=what, command=command_line(),
                        tables={"Held-out implicit-reward accuracy per dimension": rows},
                        sections={"Data report": reports}, verdict=metrics["verdict"], claim=claim)
