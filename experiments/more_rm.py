"""MORE: one reward model trained on several preference datasets with min-norm loss reweighting (docs/methods/more.md).

Run::

    python -m experiments.more_rm                    # synthetic task, a few minutes on 2 CPU cores
    python -m experiments.more_rm --quick            # seconds-long smoke preset (CI); verdict "smoke"
    python -m experiments.more_rm --preset hh-smollm2          # the decisive run: HH-RLHF × frozen SmolLM2-135M
    python -m experiments.more_rm --preset hh-smollm2 --quick  # its smoke run (random features, no model)
    H=../shared/data/hh-rlhf
    python -m experiments.more_rm --data.data-paths $H/helpful-base-test-part1.jsonl.gz \\
        $H/harmless-base-test-part1.jsonl.gz $H/helpful-online-test.jsonl.gz \\
        $H/helpful-rejection-sampled-test.jsonl.gz --data.tokenizer-path ../shared/data/gpt2-bpe

Protocol (Zeng et al., "Diverse preferences ... MORE", paper ``more-diversified-preferences.md``). K preference
datasets that genuinely disagree: on the synthetic task, dataset k holds base-distribution pairs labelled by
Bradley–Terry on its own mixture of the true rewards, by default a shared preference plus a dataset-specific bias —
``½ topic + ½ class_a``, ``½ topic + ½ class_b`` (class_a and class_b conflict, corr −0.5) and
``½ topic + ½ brevity`` — equal sizes, independent prompts. One reward model ``r(x, y) = wᵀh(x, y)`` (a bias-free
head on the last real token's hidden state; backbone = the SFT policy π_0 shared with the other LM experiments,
i.e. the usual "RM from the SFT model" start) is trained on all of them by:

- **MORE** — every step, per-dataset BT losses ``L_k``, head-only gradients ``g_k`` averaged as the released code
  (``m ← 0.01·m + 0.99·g`` from the head's initial weights; ``--averaging ema`` = mojax's earlier
  ``m ← 0.99·m + 0.01·g``) and L2-normalised, ``λ = argmin_{λ∈Δ^K} ‖Σ λ_k g_k‖²`` and the loss ``Σ λ_k L_k``
  (λ held constant);
- **hybrid** — the plain BT loss on the same pooled batches (uniform mixing);
- **sequential** — dataset 0, then 1, …, each for ``steps/K`` steps (same total steps);
- **ensemble** — one RM per dataset (``steps/K`` steps each, so every dataset gets the same number of epochs as in
  the pooled runs), rewards averaged.

Evaluated on held-out pairs of every dataset: pairwise accuracy (``r(y_w) > r(y_l)``), ECE with 5/10/20 equal-width
bins of the confidence ``max(p, 1−p)``, ``p = σ(r(y_w) − r(y_l))`` (Guo et al. 2017; the chosen response is always
first, so the ``p``-vs-label form would be trivially 1), per dataset and overall; on the synthetic task also the
calibration against the *true* preference probability ``q = σ(ΔR_k/τ)`` of each held-out pair (mean |p − q| and a
binned reliability error over both orientations of every pair), the Bayes accuracy ``mean max(q, 1−q)`` as the
ceiling, and accuracy against the true reward order. Also the λ trajectory and the reward-value distributions.

Outputs: ``config.json``, ``metrics.json`` (``{"methods": {name: {"overall": {...}, "per_dataset": {ds: {...}},
"reward_stats": {...}, "train_seconds"}}, "datasets", "bayes_accuracy", "lambda": {"mean", "final"}, "claim"}``),
``lambda_qp.npz`` (per-step λ and the QP input rows), ``lambda.png``, ``reward_distributions.png``,
``reliability.png`` (synthetic), ``report.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from experiments import _more_heads as H
from experiments._common import (
    Timer,
    cli,
    command_line,
    plot_curves,
    plot_histograms,
    save_metrics,
    Verdict,
    write_report,
)
from experiments._rm_common import (
    make_reward_model,
    mixture_names,
    pair_rewards,
    plot_reliability,
    score_predictions,
    synthetic_datasets,
)
from mojax.data import synthetic_lm
from mojax.train import DataConfig, Objective
from mojax.train.objectives import bradley_terry_objective, more_objective
from mojax.train.objectives.reward import MORE_AVERAGING

METHOD_LABELS = {"more": "MORE", "hybrid": "hybrid", "sequential": "sequential", "ensemble": "ensemble"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(lm.ExperimentConfig):
    """MORE reward-model experiment settings (defaults: a few minutes on 2 CPU cores)."""

    train: lm.TrainConfig = lm.TrainConfig(steps=300, batch_size=48)
    """Optimisation shared by every method (``steps`` = total steps of a pooled run)."""
    optimizer: lm.OptimizerConfig = lm.OptimizerConfig(learning_rate=3e-3, warmup_steps=10)
    """AdamW of every method."""
    # Rows of 4 (a fixed-length inner tuple lets tyro parse `--mixtures 1 0 0 0 0 1 0 0` as K = 2 rows).
    mixtures: tuple[tuple[float, float, float, float], ...] = (
        (0.5, 0.0, 0.5, 0.0), (0.0, 0.5, 0.5, 0.0), (0.0, 0.0, 0.5, 0.5))
    """K rows of weights over ``synthetic_lm.OBJECTIVES`` (class_a, class_b, topic, brevity); dataset k is labelled
    by Bradley–Terry (temperature ``task.temperature``) on ``mixtures[k] · R``. Default: a shared preference (topic)
    plus a different dataset-specific one each (class_a, class_b — which conflict — and brevity), the paper's
    "shared preference + dataset bias" picture. One-hot rows label by single rewards."""
    num_train_pairs: int = 1024
    """Training pairs per synthetic dataset."""
    num_eval_pairs: int = 512
    """Held-out pairs per synthetic dataset."""
    methods: tuple[str, ...] = tuple(METHOD_LABELS)
    """Which of ``METHOD_LABELS`` to run."""
    averaging: str = "released"
    """MORE's running average of the head gradients: ``"released"`` (default; dunzeng/MORE ``trainer.py``:
    ``m ← (1 − alpha)·m + alpha·g``, weight ``alpha`` = 0.99 on the **new** gradient, ``m`` starting from the head's
    initial weights), ``"ema"`` (mojax's earlier averaging: ``m ← ema_decay·m + (1 − ema_decay)·g``, weight 0.99 on
    the **old** average, the first gradient initialising ``m``) or ``"none"`` (raw gradients)."""
    alpha: float = 0.99
    """``averaging="released"``: weight of the new gradient (the released code's ``--alpha``)."""
    ema_decay: float = 0.99
    """``averaging="ema"`` only: weight of the old average."""
    normalize: bool = True
    """L2-normalise MORE's gradient rows before the QP."""
    ece_bins: tuple[int, ...] = (10, 5, 20)
    """The ECE bin counts reported (the first also sets the reliability diagram's bins)."""
    data: DataConfig = DataConfig(max_examples=400, eval_fraction=0.25)
    """Real preference files instead, one dataset each (e.g. the four HH-RLHF subsets); the backbone is
    ``data.model_path`` or a tiny decoder of the tokenizer's vocabulary (no SFT); no true rewards there."""

    def __post_init__(self):
        unknown = set(self.methods) - set(METHOD_LABELS)
        if self.averaging not in MORE_AVERAGING:
            raise ValueError(f"averaging must be one of {MORE_AVERAGING}, got {self.averaging!r}")
        if unknown or not self.methods:
            raise ValueError(f"unknown or no methods {sorted(unknown)}; choose from {sorted(METHOD_LABELS)}")
        k = len(self.data.data_paths) if self.data.real else len(self.mixtures)
        if not self.data.real and any(len(m) != len(synthetic_lm.OBJECTIVES) or not any(m) for m in self.mixtures):
            raise ValueError(f"each mixture needs {len(synthetic_lm.OBJECTIVES)} weights (over "
                             f"{synthetic_lm.OBJECTIVES}), not all zero; got {self.mixtures}")
        if k < 2:
            raise ValueError(f"MORE needs at least 2 datasets, got {k}")
        if self.train.steps < k:
            raise ValueError(f"train.steps={self.train.steps} must be >= the number of datasets {k} (sequential and "
                             "ensemble give each dataset steps // K)")
        if not self.ece_bins or min(self.ece_bins) < 1:
            raise ValueError(f"ece_bins must be positive bin counts, got {self.ece_bins}")
        lm.check_real_data(self.data)
        if self.num_train_pairs < self.train.batch_size or self.num_eval_pairs < 1:
            raise ValueError("num_train_pairs must be >= train.batch_size and num_eval_pairs >= 1")


def get_config(quick: bool = False) -> Config:
    """The default run, or with ``quick`` the CI smoke preset (tiny model, few steps; numbers not meaningful)."""
    if not quick:
        return Config()
    return Config(model=lm.QUICK_MODEL, sft=lm.QUICK_SFT, train=lm.TrainConfig(steps=6, batch_size=24),
                  optimizer=lm.OptimizerConfig(learning_rate=1e-3), num_train_pairs=48, num_eval_pairs=32,
                  progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """Backbone, datasets and their names (``true_margin [E]``: R_k(y_w) − R_k(y_l) of the labelling reward)."""

    backbone: nnx.Module
    train: lm.PairData
    held: lm.PairData
    names: list[str]
    true_margin: np.ndarray | None
    info: dict[str, Any]


def real_datasets(config: Config) -> tuple[nnx.Module, lm.PairData, lm.PairData, list[str], dict[str, Any]]:
    """One dataset per file (chosen-first pairs, ``dataset_id`` = file index), split per file; the backbone (no SFT:
    ``data.model_path``, or a tiny decoder of the tokenizer's full vocabulary)."""
    k = len(config.data.data_paths)
    backbone, info, splits = lm.real_policy(config.data, config.model, dataclasses.replace(config.sft, steps=0),
                                            objectives=[0] * k, seed=config.seed, compact_vocab=False,
                                            cache_dir=config.cache_dir, progress=config.progress)

    def tag(d: lm.PairData, i: int) -> lm.PairData:
        return dataclasses.replace(d, arrays={**d.arrays, "dataset_id": np.full(len(d), i, np.int32)})

    train = lm.concat_pairs([tag(t, i) for i, (t, _) in enumerate(splits)])
    held = lm.concat_pairs([tag(h, i) for i, (_, h) in enumerate(splits)])
    names = [Path(p).name.split(".")[0] for p in config.data.data_paths]
    return backbone, train, held, names, {"data_reports": info["data_reports"], "width": train.width}


def build_setup(config: Config) -> Setup:
    """Backbone and train / held-out multi-dataset pairs, synthetic or real."""
    if not config.data.real:
        backbone, sft_info = lm.sft_policy(config.task, config.model, config.sft, model_path=config.data.model_path,
                                           cache_dir=config.cache_dir, progress=config.progress)
        backbone = config.precision.apply(backbone)
        train, _ = synthetic_datasets(config.task, config.mixtures, num_pairs=config.num_train_pairs,
                                      seed=config.seed)
        held, true_margin = synthetic_datasets(config.task, config.mixtures, num_pairs=config.num_eval_pairs,
                                               seed=config.seed + 1)
        return Setup(backbone=backbone, train=train, held=held, names=mixture_names(config.mixtures),
                     true_margin=true_margin, info={"sft": sft_info})
    backbone, train, held, names, info = real_datasets(config)
    return Setup(backbone=backbone, train=train, held=held, names=names, true_margin=None, info=info)


# ----------------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------------


def train_rm(model: nnx.Module, objective: Objective, data: lm.PairData, config: Config, *, desc: str,
             **overrides: Any) -> tuple[nnx.Module, lm.History]:
    """One reward-model run through :func:`experiments._lm_common.train` (``overrides`` replace fields of
    ``config.train``, e.g. ``steps``, ``seed``); the batch is cut to a per-dataset subset's size when smaller."""
    run = dataclasses.replace(config.train, **overrides)
    return lm.train(model, objective, data, run, config.optimizer, desc=desc, progress=config.progress)


def with_qp_rows(objective: Objective) -> Objective:
    """``objective`` (:func:`mojax.train.objectives.more_objective` with an averaging) also reporting its QP input as
    the metric ``qp_rows [K, P_head]``: the averaged head-gradient rows λ was computed from (before the optional row
    normalisation), i.e. ``λ = min_norm_weights(qp_rows, normalize=normalize)`` — logged so tests can re-solve it."""

    def fn(model, batch, rng, hparams, extras):
        loss, metrics, new_extras = objective.fn(model, batch, rng, hparams, extras)
        return loss, {**metrics, "qp_rows": new_extras["ema"]}, new_extras

    return dataclasses.replace(objective, fn=fn)


def make_more_objective(config: Config, k: int) -> Objective:
    """MORE's objective for ``k`` datasets with ``config``'s averaging (default the released code's), logging its QP
    rows (:func:`with_qp_rows`) whenever there is an average."""
    objective = more_objective(num_datasets=k, averaging=config.averaging, alpha=config.alpha,
                               ema_decay=config.ema_decay if config.averaging == "ema" else None,
                               normalize=config.normalize)
    return objective if config.averaging == "none" else with_qp_rows(objective)


def _subset(data: lm.PairData, k: int) -> lm.PairData:
    return data.subset(np.flatnonzero(data.arrays["dataset_id"] == k))


def run_method(method: str, setup: Setup, config: Config, bt_objective: Any = None) -> dict[str, Any]:
    """Train one method; returns ``{"rewards": [E, 2] held-out rewards, "seconds", "history": [History], ...}``.

    ``bt_objective``: one Bradley–Terry objective shared by hybrid, sequential and ensemble, so their runs reuse one
    compiled step (see :func:`train_rm`).
    """
    k = len(setup.names)
    rm = make_reward_model(setup.backbone, seed=config.seed)
    if method == "more":
        objective = make_more_objective(config, k)
        model, hist = train_rm(rm, objective, setup.train, config, desc="MORE")
        return {"rewards": pair_rewards(model, setup.held), "seconds": hist.seconds, "history": [hist]}
    bt = bt_objective if bt_objective is not None else bradley_terry_objective()
    if method == "hybrid":
        model, hist = train_rm(rm, bt, setup.train, config, desc="hybrid")
        return {"rewards": pair_rewards(model, setup.held), "seconds": hist.seconds, "history": [hist]}
    per = config.train.steps // k
    if method == "sequential":
        model, hists = rm, []
        for d in range(k):
            model, hist = train_rm(model, bt, _subset(setup.train, d), config, steps=per,
                                   seed=config.train.seed + d, desc=f"sequential {d}")
            hists.append(hist)
        return {"rewards": pair_rewards(model, setup.held), "seconds": sum(h.seconds for h in hists), "history": hists}
    if method == "ensemble":
        members, hists = [], []
        for d in range(k):
            member, hist = train_rm(make_reward_model(setup.backbone, seed=config.seed + d), bt,
                                    _subset(setup.train, d), config, steps=per, seed=config.train.seed + d,
                                    desc=f"ensemble {d}")
            members.append(pair_rewards(member, setup.held))
            hists.append(hist)
        return {"rewards": np.mean(members, axis=0), "member_rewards": np.stack(members),
                "seconds": sum(h.seconds for h in hists), "history": hists}
    raise ValueError(f"unknown method {method!r}")


def evaluate(rewards: np.ndarray, setup: Setup, config: Config) -> dict[str, Any]:
    """Overall and per-dataset scores of held-out rewards ``[E, 2]``, and reward-value statistics."""
    margin = rewards[:, 0] - rewards[:, 1]
    ids = setup.held.arrays["dataset_id"]
    q = None if setup.held.true_prob is None else setup.held.true_prob[:, 0]
    tm = setup.true_margin

    def scores(sel: np.ndarray) -> dict[str, float]:
        return score_predictions(margin[sel], ece_bins=config.ece_bins, true_prob=None if q is None else q[sel],
                                 true_margin=None if tm is None else tm[sel])

    flat = rewards.ravel()
    return {"overall": scores(np.ones_like(ids, bool)),
            "per_dataset": {name: scores(ids == d) for d, name in enumerate(setup.names)},
            "reward_stats": {"mean": float(flat.mean()), "std": float(flat.std()),
                             "max_abs": float(np.abs(flat).max()), "mean_abs_margin": float(np.abs(margin).mean())}}


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def plot_reward_distributions(path: Path, rewards: dict[str, np.ndarray]) -> Path:
    """Histograms of held-out reward values (chosen and rejected) and of the margins, one colour per method."""
    panels = {"": {METHOD_LABELS[n]: r for n, r in rewards.items()},
              " ": {METHOD_LABELS[n]: r[:, 0] - r[:, 1] for n, r in rewards.items()}}
    return plot_histograms(path, panels, xlabels=["reward r(x, y), held-out responses", "margin r(y_w) − r(y_l)"],
                           step=True)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def is_quick(config: Config) -> bool:
    """Whether ``config`` is the smoke preset's scale (its verdict is "smoke" whatever the numbers)."""
    return config.model == lm.QUICK_MODEL or config.train.steps < 50


def decide_claim(metrics: dict[str, Any], rewards: dict[str, np.ndarray], setup: Setup,
                 config: Config) -> tuple[str, dict, Verdict]:
    """The paper's claim (MORE: equal-or-better accuracy, lower ECE than hybrid) judged by the same stated test as the
    HH run (:data:`experiments._more_heads.TEST`): a bootstrap over held-out pairs (one training seed here, so the
    interval covers the evaluation sample, not training noise). ``--quick`` runs are always "smoke"."""
    hcfg = H.HeadsConfig(seeds=1, ece_bins=config.ece_bins, bootstrap=2000)
    margins = {m: (r[:, 0] - r[:, 1])[None] for m, r in rewards.items()}
    summary = H.summarize({"dataset": setup.held.arrays["dataset_id"], "names": setup.names, "margins": margins},
                          hcfg)
    verdict = H.decide(summary, hcfg, quick=is_quick(config))
    if verdict.result == "smoke":
        return ("Smoke run (tiny model, few steps): it checks that every method runs and draws no conclusion about "
                "the paper's claim."), {}, verdict
    if "more" not in summary or "hybrid" not in summary:
        return "MORE and hybrid were not both run, so the claim was not tested.", {}, verdict
    row = summary["more"]["overall"]
    ece_key = f"ece_{config.ece_bins[0]}"
    fmt = lambda n: f"{row['d_' + n]:+.4f} [{row['d_' + n + '_ci'][0]:+.4f}, {row['d_' + n + '_ci'][1]:+.4f}]"  # noqa
    text = (f"MORE − hybrid over {row['num_pairs']} held-out pairs: Δaccuracy {fmt('accuracy')}, ΔECE-10 "
            f"{fmt('ece_10')} (95% bootstrap CI over held-out pairs, one training seed). Result by the stated test: "
            f"{verdict.result.replace('_', ' ')}.")
    summary_out = {"accuracy_diff": row["d_accuracy"], "accuracy_diff_ci": row["d_accuracy_ci"],
                   "ece_10_diff": row["d_ece_10"], "ece_10_diff_ci": row["d_ece_10_ci"],
                   f"{ece_key}_diff": row[f"d_{ece_key}"]}
    mo, hy = metrics["methods"]["more"]["overall"], metrics["methods"]["hybrid"]["overall"]
    if "true_prob_mae" in mo:
        text += (f" Against the true preference probabilities, mean |p − q| is {mo['true_prob_mae']:.4f} (MORE) vs "
                 f"{hy['true_prob_mae']:.4f} (hybrid).")
        summary_out["true_prob_mae_diff"] = mo["true_prob_mae"] - hy["true_prob_mae"]
    if "bayes_accuracy" in metrics:
        chance = [n for n in setup.names
                  if max(v["per_dataset"][n]["accuracy"] for v in metrics["methods"].values()) < 0.55]
        if chance:
            text += (" Every method is within 0.05 of chance on " + ", ".join(chance) + " (Bayes accuracy "
                     + ", ".join(f"{metrics['bayes_accuracy'][n]:.3f}" for n in chance)
                     + "): ECE there measures the over-confidence of a model that learned nothing, not calibration.")
    lam = metrics.get("lambda")
    if lam:
        text += (" MORE's λ averaged " + ", ".join(f"{n} {v:.3f}" for n, v in zip(metrics["datasets"], lam["mean"]))
                 + " over training.")
    text += (" Caveats: one training seed, a 0.1M-parameter backbone and synthetic datasets; the decisive run is "
             "`--preset hh-smollm2` (real HH-RLHF data, SmolLM2 features, 10 seeds).")
    return text, summary_out, verdict


def main(config: Config) -> Path:
    """Run every method, write metrics, plots and the report; return the run directory."""
    run_dir = config.start("more_rm")
    setup = build_setup(config)
    results: dict[str, dict[str, Any]] = {}
    bt = bradley_terry_objective()  # one objective for hybrid, sequential and ensemble: one compiled step
    for method in config.methods:
        with Timer() as t:
            results[method] = run_method(method, setup, config, bt)
        results[method]["wall_seconds"] = t.seconds
    rewards = {m: r["rewards"] for m, r in results.items()}
    metrics: dict[str, Any] = {
        "datasets": setup.names,
        "num_train_pairs": len(setup.train), "num_eval_pairs": len(setup.held),
        "methods": {m: {**evaluate(r["rewards"], setup, config), "train_seconds": r["seconds"],
                        "wall_seconds": r["wall_seconds"]} for m, r in results.items()},
        "setup": setup.info,
    }
    if setup.held.true_prob is not None:
        q = setup.held.true_prob[:, 0]
        ids = setup.held.arrays["dataset_id"]
        bayes = np.maximum(q, 1 - q)
        metrics["bayes_accuracy"] = {"overall": float(bayes.mean()),
                                     **{n: float(bayes[ids == d].mean()) for d, n in enumerate(setup.names)}}
    plots = []
    if "more" in results:
        hist = results["more"]["history"][0]
        lam = np.stack(hist.arrays["lambda"])  # [S, K]
        metrics["lambda"] = {"mean": lam.mean(0), "final": lam[-1], "min": lam.min(0), "max": lam.max(0)}
        npz = {"lambda": lam}
        if "qp_rows" in hist.arrays:
            npz["qp_rows"] = np.stack(hist.arrays["qp_rows"])  # [S, K, P]
        np.savez(run_dir / "lambda_qp.npz", normalize=np.bool_(config.normalize), **npz)
        plot_curves(run_dir / "lambda.png", {f"λ {n}": lam[:, d] for d, n in enumerate(setup.names)},
                    ylabel="λ (MORE)", title="MORE's min-norm weights per step")
        plots.append(("lambda.png", "MORE λ trajectory"))
    plot_reward_distributions(run_dir / "reward_distributions.png", rewards)
    plots.append(("reward_distributions.png", "held-out reward distributions"))
    if setup.held.true_prob is not None:
        plot_reliability(run_dir / "reliability.png", {METHOD_LABELS[m]: r for m, r in rewards.items()},
                         setup.held.true_prob[:, 0], num_bins=config.ece_bins[0])
        plots.append(("reliability.png", "reliability against the true preference probability"))
    claim, summary, verdict = decide_claim(metrics, rewards, setup, config)
    metrics["claim"] = {"text": claim, **summary}
    metrics["verdict"] = dataclasses.asdict(verdict)
    save_metrics(run_dir, metrics)
    write_more_report(run_dir, config, setup, metrics, plots, verdict)
    return run_dir


def write_more_report(run_dir: Path, config: Config, setup: Setup, metrics: dict[str, Any],
                      plots: Sequence[tuple[str, str]], verdict: Verdict | None = None) -> Path:
    """``report.md`` from ``metrics`` (the plots must already be in ``run_dir``)."""
    cols = ["accuracy", *[f"ece_{m}" for m in config.ece_bins]]
    if setup.held.true_prob is not None:
        cols += ["true_prob_mae", "true_prob_ece", "true_order_accuracy"]
    overall = [{"method": METHOD_LABELS[m], **{c: v["overall"].get(c) for c in cols},
                "max abs reward": v["reward_stats"]["max_abs"], "train s": v["train_seconds"]}
               for m, v in metrics["methods"].items()]
    per_ds = [{"method": METHOD_LABELS[m], "dataset": n, **{c: v["per_dataset"][n].get(c) for c in cols}}
              for m, v in metrics["methods"].items() for n in setup.names]
    tables: dict[str, Any] = {"Overall (held-out pairs of every dataset)": overall, "Per dataset": per_ds}
    if "bayes_accuracy" in metrics:
        tables["Bayes accuracy (ceiling set by the label noise)"] = [metrics["bayes_accuracy"]]
    real = config.data.real
    source = ("real files: " + ", ".join(setup.names) if real
              else "synthetic task: dataset k labelled by Bradley–Terry on " + "; ".join(setup.names))
    what = (f"One reward model (1 head on the {'given' if real else 'SFT policy π_0'} backbone) "
            f"trained on {len(setup.names)} preference datasets ({source}); {len(setup.train)} training and "
            f"{len(setup.held)} held-out pairs; {config.train.steps} steps of batch {config.train.batch_size} "
            f"(sequential/ensemble: {config.train.steps // len(setup.names)} steps per dataset), AdamW lr "
            f"{config.optimizer.learning_rate}. Methods: " + ", ".join(METHOD_LABELS[m] for m in config.methods)
            + f". MORE: averaging '{config.averaging}' ("
            + {"released": f"released code, weight {config.alpha} on the new gradient",
               "ema": f"mojax's earlier EMA, weight {config.ema_decay} on the old average",
               "none": "raw gradients"}[config.averaging]
            + f"), normalised rows {config.normalize}.")
    return write_report(run_dir, title="MORE: multi-dataset reward modelling", what_ran=what,
                        command=command_line(), tables=tables, plots=plots, claim=metrics["claim"]["text"],
                        verdict=verdict)


PRESETS = ("hh-smollm2",)


def run_cli(argv: Sequence[str] | None = None) -> Any:
    """The command line: ``--preset hh-smollm2`` runs the decisive real-data job through
    :func:`experiments._more_heads.main` (HH-RLHF × frozen SmolLM2-135M features, heads over 10 seeds; its flags
    follow the preset, ``--quick`` = its smoke run), anything else the synthetic experiment."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if "--preset" in args:
        i = args.index("--preset")
        if i + 1 >= len(args) or args[i + 1] not in PRESETS:
            print(f"error: --preset takes one of {', '.join(PRESETS)}", file=sys.stderr)
            raise SystemExit(2)
        del args[i:i + 2]
        return H.main(args, experiment="more_rm_hh")
    return cli(get_config, main, argv=args)


if __name__ == "__main__":
    code = run_cli()
    raise SystemExit(code if isinstance(code, int) else 0)
