"""SPO, sequential preference optimization (Lou et al. 2024; docs/methods/spo.md): align dimension 1, then dimension 2 without
losing dimension 1.

Run::

    python -m experiments.spo                   # synthetic task: class_a, then the conflicting class_b
    python -m experiments.spo --quick           # seconds-long smoke preset (CI)
    python -m experiments.spo --alphas 0.05 0.1 0.3     # several SPO constraint strengths (a small front)
    python -m experiments.spo --data.data-paths ../shared/data/pku-saferlhf-sample/alpaca7b-test-first15.jsonl \\
        --data.tokenizer-path ../shared/data/gpt2-bpe   # real pairs: PKU better (helpful), then safer (harmless)
    python -m experiments.spo --data.data-paths <helpful.jsonl.gz> <harmless.jsonl.gz> \\
        --data.tokenizer-path <tok>                     # HH: helpful-base, then harmless-base

Protocol (synthetic default). π_0 is the SFT'd tiny decoder (cached, shared with the other LM experiments).
Dimension 1 pairs are labelled by Bradley–Terry on the true reward ``class_a``, dimension 2 pairs on ``class_b``,
which competes with it for the same token positions (the two conflict by construction). Methods:

- **π_1 = DPO-dim1**: DPO on dimension-1 pairs from π_0 (round 1 of every sequential method);
- **SPO** (round 2): ``−log σ(β Δ[logπ_θ − logπ_1] − α Δ[logπ_1 − logπ_0])`` on dimension-2 pairs from π_1; the
  log-probs of π_0 and π_1 are computed once and cached in the data (``ref_logps [2, B, N]``); one run per α;
- **S-DPO**: the same round 2 with α = 0 (plain DPO against π_1);
- **DPO-Mix**: one DPO run from π_0 on the union of both dimensions' pairs, for as many steps as both rounds.

Evaluation: every policy samples one response per held-out prompt (temperature 1, the same random numbers for every
policy) and the responses are scored exactly with the true rewards; per-dimension win rates (ties ½) against π_0 and
SPO's against each baseline; mean true rewards per dimension; the SPO gradient weight
``ϕ = σ(α Δu − β Δ[logπ_θ − logπ_1])`` (``Δu = Δ[logπ_1 − logπ_0]``) on the dimension-2 training pairs at the end of
round 2, split by agreeing (Δu > 0) and conflicting (Δu < 0) pairs; and how well π_1's implicit reward ``Δu``
tracks the true dimension-1 reward difference of those pairs.

Outputs: ``config.json``, ``metrics.json`` (``{"methods": {name: {"mean_true_rewards": [K], "win_rate_vs_sft": [K],
"train_seconds"}}, "spo_vs": {baseline: [K]}, "phi": {...}, "front": {...}, "claim": {...}}``), ``rewards.png``
(per-dimension true rewards of each method), ``phi.png`` (ϕ distributions), ``round2.png``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments import _lm_common as lm
from experiments._common import (
    cli,
    command_line,
    plot_curves,
    plot_histograms,
    plot_pareto_fronts,
    save_metrics,
    write_report,
)
from mojax.train import DataConfig
from mojax.losses import spo_loss
from mojax.metrics import pareto_front
from mojax.train.objectives import dpo_objective, spo_objective


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(lm.ExperimentConfig):
    """SPO experiment settings (defaults: a few minutes on 2 CPU cores)."""

    round1: lm.TrainConfig = lm.TrainConfig(steps=200, batch_size=32)
    """Round 1: DPO on dimension 1 (DPO-Mix runs ``round1.steps + round2.steps`` steps with round 1's seed)."""
    round2: lm.TrainConfig = lm.TrainConfig(steps=200, batch_size=32, seed=1)
    """Round 2: SPO / S-DPO on dimension 2, from π_1."""
    optimizer: lm.OptimizerConfig = lm.OptimizerConfig(learning_rate=1e-3, warmup_steps=10)
    """AdamW of every run."""
    dimensions: tuple[int, int] = (0, 1)
    """The two preference dimensions (indices into ``task.objectives``), in alignment order."""
    num_pairs: int = 2048
    """Training pairs per dimension."""
    num_samples: int = 512
    """Held-out prompts sampled for the evaluation."""
    beta: float = 0.1
    """β of every DPO-type loss."""
    alphas: tuple[float, ...] = (0.1, 0.5)
    """SPO constraint strengths α = λβ, one round-2 run each (S-DPO is α = 0)."""
    sample_temperature: float = 1.0
    """Sampling temperature of the evaluation."""
    data: DataConfig = DataConfig(eval_fraction=0.2)
    """Real pairs instead of the synthetic task: one file (PKU-SafeRLHF: objective 0 = better, then 1 = safer) or
    two files (dimension 1, dimension 2, objective 0 of each; e.g. HH helpful-base then harmless-base). No true
    rewards there: each policy is scored by held-out implicit-reward accuracy per dimension against π_0."""

    def __post_init__(self):
        if len(self.dimensions) != 2 or len(set(self.dimensions)) != 2:
            raise ValueError(f"dimensions must be two distinct objective indices, got {self.dimensions}")
        if not self.data.real and not all(0 <= d < self.task.num_objectives for d in self.dimensions):
            raise ValueError(f"dimensions {self.dimensions} out of range for {self.task.num_objectives} objectives")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty tuple of positive values (S-DPO is α = 0), got {self.alphas}")
        lm.check_real_data(self.data, max_files=2)  # one file (two objectives) or two (one per dimension)


def get_config(quick: bool = False) -> Config:
    """The default run, or with ``quick`` the CI smoke preset (tiny model, few steps; numbers not meaningful)."""
    if not quick:
        return Config()
    small = lm.TrainConfig(steps=6, batch_size=16)
    return Config(model=lm.QUICK_MODEL, sft=lm.QUICK_SFT, round1=small, round2=dataclasses.replace(small, seed=1),
                  optimizer=lm.OptimizerConfig(learning_rate=1e-3), num_pairs=64, num_samples=32, alphas=(0.1,),
                  compile_cache=False, progress=False)


def alpha_name(alpha: float) -> str:
    """Method key of one SPO run, e.g. ``spo_a0.1``."""
    return f"spo_a{alpha:g}"


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def build_data(config: Config) -> dict[str, Any]:
    """π_0 and per-dimension train pairs (synthetic: plus held-out prompts; real: plus held-out pairs)."""
    if not config.data.real:
        policy, info = lm.sft_policy(config.task, config.model, config.sft, model_path=config.data.model_path,
                                     cache_dir=config.cache_dir, progress=config.progress)
        d1, d2 = config.dimensions
        pairs = [lm.synthetic_pairs(config.task, dimension=d, num_pairs=config.num_pairs, seed=config.seed + 10 * i)
                 for i, d in enumerate((d1, d2))]
        prompts = lm.synthetic_pairs(config.task, dimension=d1, num_pairs=config.num_samples,
                                     seed=config.seed + 99).prompts
        names = [config.task.objectives[d] for d in (d1, d2)]
        return {"policy": policy, "sft_info": info, "train": pairs, "held": None, "prompts": prompts, "names": names}
    one = len(config.data.data_paths) == 1  # one file: its two label rows; two files: label row 0 of each
    data = dataclasses.replace(config.data, data_paths=config.data.data_paths * 2) if one else config.data
    objectives = (0, 1) if one else (0, 0)
    policy, info, splits = lm.real_policy(data, config.model, config.sft, objectives=objectives, seed=config.seed,
                                          cache_dir=config.cache_dir, progress=config.progress)
    width = max(d.width for pair in splits for d in pair)
    names = [f"{Path(f).stem}[{k}]" for f, k in zip(data.data_paths, objectives)]
    return {"policy": policy, "sft_info": info, "train": [lm.pad_width(t, width) for t, _ in splits],
            "held": [h for _, h in splits], "prompts": None, "names": names}


# ----------------------------------------------------------------------------------------------------------------
# ϕ and its split
# ----------------------------------------------------------------------------------------------------------------


def phi_per_pair(logps: np.ndarray, prev: np.ndarray, *, beta: float, alpha: float) -> np.ndarray:
    """Per-pair SPO gradient weight ``ϕ [E]`` from policy log-probs ``[E, 2]`` and ``prev [E, 2(π_0, π_1), 2]``,
    through :func:`mojax.losses.spo_loss` (``return_metrics``)."""
    _, metrics = spo_loss(jnp.asarray(logps[:, 0]), jnp.asarray(logps[:, 1]),
                          jnp.asarray(np.moveaxis(prev[:, :, 0], 1, 0)), jnp.asarray(np.moveaxis(prev[:, :, 1], 1, 0)),
                          beta=beta, alpha=alpha, return_metrics=True)
    return np.asarray(metrics["phi"], np.float64)


def phi_split(phi: np.ndarray, delta_u: np.ndarray) -> dict[str, float]:
    """Mean ϕ over agreeing (Δu > 0) and conflicting (Δu < 0) pairs, and their counts."""
    agree, conflict = delta_u > 0, delta_u < 0
    return {"agree_mean": float(phi[agree].mean()) if agree.any() else float("nan"),
            "conflict_mean": float(phi[conflict].mean()) if conflict.any() else float("nan"),
            "agree_count": int(agree.sum()), "conflict_count": int(conflict.sum())}


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(config: Config) -> Path:
    """Round 1, round 2 (SPO per α and S-DPO), DPO-Mix; evaluate and write the run directory."""
    run_dir = config.start("spo")
    data = build_data(config)
    pi0 = data["policy"]
    train1 = lm.with_ref_logps(data["train"][0], [pi0])
    dpo = dpo_objective(beta=config.beta, ref_mode="cached")
    models: dict[str, Any] = {"sft": pi0}
    seconds: dict[str, float] = {"sft": 0.0}
    histories: dict[str, lm.History] = {}
    run = dict(optimizer=config.optimizer, progress=config.progress)

    pi1, hist1 = lm.train(pi0, dpo, train1, config.round1, desc="round 1: DPO dim 1", **run)
    models["dpo_dim1"], seconds["dpo_dim1"] = pi1, hist1.seconds

    # Round 2 data: dimension-2 pairs with the cached log-probs of every earlier model, row r = π_r.
    train2 = lm.with_ref_logps(data["train"][1], [pi0, pi1])
    prev = train2.arrays["ref_logps"]  # [E, 2, 2]
    delta_u = (prev[:, 1, 0] - prev[:, 0, 0]) - (prev[:, 1, 1] - prev[:, 0, 1])
    phi: dict[str, Any] = {}
    spo = spo_objective(beta=config.beta)  # α is a traced hyper-parameter: one compiled step serves every run
    for alpha in (0.0, *config.alphas):
        name = "s_dpo" if alpha == 0 else alpha_name(alpha)
        model, hist = lm.train(pi1, spo, train2, config.round2, hparams={"alpha": alpha}, desc=f"round 2: {name}",
                               **run)
        models[name], seconds[name], histories[name] = model, seconds["dpo_dim1"] + hist.seconds, hist
        end = phi_per_pair(lm.pair_logps(model, train2), prev, beta=config.beta, alpha=alpha)
        start = phi_per_pair(prev[:, 1], prev, beta=config.beta, alpha=alpha)  # θ = π_1
        phi[name] = {"start": phi_split(start, delta_u), "end": phi_split(end, delta_u), "values_end": end}

    mix = lm.with_ref_logps(lm.concat_pairs(data["train"]), [pi0])
    mix_run = dataclasses.replace(config.round1, steps=config.round1.steps + config.round2.steps)
    models["dpo_mix"], hist_mix = lm.train(pi0, dpo, mix, mix_run, desc="DPO-Mix", **run)
    seconds["dpo_mix"] = hist_mix.seconds

    metrics = evaluate(config, data, models, seconds, phi, delta_u, train2)
    metrics["round2_curves"] = {n: {"loss": h.metrics["loss"], "phi_mean": h.metrics.get("phi_mean", [])}
                                for n, h in histories.items()}
    save_metrics(run_dir, metrics)
    write_outputs(run_dir, config, metrics, phi, delta_u)
    print(f"report: {run_dir / 'report.md'}")
    return run_dir


def evaluate(config: Config, data: dict[str, Any], models: dict[str, Any], seconds: dict[str, float],
             phi: dict[str, Any], delta_u: np.ndarray, train2: lm.PairData) -> dict[str, Any]:
    """Per-dimension scores of every policy (true rewards of samples, or held-out implicit-reward accuracy)."""
    synthetic = data["prompts"] is not None
    pi0 = models["sft"]
    out: dict[str, Any] = {"dimensions": data["names"], "synthetic": synthetic, "methods": {}, "spo_vs": {}}
    if synthetic:
        d = list(config.dimensions)
        scores = {n: lm.sample_and_score(m, data["prompts"], config.task, seed=config.seed + 7,
                                         temperature=config.sample_temperature)[1][:, d] for n, m in models.items()}
        for n in models:
            out["methods"][n] = {"mean_true_rewards": scores[n].mean(0).tolist(),
                                 "win_rate_vs_sft": lm.win_rates(scores[n], scores["sft"]).tolist(),
                                 "train_seconds": seconds[n]}
        for a in config.alphas:
            out["spo_vs"][alpha_name(a)] = {b: lm.win_rates(scores[alpha_name(a)], scores[b]).tolist()
                                            for b in ("sft", "dpo_dim1", "s_dpo", "dpo_mix")}
        # π_1's implicit reward on the dimension-2 pairs vs the true dimension-1 reward difference of those pairs.
        true_d1 = train2.rewards[:, 0, config.dimensions[0]] - train2.rewards[:, 1, config.dimensions[0]]
        out["delta_u_vs_true_r1"] = {"corr": float(np.corrcoef(delta_u, true_d1)[0, 1]),
                                     "sign_agreement": float(np.mean(np.sign(delta_u[true_d1 != 0])
                                                                     == np.sign(true_d1[true_d1 != 0])))}
        front_pts = np.array([out["methods"][n]["mean_true_rewards"] for n in ("s_dpo", *map(alpha_name,
                                                                                             config.alphas))])
        reference = np.array(out["methods"]["sft"]["mean_true_rewards"]) - 0.1
    else:
        held = data["held"]
        ref = [lm.pair_logps(pi0, h) for h in held]
        for n, m in models.items():
            acc = []
            for h, r in zip(held, ref):
                lp = lm.pair_logps(m, h)
                acc.append(float(np.mean((lp[:, 0] - r[:, 0]) - (lp[:, 1] - r[:, 1]) > 0)))
            out["methods"][n] = {"held_out_accuracy": acc, "train_seconds": seconds[n]}
        front_pts = np.array([out["methods"][n]["held_out_accuracy"] for n in ("s_dpo", *map(alpha_name,
                                                                                             config.alphas))])
        reference = np.zeros(2)
    front, hv = lm.front_hypervolume(front_pts, reference)
    out["front"] = {"points": front_pts.tolist(), "non_dominated": front.tolist(), "reference": reference.tolist(),
                    "hypervolume": hv, "methods": ["s_dpo", *map(alpha_name, config.alphas)]}
    out["phi"] = {n: {"start": v["start"], "end": v["end"]} for n, v in phi.items()}
    out["claim"] = claim_summary(config, out)
    return out


def claim_summary(config: Config, out: dict[str, Any]) -> dict[str, Any]:
    """Decided from the numbers: does SPO keep dimension 1 (vs S-DPO) while gaining dimension 2 (vs π_1)?"""
    if not out["synthetic"]:
        return {}
    spo = alpha_name(config.alphas[0])
    vs = out["spo_vs"][spo]
    n = config.num_samples
    se = 0.5 / np.sqrt(n)  # the largest standard error of a win rate on n paired prompts
    phi_end = out["phi"][spo]["end"]
    return {
        "spo": spo,
        "keeps_dim1_vs_s_dpo": bool(vs["s_dpo"][0] > 0.5 + 2 * se),
        "keeps_dim1_vs_sft": bool(out["methods"][spo]["win_rate_vs_sft"][0] > 0.5 + 2 * se),
        "gains_dim2_vs_pi1": bool(vs["dpo_dim1"][1] > 0.5 + 2 * se),
        "beats_dpo_mix_dim2": bool(vs["dpo_mix"][1] > 0.5 + 2 * se),
        "phi_agree_gt_conflict": bool(phi_end["agree_mean"] > phi_end["conflict_mean"]),
        "two_se": float(2 * se),
    }


def plot_phi(path: Path, phi: dict[str, Any], delta_u: np.ndarray) -> Path:
    """Histograms of ϕ at the end of round 2 for agreeing (Δu > 0) and conflicting (Δu < 0) pairs, per run."""
    panels = {n: {"agreeing (Δu > 0)": v["values_end"][delta_u > 0],
                  "conflicting (Δu < 0)": v["values_end"][delta_u < 0]} for n, v in phi.items()}
    return plot_histograms(path, panels, xlabels="ϕ at the end of round 2", bins=np.linspace(0, 1, 26))


LABELS = {"sft": "SFT (π_0)", "dpo_dim1": "DPO dim 1 (π_1)", "s_dpo": "S-DPO", "dpo_mix": "DPO-Mix"}


def label(name: str) -> str:
    """Display name of a method key."""
    return LABELS.get(name, name.replace("spo_a", "SPO α="))


def write_outputs(run_dir: Path, config: Config, metrics: dict[str, Any], phi: dict[str, Any],
                  delta_u: np.ndarray) -> None:
    """Plots and ``report.md``."""
    names, methods = metrics["dimensions"], metrics["methods"]
    key = "mean_true_rewards" if metrics["synthetic"] else "held_out_accuracy"
    plot_pareto_fronts(run_dir / "rewards.png", {label(n): [m[key]] for n, m in methods.items()},
                       objective_names=[f"{names[0]} ({'true reward' if metrics['synthetic'] else 'accuracy'})",
                                        f"{names[1]}"], title="per-dimension score of each policy")
    plot_phi(run_dir / "phi.png", phi, delta_u)
    plot_curves(run_dir / "round2.png", {label(n): c["loss"] for n, c in metrics["round2_curves"].items()},
                ylabel="round-2 training loss", smooth=10)
    write_spo_report(run_dir, config, metrics)


def write_spo_report(run_dir: Path, config: Config, metrics: dict[str, Any]) -> Path:
    """``report.md`` from ``metrics`` (the plots of :func:`write_outputs` must already be in ``run_dir``)."""
    names, methods = metrics["dimensions"], metrics["methods"]
    rows = []
    for n, m in methods.items():
        row = {"method": label(n)}
        if metrics["synthetic"]:
            row.update({f"mean {names[0]}": m["mean_true_rewards"][0], f"mean {names[1]}": m["mean_true_rewards"][1],
                        f"win vs SFT ({names[0]})": m["win_rate_vs_sft"][0],
                        f"win vs SFT ({names[1]})": m["win_rate_vs_sft"][1]})
        else:
            row.update({f"accuracy {names[0]}": m["held_out_accuracy"][0],
                        f"accuracy {names[1]}": m["held_out_accuracy"][1]})
        row["train s (incl. round 1)"] = m["train_seconds"]
        rows.append(row)
    tables: dict[str, Any] = {"Per-dimension results": rows}
    if metrics["synthetic"]:
        tables["SPO win rate against each baseline (per dimension)"] = [
            {"SPO run": label(s), "vs": label(b), names[0]: w[0], names[1]: w[1]}
            for s, vs in metrics["spo_vs"].items() for b, w in vs.items()]
    tables["Gradient weight ϕ on dimension-2 pairs (mean)"] = [
        {"run": label(n), "Δu > 0 (start)": v["start"]["agree_mean"], "Δu < 0 (start)": v["start"]["conflict_mean"],
         "Δu > 0 (end)": v["end"]["agree_mean"], "Δu < 0 (end)": v["end"]["conflict_mean"],
         "pairs Δu > 0": v["end"]["agree_count"], "pairs Δu < 0": v["end"]["conflict_count"]}
        for n, v in metrics["phi"].items()]
    info = (f"π_0: {'a tiny decoder' if config.data.model_path is None else f'`{config.data.model_path}`'} "
            "fitted by SFT. "
            + (f"{config.num_pairs} pairs per dimension labelled by Bradley–Terry on `{names[0]}` then `{names[1]}`; "
               f"{config.num_samples} held-out prompts sampled at temperature {config.sample_temperature}. "
               if metrics["synthetic"] else f"Real pairs: {', '.join(config.data.data_paths)}. ")
            + f"Round 1: {config.round1.steps} steps, round 2: {config.round2.steps} steps, DPO-Mix: "
              f"{config.round1.steps + config.round2.steps} steps; β = {config.beta}, α ∈ {list(config.alphas)}.")
    sections = {"Front over α": f"S-DPO and the SPO runs as points ({names[0]}, {names[1]}): hypervolume "
                f"{metrics['front']['hypervolume']:.4g} with reference {np.round(metrics['front']['reference'], 4)}."}
    if metrics["synthetic"]:
        du = metrics["delta_u_vs_true_r1"]
        sections["Does π_1's implicit reward track dimension 1?"] = (
            f"On the dimension-2 training pairs, Δu = Δ[logπ_1 − logπ_0] has correlation {du['corr']:.3f} with the "
            f"true `{names[0]}` difference and the same sign on {du['sign_agreement']:.1%} of pairs.")
    return write_report(run_dir, title="SPO: sequential multi-dimensional preference alignment",
                 what_ran=info, command=command_line(), tables=tables,
                 plots=[("rewards.png", "per-dimension score of each policy"),
                        ("phi.png", "ϕ at the end of round 2, agreeing vs conflicting pairs"),
                        ("round2.png", "round-2 training loss")],
                 sections=sections, claim=claim_paragraph(config, metrics))


def claim_paragraph(config: Config, metrics: dict[str, Any]) -> str:
    """One paragraph from the measured numbers."""
    names = metrics["dimensions"]
    if not metrics["synthetic"]:
        m = metrics["methods"]
        spo = alpha_name(config.alphas[0])
        return (f"Real data has no true rewards, so only held-out implicit-reward accuracy is reported: SPO "
                f"{m[spo]['held_out_accuracy'][0]:.3f} / {m[spo]['held_out_accuracy'][1]:.3f}, S-DPO "
                f"{m['s_dpo']['held_out_accuracy'][0]:.3f} / {m['s_dpo']['held_out_accuracy'][1]:.3f}, DPO-Mix "
                f"{m['dpo_mix']['held_out_accuracy'][0]:.3f} / {m['dpo_mix']['held_out_accuracy'][1]:.3f} on "
                f"({names[0]}, {names[1]}). The sample is too small to decide the paper's claim.")
    c, vs = metrics["claim"], metrics["spo_vs"][metrics["claim"]["spo"]]
    m = metrics["methods"]
    spo = c["spo"]
    ph = metrics["phi"][spo]["end"]
    text = (f"SPO ({label(spo)}) against S-DPO wins {vs['s_dpo'][0]:.1%} on {names[0]} and {vs['s_dpo'][1]:.1%} on "
            f"{names[1]}; against π_1 it wins {vs['dpo_dim1'][1]:.1%} on {names[1]} and {vs['dpo_dim1'][0]:.1%} on "
            f"{names[0]}; against DPO-Mix {vs['dpo_mix'][0]:.1%} / {vs['dpo_mix'][1]:.1%}. Mean true rewards "
            f"({names[0]}, {names[1]}): SFT {m['sft']['mean_true_rewards'][0]:.3f}/{m['sft']['mean_true_rewards'][1]:.3f}"
            f", π_1 {m['dpo_dim1']['mean_true_rewards'][0]:.3f}/{m['dpo_dim1']['mean_true_rewards'][1]:.3f}, S-DPO "
            f"{m['s_dpo']['mean_true_rewards'][0]:.3f}/{m['s_dpo']['mean_true_rewards'][1]:.3f}, SPO "
            f"{m[spo]['mean_true_rewards'][0]:.3f}/{m[spo]['mean_true_rewards'][1]:.3f}, DPO-Mix "
            f"{m['dpo_mix']['mean_true_rewards'][0]:.3f}/{m['dpo_mix']['mean_true_rewards'][1]:.3f}. "
            f"At the end of round 2 the mean ϕ is {ph['agree_mean']:.3f} on agreeing pairs (Δu > 0) and "
            f"{ph['conflict_mean']:.3f} on conflicting ones. ")
    points = np.array([v["mean_true_rewards"] for v in m.values()])
    optimal = [label(n) for n, keep in zip(m, pareto_front(points, return_mask=True)) if keep]
    text += f"Pareto-optimal among all policies here (mean true rewards): {', '.join(optimal)}. "
    keeps, gains = c["keeps_dim1_vs_s_dpo"], c["gains_dim2_vs_pi1"]
    if keeps and gains:
        text += ("So SPO kept more of dimension 1 than S-DPO while still gaining dimension 2 over π_1 (margins beyond "
                 f"two standard errors, {c['two_se']:.3f}): the paper's claim held here.")
    else:
        text += ("The claim that SPO keeps dimension 1 while gaining dimension 2 "
                 + ("did not hold: " if not (keeps and gains) else "")
                 + ("it did not beat S-DPO on dimension 1 beyond two standard errors" if not keeps else "")
                 + (" and " if not keeps and not gains else "")
                 + ("it did not gain on dimension 2 over π_1 beyond two standard errors" if not gains else "")
                 + f" ({c['two_se']:.3f}).")
    return text


if __name__ == "__main__":
    cli(get_config, main)
