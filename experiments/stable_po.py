"""Stable Preference Optimization (bilevel SFT + DPO, docs/methods/stable-po.md) on a reasoning task with verifiable
answers: does keeping the chosen (correct) answer likely give higher exact match than DPO?

Run::

    python -m experiments.stable_po            # full setting: 3 seeds, every method (tens of minutes on 2 CPU cores)
    python -m experiments.stable_po --quick    # seconds-long smoke preset (CI; verdict "smoke")

**Claim (tested, stated before the run).** From an SFT model of moderate accuracy, Stable PO (penalty form, λ/β = 1)
keeps the held-out chosen log-prob from falling, and gives higher held-out greedy exact-match accuracy than DPO.
**Test.** Paired by seed and held-out problem: a percentile bootstrap over problems (4,000 resamples; the seeds kept
together) of (a) Stable PO's mean Δ chosen log-prob (final − π_0) — "holds" if its 95 % interval lies above −0.05
nats, "falls" if below — and (b) the exact-match difference Stable PO − DPO — "higher" if its 95 % interval lies
above 0, "lower" if below. ``held`` = holds and higher; ``did_not_hold`` = falls or lower; else ``inconclusive``.
An exact McNemar test (discordant problems pooled over seeds) and per-seed means are reported beside it.

**Task** (:mod:`experiments._stable_arith`): column addition of two 3-digit numbers, character level; the chosen
response is the correct worked answer (column sums, then the answer), the rejected one a near miss (one column off
by one: a slip or a dropped carry), so the two differ in two characters and the rejected answer is wrong.

**Protocol.** Per seed: a tiny decoder (2 layers, d 64) fitted by SFT on the training problems' worked answers to a
moderate accuracy (π_0), then from π_0, with the same pairs, data order, steps and optimiser:

- **DPO** — ``−log σ(β Δ[logπ_θ − logπ_0])``;
- **Stable PO (penalty)** — DPO ``+ λ·max(0, logπ_0(y_w) − logπ_θ(y_w))``, λ/β swept (``penalty_ratios``);
- **Stable PO (bilevel)** — one inner SFT step ``θ⁺ = θ − η∇L_SFT(θ)``, then ``L_DPO(θ⁺) + λ·hinge(θ⁺)``,
  differentiated through the inner step;
- **Stable PO (value gap)** — DPO ``+ λ·(L_SFT(θ) − L_SFT(θ⁺))``, the penalty a value-function bilevel solver uses;
- **SimPO** — ``−log σ(β/|y_w| logπ_θ(y_w) − β/|y_l| logπ_θ(y_l) − γ)``;
- **SimPO + Stable PO** — SimPO ``+ λ·hinge``, λ at the primary ratio to SimPO's per-token scale β_SimPO/|y_w|.

Every objective is a library objective run through :func:`mojax.train.fit` with its λ as a traced hyper-parameter,
so a λ sweep compiles once. Measured on the held-out problems every ``eval_every`` steps: mean chosen / rejected
log-probs and greedy exact match (the final answer after ``>``).

Outputs: ``config.json``; ``metrics.json`` (``{"verdict": {...}, "methods": {key: {"label", "exact_match",
"exact_match_seeds", "chosen_logp_delta", "rejected_logp_delta", "vs_dpo": {...}, "vs_sft": {...}, "trajectory":
{...}}}, "sft": {...}, "claim": {...}}``); ``per_problem.npz`` (``<method>/correct|chosen|rejected`` ``[S, P]``);
``logp_trajectories.png``; ``exact_match.png``; ``report.md``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from experiments import _stable_arith as A
from experiments import _stable_stats as st
from experiments._common import Timer, Verdict, cli, command_line, plot_curve_panels, save_metrics, write_report
from mojax.models import Decoder, DecoderConfig
from mojax.train.objectives import (bilevel_stable_po_objective, dpo_objective, sft_objective, stable_po_objective,
                                    value_gap_stable_po_objective)

def claim_text(ratio: float = 1.0) -> str:
    """The tested claim at the primary λ/β."""
    return (f"From an SFT model of moderate accuracy, Stable PO (penalty form, λ/β = {ratio:g}) keeps the held-out "
            "chosen log-prob from falling and gives higher held-out greedy exact-match accuracy than DPO.")


CLAIM = claim_text()
TEST = ("paired by seed and held-out problem; percentile bootstrap over problems (4,000 resamples, seeds kept "
        "together) at 95%: chosen holds if the interval of the mean Δ chosen log-prob is above −0.05 nats (falls if "
        "below); exact match higher if the interval of (Stable PO − DPO) is above 0 (lower if below); held = holds "
        "and higher, did_not_hold = falls or lower, else inconclusive; interval = the exact-match difference")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTSettings:
    """SFT of π_0 on the training problems' worked answers (token NLL, AdamW, constant after warmup)."""

    steps: int = 400
    """Optimizer steps (chosen for a moderate π_0 accuracy, leaving room both ways; not tuned on the claim)."""
    batch_size: int = 64
    """Sequences per step."""
    learning_rate: float = 3e-3
    """AdamW learning rate."""
    warmup_steps: int = 20
    """Linear warmup steps."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Stable PO on column addition (defaults: the full setting)."""

    task: A.ArithmeticTask = A.ArithmeticTask()
    """The arithmetic task (operand digits)."""
    model: lm.ModelConfig = lm.ModelConfig()
    """The tiny decoder."""
    sft: SFTSettings = SFTSettings()
    """SFT of π_0 (one per seed)."""
    precision: lm.Precision = lm.Precision()
    """Mixed precision of the preference-trained policies (``--precision.dtype`` / ``--precision.param-dtype``)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds: model initialisation, SFT and preference data order, near-miss draws."""
    num_train: int = 4096
    """Training problems (SFT rows and preference pairs)."""
    num_eval: int = 512
    """Held-out problems (the same for every seed and method)."""
    train: lm.TrainConfig = lm.TrainConfig(steps=150, batch_size=32, eval_every=25)
    """Preference fine-tuning, the same for every method (``seed`` is replaced by each seed)."""
    optimizer: lm.OptimizerConfig = lm.OptimizerConfig(learning_rate=1e-3, warmup_steps=10)
    """AdamW of every preference method."""
    beta: float = 0.1
    """DPO β (also the bilevel and value-gap forms' preference term)."""
    primary_ratio: float = 1.0
    """λ/β of the tested Stable PO run (and of the bilevel, value-gap and SimPO + Stable PO runs)."""
    penalty_ratios: tuple[float, ...] = (0.1, 1.0, 10.0)
    """λ/β of the Stable PO (penalty) sweep; must include ``primary_ratio``."""
    gap_ratios: tuple[float, ...] = (1.0,)
    """λ/β of the value-gap runs."""
    inner_lr: float = 0.05
    """η of the bilevel and value-gap forms' inner SFT step."""
    simpo_beta: float = 2.0
    """SimPO's β."""
    simpo_gamma: float = 1.0
    """SimPO's margin γ (γ/β = 0.5, the SimPO paper's usual ratio)."""
    methods: tuple[str, ...] = ("dpo", "stable_po", "bilevel", "value_gap", "simpo", "simpo_stable")
    """Families to run (``dpo`` is always run: every comparison is against it)."""
    n_boot: int = 4000
    """Bootstrap resamples."""
    quick: bool = False
    """The smoke preset (set by ``--quick``): the verdict is "smoke" whatever the numbers."""
    compile_cache: bool = True
    """JAX's persistent compilation cache under ``runs/_cache/jax`` (or ``$MOJAX_CACHE``)."""
    progress: bool = True
    """Progress bars."""
    out: str | None = None
    """Run directory (default ``runs/stable_po/<UTC time>``)."""

    def __post_init__(self):
        known = {"dpo", "stable_po", "bilevel", "value_gap", "simpo", "simpo_stable"}
        if not self.methods or set(self.methods) - known:
            raise ValueError(f"unknown or no methods {sorted(set(self.methods) - known)}; choose from {sorted(known)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        for name in ("beta", "simpo_beta", "primary_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("inner_lr", "simpo_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(r <= 0 for r in self.penalty_ratios + self.gap_ratios):
            raise ValueError("penalty_ratios and gap_ratios must be positive")
        if "stable_po" in self.methods and self.primary_ratio not in self.penalty_ratios:
            raise ValueError(f"penalty_ratios {self.penalty_ratios} must include primary_ratio {self.primary_ratio}")
        if self.num_eval < 2 or self.num_train < self.train.batch_size:
            raise ValueError("need num_eval >= 2 and num_train >= train.batch_size")


def get_config(quick: bool = False) -> Config:
    """The full setting, or with ``quick`` the CI smoke preset (2-digit task, tiny model, a few steps)."""
    if not quick:
        return Config()
    return Config(task=A.ArithmeticTask(digits=2), model=lm.QUICK_MODEL,
                  sft=SFTSettings(steps=20, batch_size=32, learning_rate=1e-2, warmup_steps=2), seeds=(0, 1),
                  num_train=64, num_eval=32, train=lm.TrainConfig(steps=4, batch_size=16, eval_every=2),
                  penalty_ratios=(1.0,), n_boot=200, quick=True, compile_cache=False, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------------


def run_list(config: Config) -> list[str]:
    """Method keys in run order, e.g. ``dpo``, ``stable_po_r1``, ``value_gap_r1``, ``simpo``."""
    runs = ["dpo"]
    for fam in config.methods:
        if fam == "stable_po":
            runs += [f"stable_po_r{r:g}" for r in config.penalty_ratios]
        elif fam in ("bilevel", "simpo_stable"):
            runs.append(f"{fam}_r{config.primary_ratio:g}")
        elif fam == "value_gap":
            runs += [f"value_gap_r{r:g}" for r in config.gap_ratios]
        elif fam == "simpo":
            runs.append("simpo")
    return runs


def method_label(key: str) -> str:
    """Display name of a method key."""
    fam, _, ratio = key.rpartition("_r")
    names = {"stable_po": "Stable PO (penalty)", "bilevel": "Stable PO (bilevel)",
             "value_gap": "Stable PO (value gap)", "simpo_stable": "SimPO + Stable PO"}
    if fam in names:
        return f"{names[fam]}, λ/β={ratio}"
    return {"dpo": "DPO", "simpo": "SimPO"}[key]


def objective_for(key: str, config: Config, *, mean_chosen_length: float) -> tuple[Any, dict[str, float]]:
    """``(library objective, hparams)`` of a method key; objectives of one family share one compiled step (λ, η,
    β are traced hyper-parameters)."""
    fam, _, ratio = key.rpartition("_r")
    lam = config.beta * float(ratio) if fam else 0.0
    if key == "dpo":
        return dpo_objective(beta=config.beta), {}
    if fam == "stable_po":
        return stable_po_objective(beta=config.beta, pref="dpo"), {"penalty": lam}
    if fam == "bilevel":
        return bilevel_stable_po_objective(beta=config.beta, pref="dpo"), {"penalty": lam,
                                                                           "inner_lr": config.inner_lr}
    if fam == "value_gap":
        return value_gap_stable_po_objective(beta=config.beta, pref="dpo"), {"penalty": lam,
                                                                             "inner_lr": config.inner_lr}
    simpo = stable_po_objective(beta=config.simpo_beta, gamma=config.simpo_gamma, pref="simpo")
    if key == "simpo":
        return simpo, {"penalty": 0.0}
    if fam == "simpo_stable":  # λ relative to SimPO's per-token gradient scale β/|y_w| on logπ(y_w)
        return simpo, {"penalty": float(ratio) * config.simpo_beta / mean_chosen_length}
    raise ValueError(f"unknown method {key!r}")


# ----------------------------------------------------------------------------------------------------------------
# One seed
# ----------------------------------------------------------------------------------------------------------------


def build_decoder(config: Config, seed: int) -> nnx.Module:
    """The untrained tiny decoder on the task's character vocabulary."""
    m = config.model
    dc = DecoderConfig(model_type="llama", vocab_size=A.VOCAB_SIZE, d_model=m.d_model, num_layers=m.num_layers,
                       num_heads=m.num_heads, mlp_dim=m.mlp_dim, max_positions=2 * config.task.width,
                       bos_token_id=A.BOS, eos_token_id=A.EOS, pad_token_id=A.PAD)
    return Decoder(dc, rngs=nnx.Rngs(seed))


def evaluate(model: nnx.Module, config: Config, held: lm.PairData, problems: A.Problems) -> dict[str, Any]:
    """Held-out chosen / rejected log-probs ``[P]`` and greedy exact match ``[P]``."""
    logps = lm.pair_logps(model, held)
    correct = A.exact_match(A.greedy_answers(model, config.task, problems), problems, config.task)
    return {"chosen": logps[:, 0], "rejected": logps[:, 1], "correct": correct}


def run_seed(config: Config, seed: int, train_problems: A.Problems, eval_problems: A.Problems) -> dict[str, Any]:
    """SFT π_0 for one seed, then every method from it; per-problem arrays and trajectories."""
    held = A.pair_data(config.task, eval_problems, seed=10_000 + seed)
    s = config.sft
    with Timer() as t_sft:
        sft_rows = A.sft_data(config.task, train_problems)
        policy, sft_hist = lm.train(build_decoder(config, seed), sft_objective(), sft_rows,
                                    lm.TrainConfig(steps=s.steps, batch_size=s.batch_size, seed=seed,
                                                   progress=config.progress),
                                    lm.OptimizerConfig(learning_rate=s.learning_rate, warmup_steps=s.warmup_steps),
                                    desc=f"SFT seed {seed}")
    policy = config.precision.apply(policy)
    base = evaluate(policy, config, held, eval_problems)
    print(f"seed {seed}: π_0 exact match {base['correct'].mean():.3f} (SFT {t_sft.seconds:.0f} s)", flush=True)
    pairs = lm.with_ref_logps(A.pair_data(config.task, train_problems, seed=seed), [policy])
    mean_len = float(pairs.arrays["loss_mask"][:, 0].sum(-1).mean())
    out = {"sft": {**base, "seconds": t_sft.seconds, "final_nll": sft_hist.final("nll")}, "methods": {},
           "mean_chosen_length": mean_len}

    def eval_fn(model):
        e = evaluate(model, config, held, eval_problems)
        return {"chosen_logps": float(e["chosen"].mean()), "rejected_logps": float(e["rejected"].mean()),
                "exact_match": float(e["correct"].mean())}

    for key in run_list(config):
        objective, hparams = objective_for(key, config, mean_chosen_length=mean_len)
        with Timer() as timer:
            trained, hist = lm.train(policy, objective, pairs, dataclasses.replace(config.train, seed=seed),
                                     config.optimizer, hparams=hparams, eval_fn=eval_fn,
                                     desc=f"{method_label(key)} seed {seed}", progress=config.progress)
        final = evaluate(trained, config, held, eval_problems)
        out["methods"][key] = {**final, "train_seconds": hist.seconds, "wall_seconds": timer.seconds,
                               "compiled": hist.compiled, "hparams": hparams,
                               "trajectory": {k: [e[k] for e in hist.evals]
                                              for k in ("step", "chosen_logps", "rejected_logps", "exact_match")}}
        print(f"seed {seed} {method_label(key)}: exact match {final['correct'].mean():.3f}, Δ chosen "
              f"{(final['chosen'] - base['chosen']).mean():+.2f}, Δ rejected "
              f"{(final['rejected'] - base['rejected']).mean():+.2f} ({timer.seconds:.0f} s)", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Statistics and the verdict
# ----------------------------------------------------------------------------------------------------------------


def summarize(per_seed: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Per-method numbers with paired intervals against DPO, and the verdict block."""
    def stack(key, what):
        return np.stack([s["methods"][key][what] if key != "sft" else s["sft"][what] for s in per_seed])

    base_chosen, base_rejected = stack("sft", "chosen"), stack("sft", "rejected")
    dpo_correct, sft_correct = stack("dpo", "correct"), stack("sft", "correct")
    methods: dict[str, Any] = {}
    for key in per_seed[0]["methods"]:
        correct = stack(key, "correct")
        d_chosen, d_rejected = stack(key, "chosen") - base_chosen, stack(key, "rejected") - base_rejected
        row = {"label": method_label(key), "exact_match": float(correct.mean()),
               "exact_match_seeds": st.seed_means(correct),
               "chosen_logp_delta": st.paired_bootstrap(d_chosen, n_boot=config.n_boot),
               "chosen_logp_delta_seeds": st.seed_means(d_chosen),
               "rejected_logp_delta": float(d_rejected.mean()), "hparams": per_seed[0]["methods"][key]["hparams"],
               "train_seconds": [s["methods"][key]["train_seconds"] for s in per_seed]}
        # Against π_0 as well: did preference optimisation improve on SFT (secondary; same test)?
        row["vs_sft"] = {"exact_match_diff": st.paired_bootstrap(correct.astype(float) - sft_correct.astype(float),
                                                                 n_boot=config.n_boot),
                         "mcnemar": st.mcnemar(correct, sft_correct)}
        if key != "dpo":
            diff = correct.astype(float) - dpo_correct.astype(float)
            row["vs_dpo"] = {"exact_match_diff": st.paired_bootstrap(diff, n_boot=config.n_boot),
                             "exact_match_diff_seeds": st.seed_means(diff),
                             "mcnemar": st.mcnemar(correct, dpo_correct)}
        traj = [s["methods"][key]["trajectory"] for s in per_seed]
        row["trajectory"] = {"step": traj[0]["step"],
                             **{k: np.mean([t[k] for t in traj], axis=0).tolist()
                                for k in ("chosen_logps", "rejected_logps", "exact_match")}}
        methods[key] = row
    sft = {"exact_match": float(stack("sft", "correct").mean()), "exact_match_seeds": st.seed_means(
        stack("sft", "correct")), "chosen_logps": float(base_chosen.mean()),
        "rejected_logps": float(base_rejected.mean()), "seconds": [s["sft"]["seconds"] for s in per_seed],
        "final_nll": [s["sft"]["final_nll"] for s in per_seed]}
    primary = f"stable_po_r{config.primary_ratio:g}"
    claim: dict[str, Any] = {"primary": primary}
    if primary in methods:
        dec = st.decide(methods[primary]["chosen_logp_delta"], methods[primary]["vs_dpo"]["exact_match_diff"])
        claim.update(dec)
        ci = methods[primary]["vs_dpo"]["exact_match_diff"]
        test = "none: --quick smoke preset, numbers not meaningful" if config.quick else TEST
        verdict = Verdict(claim=claim_text(config.primary_ratio), result="smoke" if config.quick else dec["result"],
                          test=test, seeds=len(per_seed), ci=(ci["lo"], ci["hi"]))
        claim["dpo_chosen_falls"] = bool(methods["dpo"]["chosen_logp_delta"]["hi"] < -st.CHOSEN_TOL)
    else:
        verdict = Verdict(claim=claim_text(config.primary_ratio), result="smoke" if config.quick else "inconclusive",
                          test="not tested: the Stable PO (penalty) family was not run", seeds=len(per_seed))
    return {"verdict": dataclasses.asdict(verdict), "methods": methods, "sft": sft, "claim": claim,
            "mean_chosen_length": float(np.mean([s["mean_chosen_length"] for s in per_seed]))}


def claim_paragraph(metrics: dict[str, Any], quick: bool) -> str:
    """What the numbers say, written from them (never canned)."""
    m, claim = metrics["methods"], metrics["claim"]
    primary = claim["primary"]
    if quick:
        return "Smoke preset: the pipeline ran end to end; the numbers say nothing about the paper."
    if primary not in m:
        return "The Stable PO (penalty) family was not run, so the claim was not tested."
    dpo, spo = m["dpo"], m[primary]
    d = spo["vs_dpo"]["exact_match_diff"]
    dc = dpo["chosen_logp_delta"]
    parts = [f"π_0 (SFT) reaches exact match {metrics['sft']['exact_match']:.3f}. DPO moves the held-out chosen "
             f"log-prob by {dc['mean']:+.2f} nats (95% CI [{dc['lo']:+.2f}, {dc['hi']:+.2f}]) and ends at exact match "
             f"{dpo['exact_match']:.3f}; "
             + ("likelihood displacement is present." if claim.get("dpo_chosen_falls") else
                "the chosen log-prob did not fall significantly, so there is little displacement to fix."),
             f"{spo['label']} moves it by {spo['chosen_logp_delta']['mean']:+.2f} "
             f"([{spo['chosen_logp_delta']['lo']:+.2f}, {spo['chosen_logp_delta']['hi']:+.2f}]) and reaches "
             f"{spo['exact_match']:.3f}: exact-match difference to DPO {d['mean']:+.3f} (95% CI [{d['lo']:+.3f}, "
             f"{d['hi']:+.3f}], McNemar p = {spo['vs_dpo']['mcnemar']['p']:.3g}); against π_0 "
             f"{_ci(spo['vs_sft']['exact_match_diff'])}."]
    verdicts = {"held": "The claim held: the chosen log-prob did not fall and exact match was higher than DPO's.",
                "did_not_hold": "The claim did not hold: " + ("the chosen log-prob fell" if claim["chosen_falls"] else
                                                              "exact match was lower than DPO's") + ".",
                "inconclusive": "Inconclusive: " + ("the chosen log-prob held, but " if claim["chosen_holds"] else "")
                + "the exact-match interval includes 0" + ("" if claim["chosen_holds"] else
                                                           ", and the chosen log-prob's interval straddles the "
                                                           "tolerance") + "."}
    parts.append(verdicts[metrics["verdict"]["result"]])
    better = [r["label"] for k, r in m.items() if k != "dpo" and r["vs_dpo"]["exact_match_diff"]["lo"] > 0]
    worse = [r["label"] for k, r in m.items() if k != "dpo" and r["vs_dpo"]["exact_match_diff"]["hi"] < 0]
    parts.append(f"Other runs (secondary, not corrected for multiple comparisons): significantly above DPO: "
                 f"{', '.join(better) or 'none'}; significantly below: {', '.join(worse) or 'none'}.")
    return " ".join(parts)


def _ci(d: dict[str, float]) -> str:
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def results_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's table: one row per method (π_0 first)."""
    sft = metrics["sft"]
    rows = [{"method": "π_0 (SFT)", "exact match": sft["exact_match"],
             "per seed": " / ".join(f"{v:.3f}" for v in sft["exact_match_seeds"]), "Δ EM vs DPO [95% CI]": "–",
             "McNemar p": None, "Δ chosen logp [95% CI]": f"0 ({sft['chosen_logps']:.2f})",
             "Δ rejected logp": f"0 ({sft['rejected_logps']:.2f})"}]
    for key, r in metrics["methods"].items():
        c = r["chosen_logp_delta"]
        row = {"method": r["label"], "exact match": r["exact_match"],
               "per seed": " / ".join(f"{v:.3f}" for v in r["exact_match_seeds"]),
               "Δ EM vs DPO [95% CI]": "–", "McNemar p": None,
               "Δ EM vs π_0 [95% CI]": _ci(r["vs_sft"]["exact_match_diff"]),
               "Δ chosen logp [95% CI]": f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}]",
               "Δ rejected logp": f"{r['rejected_logp_delta']:+.2f}",
               "train s (mean)": float(np.mean(r["train_seconds"]))}
        if "vs_dpo" in r:
            d = r["vs_dpo"]["exact_match_diff"]
            row["Δ EM vs DPO [95% CI]"] = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
            row["McNemar p"] = f"{r['vs_dpo']['mcnemar']['p']:.3g}"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(config: Config) -> Path:
    """Run every seed and method; write the run directory and return its path."""
    from experiments._common import make_run_dir, save_config

    run_dir = make_run_dir("stable_po", config.out)
    save_config(run_dir, config)
    if config.compile_cache:
        lm.enable_compilation_cache()
    train_problems, eval_problems = A.make_problems(config.task, num_train=config.num_train,
                                                    num_eval=config.num_eval, seed=0)
    with Timer() as total:
        per_seed = [run_seed(config, seed, train_problems, eval_problems) for seed in config.seeds]
    metrics = summarize(per_seed, config)
    # Per-problem arrays [S, P] (correctness, held-out log-probs) for later paired analyses.
    np.savez_compressed(run_dir / "per_problem.npz", **{
        f"{key}/{what}": np.stack([(s["sft"] if key == "sft" else s["methods"][key])[what] for s in per_seed])
        for key in ["sft", *per_seed[0]["methods"]] for what in ("correct", "chosen", "rejected")})
    metrics["total_seconds"] = total.seconds
    save_metrics(run_dir, metrics)
    m = metrics["methods"]
    plot_curve_panels(run_dir / "logp_trajectories.png",
                      {f"{what} (held-out, mean over seeds)": {r["label"]: (r["trajectory"]["step"],
                                                                            r["trajectory"][f"{what}_logps"])
                                                               for r in m.values()} for what in ("chosen", "rejected")},
                      ylabels=["mean log π(y_w|x)", "mean log π(y_l|x)"])
    plot_curve_panels(run_dir / "exact_match.png",
                      {"greedy exact match (held-out, mean over seeds)": {
                          r["label"]: (r["trajectory"]["step"], r["trajectory"]["exact_match"]) for r in m.values()}},
                      ylabels="exact match")
    c = config
    what = (f"Column addition of two {c.task.digits}-digit numbers with a worked answer (chosen: correct; rejected: "
            f"one column off by one). {c.num_train} training / {c.num_eval} held-out problems (the same held-out set "
            f"for every seed). Per seed ({list(c.seeds)}): a decoder (d {c.model.d_model}, {c.model.num_layers} "
            f"layers) SFT'd for {c.sft.steps} steps (π_0), then every method {c.train.steps} AdamW steps (lr "
            f"{c.optimizer.learning_rate}, batch {c.train.batch_size}) from π_0; β = {c.beta}, λ/β ∈ "
            f"{list(c.penalty_ratios)} (penalty), {c.primary_ratio:g} (bilevel, SimPO + Stable PO), "
            f"{list(c.gap_ratios)} (value gap); η = {c.inner_lr}; SimPO β = {c.simpo_beta}, γ = {c.simpo_gamma}; "
            f"mean chosen length {metrics['mean_chosen_length']:.1f} tokens. Total {total.seconds:.0f} s.")
    write_report(run_dir, title="Stable PO vs DPO on a verifiable reasoning task", what_ran=what,
                 command=command_line(), tables={"Held-out results (pooled over seeds)": results_rows(metrics)},
                 plots=[("logp_trajectories.png", "held-out chosen / rejected log-probs during training"),
                        ("exact_match.png", "held-out greedy exact match during training")],
                 claim=claim_paragraph(metrics, config.quick), verdict=Verdict(**{
                     **metrics["verdict"], "ci": None if metrics["verdict"]["ci"] is None
                     else tuple(metrics["verdict"]["ci"])}))
    print(f"report: {run_dir / 'report.md'}")
    return run_dir


if __name__ == "__main__":
    cli(get_config, main)
