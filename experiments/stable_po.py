"""Stable Preference Optimization (bilevel SFT + DPO, docs/methods/stable-po.md): does it stop DPO's likelihood displacement?

Run::

    python -m experiments.stable_po                 # synthetic task, a few minutes on 2 CPU cores
    python -m experiments.stable_po --quick         # seconds-long smoke preset (CI)
    python -m experiments.stable_po --penalty 5.0   # a stronger hinge
    python -m experiments.stable_po --data.model-path ../shared/data/tinyllamas-stories260K/stories260K.bin
    python -m experiments.stable_po --data.data-paths ../shared/data/hh-rlhf/helpful-base-test-part1.jsonl.gz \\
        --data.tokenizer-path ../shared/data/gpt2-bpe   # real pairs (a tiny GPT-2-vocabulary policy, SFT on them)

Protocol. π_0 is the tiny decoder fitted by SFT to the synthetic task's base responses (cached, shared with the
other LM experiments). Preference pairs are two base responses per prompt labelled by Bradley–Terry on one true
reward (``dimension``; default ``class_a``). From π_0, with the same data order, steps and optimiser:

- **DPO** — ``−log σ(β Δ[logπ_θ − logπ_0])``;
- **Stable PO** (penalty form) — DPO ``+ λ·max(0, logπ_0(y_w) − logπ_θ(y_w))``;
- **Stable PO (bilevel)** — one inner SFT step on the chosen responses, ``θ⁺ = θ − η∇L_SFT(θ)``, then
  ``L_DPO(θ⁺) + λ·hinge(θ⁺)``, differentiated through the inner step (a Hessian-vector product);
- **SimPO** — ``−log σ(β/|y_w| logπ_θ(y_w) − β/|y_l| logπ_θ(y_l) − γ)`` (reference-free);
- **SimPO + Stable PO** — SimPO ``+ λ·hinge`` against π_0.

Measured on held-out pairs every ``eval_every`` steps: the mean log-prob of the chosen and of the rejected responses
(the trajectories), preference accuracy under each method's own implicit reward (``Δ[logπ_θ − logπ_0] > 0`` for the
DPO family, ``Δ[logπ_θ/|y|] > 0`` for SimPO) against the noisy labels and against the true reward order; at the end
each policy samples one response per held-out prompt (temperature 1, same random numbers for every policy) and the
responses are scored exactly with the true rewards (mean per objective and win rate against π_0).

Outputs: ``config.json``, ``metrics.json`` (``{"methods": {name: {"chosen_logp_delta", "rejected_logp_delta",
"accuracy", "true_accuracy", "mean_true_rewards", "win_rate_vs_sft", "train_seconds", "trajectory": {...}}},
"sft": {...}, "claim": {...}, "objectives": [...]}``), ``logp_trajectories.png``, ``accuracy.png``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from experiments import _lm_common as lm
from experiments._common import (
    Timer,
    cli,
    command_line,
    plot_curve_panels,
    plot_curves,
    save_metrics,
    write_report,
)
from mojax.train import DataConfig
from mojax.train.objectives import bilevel_stable_po_objective, dpo_objective, stable_po_objective

METHOD_LABELS = {
    "dpo": "DPO",
    "stable_po": "Stable PO (penalty)",
    "stable_po_bilevel": "Stable PO (bilevel)",
    "simpo": "SimPO",
    "simpo_stable": "SimPO + Stable PO",
}
SIMPO_FAMILY = ("simpo", "simpo_stable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(lm.ExperimentConfig):
    """Stable PO experiment settings (defaults: a few minutes on 2 CPU cores)."""

    train: lm.TrainConfig = lm.TrainConfig(steps=300, batch_size=32, eval_every=20)
    """Preference fine-tuning, the same for every method (``eval_every``: the held-out trajectories' interval)."""
    optimizer: lm.OptimizerConfig = lm.OptimizerConfig(learning_rate=1e-3, warmup_steps=10)
    """AdamW of every method."""
    dimension: int = 0
    """Which true reward labels the pairs (index into ``task.objectives``)."""
    num_train_pairs: int = 2048
    """Synthetic training pairs."""
    num_eval_pairs: int = 512
    """Synthetic held-out pairs."""
    num_samples: int = 512
    """Held-out prompts sampled for the true-reward evaluation."""
    beta: float = 0.1
    """DPO temperature β."""
    penalty: float = 1.0
    """The Stable PO hinge weight λ (1.0, the engine's default: not tuned)."""
    penalty_sweep: tuple[float, ...] = (0.1,)
    """Extra Stable PO (penalty form) runs at these λ, reported as ``stable_po_l<λ>`` (the trade-off between
    keeping the chosen likelihood and accuracy)."""
    inner_lr: float = 0.05
    """The bilevel form's inner SFT step η."""
    simpo_beta: float = 2.0
    """SimPO's β."""
    simpo_gamma: float = 1.0
    """SimPO's margin γ (the SimPO paper's usual γ/β = 0.5)."""
    methods: tuple[str, ...] = tuple(METHOD_LABELS)
    """Which of ``METHOD_LABELS`` to run."""
    sample_temperature: float = 1.0
    """Sampling temperature of the true-reward evaluation."""
    data: DataConfig = DataConfig(eval_fraction=0.2)
    """Real preference pairs instead (one file; HH-RLHF / PKU-SafeRLHF / …): the policy is ``data.model_path`` or a
    tiny decoder of the tokenizer's vocabulary, SFT on the training pairs' chosen responses; no true rewards, so no
    sampling evaluation."""
    real_objective: int = 0
    """The label row of real data (PKU-SafeRLHF: 0 better, 1 safer)."""

    def __post_init__(self):
        unknown = set(self.methods) - set(METHOD_LABELS)
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {sorted(unknown)}; choose from {sorted(METHOD_LABELS)}")
        if not 0 <= self.dimension < self.task.num_objectives:
            raise ValueError(f"dimension {self.dimension} out of range for {self.task.num_objectives} objectives")
        for name in ("beta", "simpo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("penalty", "inner_lr", "simpo_gamma", "sample_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(lam <= 0 for lam in self.penalty_sweep):
            raise ValueError(f"penalty_sweep values must be positive, got {self.penalty_sweep}")
        lm.check_real_data(self.data, max_files=1)


def get_config(quick: bool = False) -> Config:
    """The default run, or with ``quick`` the CI smoke preset (tiny model, few steps; numbers not meaningful)."""
    if not quick:
        return Config()
    return Config(model=lm.QUICK_MODEL, sft=lm.QUICK_SFT, train=lm.TrainConfig(steps=6, batch_size=16, eval_every=3),
                  optimizer=lm.OptimizerConfig(learning_rate=1e-3), num_train_pairs=64, num_eval_pairs=32,
                  num_samples=32, penalty_sweep=(), compile_cache=False, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Methods and evaluation
# ----------------------------------------------------------------------------------------------------------------


def sweep_name(penalty: float) -> str:
    """Method key of an extra Stable PO (penalty) run, e.g. ``stable_po_l0.1``."""
    return f"stable_po_l{penalty:g}"


def method_label(method: str) -> str:
    """Display name of a method key."""
    if method.startswith("stable_po_l"):
        return f"Stable PO (penalty, λ={method[len('stable_po_l'):]})"
    return METHOD_LABELS[method]


def objective_for(method: str, config: Config):
    """The engine objective of one method (reference = the cached π_0 log-probs in every batch)."""
    if method.startswith("stable_po_l"):
        lam = float(method[len("stable_po_l"):])
        return stable_po_objective(beta=config.beta, penalty=lam, pref="dpo", ref_mode="cached")
    if method == "dpo":
        return dpo_objective(beta=config.beta, ref_mode="cached")
    if method == "stable_po":
        return stable_po_objective(beta=config.beta, penalty=config.penalty, pref="dpo", ref_mode="cached")
    if method == "stable_po_bilevel":
        return bilevel_stable_po_objective(beta=config.beta, penalty=config.penalty, inner_lr=config.inner_lr,
                                           pref="dpo", ref_mode="cached")
    if method == "simpo":
        return stable_po_objective(beta=config.simpo_beta, gamma=config.simpo_gamma, penalty=0.0, pref="simpo",
                                   ref_mode="cached")
    if method == "simpo_stable":
        return stable_po_objective(beta=config.simpo_beta, gamma=config.simpo_gamma, penalty=config.penalty,
                                   pref="simpo", ref_mode="cached")
    raise ValueError(f"unknown method {method!r}")


def pair_metrics(logps: np.ndarray, ref_logps: np.ndarray, lengths: np.ndarray,
                 true_margin: np.ndarray | None) -> dict[str, float]:
    """Held-out quantities from policy and reference log-probs ``[E, 2]`` (chosen, rejected).

    ``accuracy_dpo``: fraction with ``Δ[logπ_θ − logπ_0] > 0`` (the DPO implicit reward ranks the labelled chosen
    response first); ``accuracy_simpo``: the same for SimPO's ``logπ_θ/|y|``; ``true_*``: the same against the true
    reward order (pairs with equal true rewards left out); ``chosen_logps``/``rejected_logps``: means.
    """
    dpo_margin = (logps[:, 0] - ref_logps[:, 0]) - (logps[:, 1] - ref_logps[:, 1])
    norm = logps / np.maximum(lengths, 1)
    simpo_margin = norm[:, 0] - norm[:, 1]
    out = {"chosen_logps": float(logps[:, 0].mean()), "rejected_logps": float(logps[:, 1].mean()),
           "accuracy_dpo": float(np.mean(dpo_margin > 0)), "accuracy_simpo": float(np.mean(simpo_margin > 0))}
    if true_margin is not None:
        strict = true_margin != 0
        sign = np.sign(true_margin[strict])
        out["true_accuracy_dpo"] = float(np.mean(np.sign(dpo_margin[strict]) == sign))
        out["true_accuracy_simpo"] = float(np.mean(np.sign(simpo_margin[strict]) == sign))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Data and the starting policy
# ----------------------------------------------------------------------------------------------------------------


def build_setup(config: Config) -> dict[str, Any]:
    """π_0, training pairs (with π_0 log-probs attached) and held-out pairs, synthetic or real."""
    if not config.data.real:
        policy, sft_info = lm.sft_policy(config.task, config.model, config.sft, model_path=config.data.model_path,
                                         cache_dir=config.cache_dir, progress=config.progress)
        train = lm.synthetic_pairs(config.task, dimension=config.dimension, num_pairs=config.num_train_pairs,
                                   seed=config.seed)
        held = lm.synthetic_pairs(config.task, dimension=config.dimension, num_pairs=config.num_eval_pairs,
                                  seed=config.seed + 1)
        true_margin = held.rewards[:, 0, config.dimension] - held.rewards[:, 1, config.dimension]
        names = list(config.task.objectives)
    else:
        policy, sft_info, [(train, held)] = lm.real_policy(config.data, config.model, config.sft,
                                                           objectives=[config.real_objective], seed=config.seed,
                                                           cache_dir=config.cache_dir, progress=config.progress)
        true_margin = None
        names = [f"objective_{config.real_objective}"]
    return {"policy": policy, "sft_info": sft_info, "train": lm.with_ref_logps(train, [policy]),
            "held": held, "held_ref": lm.pair_logps(policy, held), "true_margin": true_margin, "names": names}


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(config: Config) -> Path:
    """Run every method from the same π_0 and write the run directory; returns its path."""
    run_dir = config.start("stable_po")
    setup = build_setup(config)
    policy, held, held_ref = setup["policy"], setup["held"], setup["held_ref"]
    lengths = held.arrays["loss_mask"].sum(-1)
    synthetic = not config.data.real

    def eval_fn(model):
        return pair_metrics(lm.pair_logps(model, held), held_ref, lengths, setup["true_margin"])

    base_eval = eval_fn(policy)
    if synthetic:
        prompts = lm.synthetic_pairs(config.task, dimension=config.dimension, num_pairs=config.num_samples,
                                     seed=config.seed + 2).prompts
        sample = lambda m: lm.sample_and_score(m, prompts, config.task, seed=config.seed + 3,  # noqa: E731
                                               temperature=config.sample_temperature)[1]
        sft_rewards = sample(policy)

    results: dict[str, dict[str, Any]] = {}
    runs = list(config.methods) + ([sweep_name(lam) for lam in config.penalty_sweep]
                                   if "stable_po" in config.methods else [])
    for method in runs:
        with Timer() as timer:
            trained, hist = lm.train(policy, objective_for(method, config), setup["train"], config.train,
                                     config.optimizer, eval_fn=eval_fn, desc=method_label(method),
                                     progress=config.progress)
        acc_key = "simpo" if method in SIMPO_FAMILY else "dpo"
        final = hist.evals[-1]
        row: dict[str, Any] = {
            "chosen_logp_delta": final["chosen_logps"] - base_eval["chosen_logps"],
            "rejected_logp_delta": final["rejected_logps"] - base_eval["rejected_logps"],
            "accuracy": final[f"accuracy_{acc_key}"],
            "train_seconds": hist.seconds,
            "wall_seconds": timer.seconds,
            "final_train_loss": hist.final("loss"),
            "trajectory": {"step": [e["step"] for e in hist.evals],
                           "chosen_logps": [e["chosen_logps"] for e in hist.evals],
                           "rejected_logps": [e["rejected_logps"] for e in hist.evals],
                           "accuracy": [e[f"accuracy_{acc_key}"] for e in hist.evals]},
        }
        if "hinge_active" in hist.metrics:
            row["final_hinge_active"] = hist.final("hinge_active")
        if synthetic:
            rewards = sample(trained)
            row["true_accuracy"] = final[f"true_accuracy_{acc_key}"]
            row["mean_true_rewards"] = rewards.mean(0).tolist()
            row["win_rate_vs_sft"] = lm.win_rates(rewards, sft_rewards).tolist()
        results[method] = row

    claim = claim_summary(results, n_eval=len(held), penalty=config.penalty)
    metrics = {"methods": results, "objectives": setup["names"], "dimension": config.dimension,
               "sft": {**{k: v for k, v in setup["sft_info"].items() if k not in ("train_nll", "vocab")}, **base_eval,
                       **({"mean_true_rewards": sft_rewards.mean(0).tolist()} if synthetic else {})},
               "claim": claim}
    save_metrics(run_dir, metrics)
    write_outputs(run_dir, config, metrics, synthetic)
    print(f"report: {run_dir / 'report.md'}")
    return run_dir


def claim_summary(results: dict[str, dict[str, Any]], *, n_eval: int, penalty: float = 1.0) -> dict[str, Any]:
    """The claim, decided from the numbers: DPO's chosen log-prob falls; Stable PO's does not; accuracy not worse.

    "Falls": the held-out mean chosen log-prob ended more than 0.05 nats below π_0's (the tolerance absorbs the
    evaluation noise of a policy that barely moved). "Holds": it did not fall by that criterion. Also reported:
    ``displacement_removed`` = 1 − (method's fall)/(DPO's fall), the share of DPO's likelihood displacement a
    method avoided. "Not worse": accuracy at least the base method's (DPO; SimPO for SimPO + Stable PO) minus two
    binomial standard errors ``2·sqrt((p_a(1−p_a) + p_b(1−p_b))/n)``.
    """
    out: dict[str, Any] = {}
    if "dpo" not in results:
        return out
    dpo = results["dpo"]
    out["dpo_chosen_falls"] = bool(dpo["chosen_logp_delta"] < -0.05)
    for m, r in results.items():
        if m in ("dpo", "simpo"):
            continue
        base = results["simpo"] if m == "simpo_stable" and "simpo" in results else dpo
        se = math.sqrt(sum(p * (1 - p) for p in (r["accuracy"], base["accuracy"])) / max(n_eval, 1))
        fall = -base["chosen_logp_delta"]
        out[m] = {"chosen_holds": bool(r["chosen_logp_delta"] >= -0.05),
                  "displacement_removed": float(1 + r["chosen_logp_delta"] / fall) if fall > 0.05 else None,
                  "accuracy_not_worse": bool(r["accuracy"] >= base["accuracy"] - 2 * se),
                  "accuracy_diff": r["accuracy"] - base["accuracy"], "two_se": 2 * se}
    if "stable_po" in out:
        out["held"] = bool(out["dpo_chosen_falls"] and out["stable_po"]["chosen_holds"]
                           and out["stable_po"]["accuracy_not_worse"])
        # Any λ tried (the default and the sweep) at which both parts held.
        held_at = [m for m in out if m.startswith("stable_po") and m != "stable_po_bilevel"
                   and out[m]["chosen_holds"] and out[m]["accuracy_not_worse"]]
        out["held_at_some_penalty"] = bool(out["dpo_chosen_falls"] and held_at)
        out["penalty"] = penalty
    return out


def plot_trajectories(path: Path, results: dict[str, dict[str, Any]]) -> Path:
    """Held-out mean chosen and rejected log-probs over training, one colour per method."""
    panels = {f"{what} responses": {method_label(m): (r["trajectory"]["step"], r["trajectory"][f"{what}_logps"])
                                    for m, r in results.items()} for what in ("chosen", "rejected")}
    return plot_curve_panels(path, panels, ylabels=["mean log π(y_w|x), held-out", "mean log π(y_l|x), held-out"])


def write_outputs(run_dir: Path, config: Config, metrics: dict[str, Any], synthetic: bool) -> None:
    """Plots and ``report.md`` from the measured numbers."""
    results, sft, claim = metrics["methods"], metrics["sft"], metrics["claim"]
    plot_trajectories(run_dir / "logp_trajectories.png", results)
    plot_curves(run_dir / "accuracy.png", {method_label(m): (r["trajectory"]["step"], r["trajectory"]["accuracy"])
                                           for m, r in results.items()},
                ylabel="held-out preference accuracy (own implicit reward)")
    k = config.dimension if synthetic else 0
    rows = []
    for m, r in results.items():
        row = {"method": method_label(m), "Δ chosen logp": r["chosen_logp_delta"],
               "Δ rejected logp": r["rejected_logp_delta"], "accuracy (labels)": r["accuracy"]}
        if synthetic:
            row["accuracy (true order)"] = r["true_accuracy"]
            row[f"mean {metrics['objectives'][k]} of samples"] = r["mean_true_rewards"][k]
            row[f"win rate vs SFT ({metrics['objectives'][k]})"] = r["win_rate_vs_sft"][k]
        row["train s"] = r["train_seconds"]
        rows.append(row)
    what = (f"π_0: {'a tiny decoder' if config.data.model_path is None else f'`{config.data.model_path}`'} "
            f"fitted by SFT (held-out NLL {sft['nll_before']:.3f} → {sft['nll_after']:.3f} nats/token"
            f"{', cached' if sft.get('cached') else ''}). "
            + (f"{config.num_train_pairs} training and {config.num_eval_pairs} held-out synthetic pairs labelled by "
               f"Bradley–Terry on `{metrics['objectives'][k]}` (temperature {config.task.temperature}). "
               if synthetic else f"Real pairs from `{config.data.data_paths[0]}`. ")
            + f"Each method: {config.train.steps} AdamW steps (lr {config.optimizer.learning_rate}, batch "
              f"{config.train.batch_size}) from π_0; β = {config.beta}, λ = {config.penalty} (sweep: "
              f"{list(config.penalty_sweep)}), η = {config.inner_lr}, "
              f"SimPO β = {config.simpo_beta}, γ = {config.simpo_gamma}. Δ = held-out mean log-prob after training "
              f"minus π_0's (π_0: chosen {sft['chosen_logps']:.3f}, rejected {sft['rejected_logps']:.3f}).")
    write_report(run_dir, title="Stable Preference Optimization vs DPO: likelihood displacement",
                 what_ran=what, command=command_line(), tables={"Final metrics (held-out)": rows},
                 plots=[("logp_trajectories.png", "held-out chosen / rejected log-probs during training"),
                        ("accuracy.png", "held-out preference accuracy during training")],
                 claim=claim_paragraph(results, claim, dimension=k if synthetic else None,
                                       objective=metrics["objectives"][k]))


def _verdict(c: dict[str, Any]) -> str:
    removed = c["displacement_removed"]
    chosen = ("held" if c["chosen_holds"] else "fell" + (f" ({removed:.0%} of the base method's fall avoided)"
                                                          if removed is not None else ""))
    return f"chosen {chosen}; accuracy {'not worse' if c['accuracy_not_worse'] else 'worse'}"


def claim_paragraph(results: dict[str, dict[str, Any]], claim: dict[str, Any], *, dimension: int | None = None,
                    objective: str = "") -> str:
    """One honest paragraph from the numbers (never canned); ``dimension`` adds the true-reward comparison."""
    if "dpo" not in results or "stable_po" not in claim:
        return ("The comparison needs both DPO and Stable PO (penalty); this run had "
                f"{', '.join(method_label(m) for m in results)}, so the claim was not tested.")
    dpo, spo, c = results["dpo"], results["stable_po"], claim["stable_po"]
    parts = [f"Under DPO the held-out chosen log-prob moved by {dpo['chosen_logp_delta']:+.3f} nats "
             f"(rejected {dpo['rejected_logp_delta']:+.3f}): "
             + ("it fell — likelihood displacement is present here." if claim["dpo_chosen_falls"]
                else "it did not fall, so this run shows no likelihood displacement to fix."),
             f"Under Stable PO (penalty, λ = {claim['penalty']:g}) it moved by {spo['chosen_logp_delta']:+.3f} "
             f"(rejected {spo['rejected_logp_delta']:+.3f}) with accuracy {spo['accuracy']:.3f} vs DPO's "
             f"{dpo['accuracy']:.3f} (difference {c['accuracy_diff']:+.3f}, two standard errors {c['two_se']:.3f}): "
             f"{_verdict(c)}."]
    for m in results:
        if m in claim and m not in ("stable_po",) and isinstance(claim[m], dict):
            r = results[m]
            parts.append(f"{method_label(m)}: chosen {r['chosen_logp_delta']:+.3f}, accuracy {r['accuracy']:.3f} "
                         f"({_verdict(claim[m])}).")
    if "simpo" in results:
        parts.append(f"SimPO alone moved the chosen log-prob by {results['simpo']['chosen_logp_delta']:+.3f} "
                     f"(accuracy {results['simpo']['accuracy']:.3f}).")
    if dimension is not None and "mean_true_rewards" in dpo:
        r_dpo, r_spo = dpo["mean_true_rewards"][dimension], spo["mean_true_rewards"][dimension]
        parts.append(f"On the true reward the pairs were labelled by (`{objective}`), DPO's samples score "
                     f"{r_dpo:.3f} (win rate {dpo['win_rate_vs_sft'][dimension]:.1%} against π_0) and Stable PO's "
                     f"{r_spo:.3f} ({spo['win_rate_vs_sft'][dimension]:.1%}): "
                     + ("the displaced likelihood went to responses the true reward prefers, so keeping the chosen "
                        "(base-distribution) responses likely held the policy back here."
                        if r_dpo > r_spo else "keeping the chosen likelihood did not cost true reward here."))
    if claim.get("held"):
        verdict = "The claim held in this run at the default λ."
    elif claim.get("held_at_some_penalty"):
        verdict = ("At the default λ the claim did not hold in full, but it did at another λ tried here: the hinge "
                   "trades chosen likelihood against accuracy, and λ decides where on that trade-off a run lands.")
    else:
        verdict = "The claim did not hold in this run at any λ tried."
    return " ".join(parts + [verdict])


if __name__ == "__main__":
    cli(get_config, main)
