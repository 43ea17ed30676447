"""MORE vs hybrid / sequential / ensemble reward heads on frozen-backbone features (HH-RLHF × SmolLM2-135M).

Run through the experiment's entry point (features computed with progress where not cached; see
:mod:`experiments._more_hh`)::

    python -m experiments.more_rm --preset hh-smollm2                  # the decisive real-data run
    python -m experiments.more_rm --preset hh-smollm2 --cached-only    # only the feature rounds already cached
    python -m experiments.more_rm --preset hh-smollm2 --quick          # smoke: random features, no model

Protocol. K = 4 datasets (the HH-RLHF files), cached pair features ``[n, 2, D]`` (index 0 = chosen), standardised
with the training fold's per-dimension mean and std. Two-fold cross-fitting split by prompt (every pair of a prompt
in the same fold): heads trained on one fold score the other, so every pair gets one held-out prediction per seed.
Per seed (head init and batch order) and fold, a linear bias-free head ``r = wᵀh`` (:class:`FeatureRewardModel`)
is trained with :func:`mojax.train.fit` (AdamW, in memory) by

- **MORE**: :func:`~mojax.train.objectives.more_objective` (min-norm λ each step, averaging ``averaging`` — default
  the released code's ``m ← 0.01 m + 0.99 g`` from the head's initial weights — L2-normalised rows);
- **hybrid**: Bradley–Terry on the same balanced batches (every batch holds ``batch_per_dataset`` pairs of each
  dataset);
- **sequential**: Bradley–Terry on dataset 0, then 1, …, ``steps / K`` steps each (one optimiser run);
- **ensemble**: one head per dataset (``steps / K`` steps each), rewards averaged.

Metrics on the held-out predictions: accuracy and ECE (5/10/20 equal-width bins of ``max(p, 1 − p)``,
``p = σ(r_w − r_l)``) per dataset and overall, averaged over seeds; differences to hybrid with a two-way bootstrap
(held-out pairs resampled within each dataset and seeds resampled, jointly) and a seeds-only bootstrap. Sanity
reference: an exact float64 L2 logistic regression on the same features and folds, one pooled head and one head per
dataset (:func:`logistic_reference`) — what a linear head on these features can learn at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments._more_hh import HHFeatureConfig
from experiments._report import (Verdict, command_line, plot_curve_panels, plot_histograms, save_config,
                                save_metrics, write_report)
from mojax.models.features import FeatureRewardModel
from mojax.train import OptimizerConfig, TrainConfig, fit
from mojax.train.objectives import bradley_terry_objective, more_objective

METHODS = ("more", "hybrid", "sequential", "ensemble")
CLAIM = ("MORE's reward model is better calibrated than hybrid (uniform-mixture) training at no loss of accuracy "
         "(paper: 'superior reward accuracy and lower calibration error').")
TEST = ("two-way bootstrap (held-out pairs within dataset × seeds, 2000 replicates) 95% CI of overall ΔECE-10 = "
        "MORE − hybrid: held if it lies below 0 and the Δaccuracy CI does not lie below 0; did_not_hold if the ΔECE "
        "CI lies above 0 or the Δaccuracy CI lies below 0; else inconclusive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadsConfig:
    """Settings of the head experiment (features: :class:`HHFeatureConfig`)."""

    features: HHFeatureConfig = HHFeatureConfig()
    """Which cached features (data, model, pairs per dataset)."""
    pooling: str = "last"
    """Feature of a response: ``"last"`` (last-token hidden state, what MORE's score head reads) or ``"mean"``."""
    seeds: int = 10
    """Training seeds (head init and batch order); each trains both folds."""
    epochs: float = 2.0
    """Passes over the largest training set (sets the pooled step count, :func:`pooled_steps`)."""
    batch_per_dataset: int = 4
    """Pairs of every dataset in each pooled batch."""
    learning_rate: float = 1e-3
    """AdamW learning rate of every head."""
    averaging: str = "released"
    """MORE's gradient averaging (:func:`~mojax.train.objectives.more_objective`; default the released code's)."""
    ece_bins: tuple[int, ...] = (10, 5, 20)
    """ECE bin counts reported (10 is the tested one)."""
    bootstrap: int = 2000
    """Bootstrap replicates of every CI."""
    split_seed: int = 0
    """Seed of the prompt-level two-fold split."""
    weight_decay: float = 0.0
    """AdamW (decoupled) weight decay of every head."""
    reference_l2: float = 1.0
    """L2 strength of the float64 logistic-regression sanity reference (:func:`logistic_reference`)."""


def quick_config() -> HeadsConfig:
    """The smoke preset: few seeds and steps (random features, see :func:`random_features`)."""
    return HeadsConfig(seeds=2, epochs=0.5, batch_per_dataset=4, bootstrap=50)


def random_features(k: int = 3, n: int = 48, d: int = 16, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Smoke data without a model: dataset j's chosen response scores higher under ``u + v_j`` (shared + own)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    out = {}
    for j in range(k):
        w = u + rng.normal(size=d)
        x = rng.normal(size=(n, 2, d)).astype(np.float32)
        swap = (x[:, 0] @ w) < (x[:, 1] @ w)
        x[swap] = x[swap][:, ::-1]
        out[f"synthetic-{j}"] = {"last": x, "prompt_hash": np.arange(n, dtype=np.uint64) // 2}
    return out


# ----------------------------------------------------------------------------------------------------------------
# data


def fold_of(prompt_hash: np.ndarray, seed: int) -> np.ndarray:
    """Fold 0/1 per pair: a seeded random half of the distinct prompts in each fold."""
    prompts = np.unique(prompt_hash)
    fold = dict(zip(prompts.tolist(), np.random.default_rng(seed).permutation(len(prompts)) % 2))
    return np.array([fold[h] for h in prompt_hash.tolist()])


def batches(x: np.ndarray, ds: np.ndarray, datasets: list[int], per: int, seed: int):
    """Endless host batches: ``per`` pairs of each dataset in ``datasets`` per step (epoch-wise shuffles)."""
    rng = np.random.default_rng(seed)
    pools = {d: np.flatnonzero(ds == d) for d in datasets}
    orders = {d: np.empty(0, int) for d in datasets}
    while True:
        idx = []
        for d in datasets:
            while len(orders[d]) < per:
                orders[d] = np.concatenate([orders[d], rng.permutation(pools[d])])
            idx.append(orders[d][:per])
            orders[d] = orders[d][per:]
        idx = np.concatenate(idx)
        yield {"input_ids": x[idx], "attention_mask": np.ones(x[idx].shape[:2], np.int32),
               "dataset_id": ds[idx].astype(np.int32)}


# ----------------------------------------------------------------------------------------------------------------
# training


def _fit(model_or_result: Any, objective: Any, data, steps: int, batch: int, config: HeadsConfig, seed: int,
         on_metrics=None):
    return fit(model_or_result, objective, data, config=TrainConfig(steps=steps, batch_size=batch, seed=seed,
                                                                    log_every=1, progress=False, tensorboard=False),
               optimizer=OptimizerConfig(learning_rate=config.learning_rate, weight_decay=config.weight_decay),
               run_dir=None, on_metrics=on_metrics)


def pooled_steps(ds: np.ndarray, config: HeadsConfig) -> int:
    """Steps of a pooled run: ``epochs`` passes over the largest training set at ``batch_per_dataset`` pairs of each
    dataset per step (sequential / ensemble give each dataset ``steps / K`` steps of ``K·batch_per_dataset`` pairs:
    the same pairs per dataset)."""
    return max(int(np.ceil(config.epochs * np.bincount(ds).max() / config.batch_per_dataset)), 1)


def train_fold(method: str, x: np.ndarray, ds: np.ndarray, k: int, config: HeadsConfig, seed: int,
               objectives: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Kernels ``[D]`` of the head(s) one method trains on one fold (ensemble: K of them) and MORE's λ per step."""
    d_model, per, steps = x.shape[-1], config.batch_per_dataset, pooled_steps(ds, config)
    build = lambda s=seed: FeatureRewardModel(d_model, rngs=nnx.Rngs(s))  # noqa: E731
    kernel = lambda r: np.asarray(r.model().score.kernel[...], np.float64)[:, 0]  # noqa: E731
    lams: list[np.ndarray] = []
    if method in ("more", "hybrid"):
        log = (lambda step, m: lams.append(np.asarray(m["lambda"]))) if method == "more" else None
        r = _fit(build, objectives[method], batches(x, ds, list(range(k)), per, seed), steps, per * k,
                 config, seed, on_metrics=log)
        return [kernel(r)], lams
    stage = max(steps // k, 1)
    if method == "sequential":
        r = build
        for d in range(k):
            r = _fit(r, objectives["hybrid"], batches(x, ds, [d], per * k, seed + d), stage * (d + 1), per * k,
                     config, seed)
        return [kernel(r)], lams
    return [kernel(_fit(lambda s=seed * 100 + d: FeatureRewardModel(d_model, rngs=nnx.Rngs(s)), objectives["hybrid"],
                        batches(x, ds, [d], per * k, seed + d), stage, per * k, config, seed)) for d in range(k)], lams


def run_heads(feats: dict[str, dict[str, np.ndarray]], config: HeadsConfig, *, log=print) -> dict[str, Any]:
    """Held-out margins ``{method: [S, N]}`` (every pair scored by the fold that did not train on it), labels
    ``dataset [N]``, λ trajectories ``[S, 2, steps, K]`` and per-method train seconds."""
    names = list(feats)
    k = len(names)
    x = np.concatenate([feats[n][config.pooling] for n in names]).astype(np.float64)
    ds = np.concatenate([np.full(len(feats[n][config.pooling]), j) for j, n in enumerate(names)])
    fold = np.concatenate([fold_of(feats[n]["prompt_hash"], config.split_seed + j) for j, n in enumerate(names)])
    objectives = {"more": more_objective(num_datasets=k, averaging=config.averaging),
                  "hybrid": bradley_terry_objective()}
    margins = {m: np.zeros((config.seeds, len(x))) for m in METHODS}
    rewards = {m: np.zeros((config.seeds, len(x), 2)) for m in METHODS}
    lambdas, seconds = [], {m: 0.0 for m in METHODS}
    for s in range(config.seeds):
        lam_s = []
        for f in (0, 1):
            train, held = fold == f, fold != f
            mu = x[train].reshape(-1, x.shape[-1]).mean(0)
            sd = x[train].reshape(-1, x.shape[-1]).std(0) + 1e-6
            xt, xh = ((x[train] - mu) / sd).astype(np.float32), (x[held] - mu) / sd
            for m in METHODS:
                t0 = time.perf_counter()
                kernels, lams = train_fold(m, xt, ds[train], k, config, seed=1000 * s + f, objectives=objectives)
                seconds[m] += time.perf_counter() - t0
                r = np.mean([xh @ w for w in kernels], axis=0)  # [n_held, 2]
                rewards[m][s, held] = r
                margins[m][s, held] = r[:, 0] - r[:, 1]
                if lams:
                    lam_s.append(np.stack(lams))
        lambdas.append(np.stack(lam_s))
        log(f"heads: seed {s + 1}/{config.seeds} done ({sum(seconds.values()):.0f} s)")
    return {"names": names, "dataset": ds, "margins": margins, "rewards": rewards, "lambda": np.stack(lambdas),
            "seconds": seconds}


def logistic_head(diff: np.ndarray, l2: float, *, iters: int = 25) -> np.ndarray:
    """Float64 L2-regularised logistic regression without bias on chosen-minus-rejected features ``diff [n, D]``
    (every pair labelled "chosen wins"): ``argmin_w mean softplus(−diff·w) + ½ l2 ‖w‖²`` by Newton's method — the
    exact minimiser of a bias-free Bradley–Terry head with an L2 penalty, independent of the JAX path."""
    n, d = diff.shape
    w = np.zeros(d)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(diff @ w)))
        grad = -(diff * (1.0 - p)[:, None]).mean(0) + l2 * w
        hess = (diff * (p * (1.0 - p))[:, None]).T @ diff / n + l2 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def logistic_reference(feats: dict[str, dict[str, np.ndarray]], config: HeadsConfig) -> dict[str, Any]:
    """Sanity reference on the same features, folds and standardisation as :func:`run_heads`: held-out margins of
    (a) one logistic head on the pooled training pairs (what hybrid minimises, solved exactly) and (b) one logistic
    head per dataset scored on its own dataset (an oracle that knows the dataset: the most a linear probe of these
    features can get from each dataset's own labels)."""
    names = list(feats)
    x = np.concatenate([feats[n][config.pooling] for n in names]).astype(np.float64)
    ds = np.concatenate([np.full(len(feats[n][config.pooling]), j) for j, n in enumerate(names)])
    fold = np.concatenate([fold_of(feats[n]["prompt_hash"], config.split_seed + j) for j, n in enumerate(names)])
    pooled, own = np.zeros(len(x)), np.zeros(len(x))
    for f in (0, 1):
        train, held = fold == f, fold != f
        sd = x[train].reshape(-1, x.shape[-1]).std(0) + 1e-6  # the mean cancels in the difference
        diff = (x[:, 0] - x[:, 1]) / sd
        pooled[held] = diff[held] @ logistic_head(diff[train], config.reference_l2)
        for j in range(len(names)):
            own[held & (ds == j)] = diff[held & (ds == j)] @ logistic_head(diff[train & (ds == j)],
                                                                            config.reference_l2)
    return {"dataset": ds, "names": names, "margins": {"pooled": pooled, "per_dataset": own}}


def reference_rows(ref: dict[str, Any], config: HeadsConfig) -> list[dict[str, Any]]:
    """Accuracy and ECE of the logistic references per dataset and overall (one deterministic fit, no seeds)."""
    rows = []
    for kind, m in ref["margins"].items():
        subsets = {"overall": np.ones(len(m), bool), **{n: ref["dataset"] == j for j, n in enumerate(ref["names"])}}
        for key, sel in subsets.items():
            rows.append({"reference": kind, "data": key, "pairs": int(sel.sum()),
                         "accuracy": float(accuracy(m[sel])),
                         **{f"ece_{b}": float(ece(m[sel], b)) for b in sorted(config.ece_bins)}})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# metrics


def ece(margins: np.ndarray, num_bins: int) -> np.ndarray:
    """Classification-style ECE over the last axis (float64; same binning as
    :func:`experiments._rm_common.pairwise_ece`): bins of ``c = max(p, 1 − p)``, correctness ``[p > ½]`` (½ at a tie)."""
    p = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(margins, np.float64)))
    conf = np.maximum(p, 1.0 - p)
    correct = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
    bins = np.searchsorted(np.arange(1, num_bins) / num_bins, conf, side="left")  # (m/M, (m+1)/M], first closed
    lead = conf.shape[:-1]
    flat = bins.reshape(-1, conf.shape[-1]) + num_bins * np.arange(int(np.prod(lead)))[:, None]
    size = int(np.prod(lead)) * num_bins
    gap = np.bincount(flat.ravel(), (correct - conf).reshape(-1), minlength=size).reshape(*lead, num_bins)
    return np.sum(np.abs(gap), axis=-1) / conf.shape[-1]


def accuracy(margins: np.ndarray) -> np.ndarray:
    """Pairwise accuracy over the last axis (a tie counts ½)."""
    return np.mean(np.where(margins > 0, 1.0, np.where(margins == 0, 0.5, 0.0)), axis=-1)


def _metric(name: str, margins: np.ndarray) -> np.ndarray:
    return accuracy(margins) if name == "accuracy" else ece(margins, int(name.split("_")[1]))


def summarize(result: dict[str, Any], config: HeadsConfig) -> dict[str, Any]:
    """Per method: seed-mean accuracy / ECE per dataset and overall; differences to hybrid with bootstrap CIs."""
    ds, margins, names = result["dataset"], result["margins"], result["names"]
    metric_names = ["accuracy"] + [f"ece_{b}" for b in config.ece_bins]
    subsets = {"overall": np.arange(len(ds)), **{n: np.flatnonzero(ds == j) for j, n in enumerate(names)}}
    rng = np.random.default_rng(12345)
    methods = [m for m in METHODS if m in margins]
    s_count = margins[methods[0]].shape[0]
    # One set of replicates shared by every method and metric (paired differences).
    seed_draws = rng.integers(0, s_count, size=(config.bootstrap, s_count))
    pair_draws = {key: np.concatenate([rng.choice(np.flatnonzero(ds[idx] == j), size=(config.bootstrap,
                                                                                      int(np.sum(ds[idx] == j))))
                                       for j in np.unique(ds[idx])], axis=1).astype(int)
                  for key, idx in subsets.items()}
    out: dict[str, Any] = {}
    for m in methods:
        out[m] = {}
        for key, idx in subsets.items():
            row = {"num_pairs": int(len(idx))}
            for name in metric_names:
                vals = _metric(name, margins[m][:, idx])  # [S]
                row[name] = float(vals.mean())
                row[f"{name}_seed_sd"] = float(vals.std(ddof=1)) if s_count > 1 else 0.0
                if m == "hybrid" or "hybrid" not in margins:
                    continue
                diff = vals - _metric(name, margins["hybrid"][:, idx])
                row[f"d_{name}"] = float(diff.mean())
                seeds_only = diff[seed_draws].mean(1)
                row[f"d_{name}_ci_seeds"] = [float(v) for v in np.percentile(seeds_only, [2.5, 97.5])]
                boot = np.zeros(config.bootstrap)
                for s in range(s_count):  # two-way: pairs resampled (per replicate) × seeds resampled
                    sub_m, sub_h = margins[m][s, idx][pair_draws[key]], margins["hybrid"][s, idx][pair_draws[key]]
                    boot += (_metric(name, sub_m) - _metric(name, sub_h)) * np.sum(seed_draws == s, axis=1)
                row[f"d_{name}_ci"] = [float(v) for v in np.percentile(boot / s_count, [2.5, 97.5])]
            out[m][key] = row
    return out


def decide(summary: dict[str, Any], config: HeadsConfig, *, quick: bool) -> Verdict:
    """The verdict from the pre-stated test (:data:`TEST`); ``quick`` is always smoke."""
    if quick:
        return Verdict.smoke(CLAIM)
    if "more" not in summary or "hybrid" not in summary:
        return Verdict(claim=CLAIM, result="inconclusive", test="not tested: MORE and hybrid were not both run",
                       seeds=config.seeds)
    row = summary["more"]["overall"]
    (e_lo, e_hi), (a_lo, a_hi) = row["d_ece_10_ci"], row["d_accuracy_ci"]
    if e_hi < 0 and not a_hi < 0:
        result = "held"
    elif e_lo > 0 or a_hi < 0:
        result = "did_not_hold"
    else:
        result = "inconclusive"
    return Verdict(claim=CLAIM, result=result, test=TEST, seeds=config.seeds, ci=(e_lo, e_hi))


# ----------------------------------------------------------------------------------------------------------------
# report


def _fmt_ci(row: dict[str, Any], name: str) -> str:
    lo, hi = row[f"d_{name}_ci"]
    return f"{row[f'd_{name}']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def tables(summary: dict[str, Any], config: HeadsConfig) -> dict[str, list[dict[str, Any]]]:
    """Markdown table rows: metrics per method × subset, and the differences to hybrid with two-way CIs."""
    metric_names = ["accuracy"] + [f"ece_{b}" for b in sorted(config.ece_bins)]
    values, diffs = [], []
    for m in METHODS:
        for key, row in summary[m].items():
            values.append({"method": m, "data": key, "pairs": row["num_pairs"],
                           **{n: f"{row[n]:.4f} ± {row[n + '_seed_sd']:.4f}" for n in metric_names}})
            if m != "hybrid":
                diffs.append({"method − hybrid": m, "data": key, **{f"Δ{n}": _fmt_ci(row, n) for n in metric_names}})
    return {"Held-out metrics (mean ± sd over seeds)": values,
            "Differences to hybrid (mean, 95% two-way bootstrap CI)": diffs}


def reward_quantiles(rewards: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per method, over all seeds and held-out responses: reward quantiles (1/5/25/50/75/95/99 %), max |r|, and the
    margin ``r_w − r_l`` quantiles — the whole distribution, not one extreme value."""
    q = [1, 5, 25, 50, 75, 95, 99]
    return {m: {"quantiles": q, "reward": np.percentile(r, q).tolist(), "max_abs_reward": float(np.abs(r).max()),
                "margin": np.percentile(r[..., 0] - r[..., 1], q).tolist(), "reward_sd": float(r.std())}
            for m, r in rewards.items()}


def quantile_rows(dist: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Markdown rows of :func:`reward_quantiles`: one row per method and quantity (reward, margin)."""
    rows = []
    for m, d in dist.items():
        for what in ("reward", "margin"):
            rows.append({"method": m, "of": what, **{f"q{q}": f"{v:+.3f}" for q, v in zip(d["quantiles"], d[what])},
                         "max abs": f"{d['max_abs_reward']:.3f}" if what == "reward" else "–"})
    return rows


def write_outputs(out: Path, result: dict[str, Any], summary: dict[str, Any], verdict: Verdict,
                  config: HeadsConfig, *, command: str, data_note: str, quick: bool = False,
                  reference: dict[str, Any] | None = None,
                  data: dict[str, dict[str, Any]] | None = None) -> Path:
    """``config.json``, ``metrics.json`` (with the verdict), ``reward_distributions.png``, ``lambda.png``, ``report.md``.

    ``reference``: :func:`logistic_reference`'s result (a table and ``metrics["logistic_reference"]``); ``data``: the
    per-file data report (records read / skipped, :func:`experiments._more_hh.data_report`)."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, config)
    lam = result["lambda"]  # [S, folds, steps, K]
    dist = reward_quantiles(result["rewards"])
    ref_rows = reference_rows(reference, config) if reference is not None else None
    save_metrics(out, {"methods": summary, "datasets": result["names"], "train_seconds": result["seconds"],
                       "lambda": {"mean_over_steps": lam.mean(axis=(0, 1, 2)).tolist(),
                                  "final": lam[:, :, -1].mean(axis=(0, 1)).tolist(),
                                  "trajectory_mean": lam.mean(axis=(0, 1)).tolist()},
                       "reward_distribution": dist, "logistic_reference": ref_rows, "data_report": data,
                       "verdict": dataclasses.asdict(verdict)})
    rewards = result["rewards"]
    plot_histograms(out / "reward_distributions.png",
                    {m: {"chosen": rewards[m][..., 0], "rejected": rewards[m][..., 1]} for m in rewards},
                    xlabels="held-out reward (all seeds)", bins=60)
    steps = np.arange(1, lam.shape[2] + 1)
    plot_curve_panels(out / "lambda.png", {
        "λ (mean over seeds and folds)": {n: (steps, lam[..., j].mean(axis=(0, 1))) for j, n in
                                          enumerate(result["names"])},
        "λ (seed 0, fold 0)": {n: (steps, lam[0, 0, :, j]) for j, n in enumerate(result["names"])}},
        ylabels="λ_k")
    row = summary["more"]["overall"]
    if quick:
        claim = ("Smoke run (random features, few steps): it only checks that every stage runs and draws no "
                 "conclusion about the paper's claim.")
    else:
        claim = (f"Overall ΔECE-10 (MORE − hybrid) = {_fmt_ci(row, 'ece_10')}, Δaccuracy = "
                 f"{_fmt_ci(row, 'accuracy')} over {config.seeds} seeds × {row['num_pairs']} held-out pairs. The "
                 "decision follows the stated test; a CI that contains 0 says this setting cannot tell MORE from "
                 "hybrid.")
        if ref_rows is not None:
            acc = {(r["reference"], r["data"]): r["accuracy"] for r in ref_rows}
            claim += (f" Sanity reference (exact float64 logistic regression, L2 {config.reference_l2}): one pooled "
                      f"head {acc[('pooled', 'overall')]:.3f} overall, one head per dataset "
                      f"{acc[('per_dataset', 'overall')]:.3f} — how much a linear head on these features can learn.")
    what = (f"{data_note} Linear heads on frozen '{config.pooling}' features, {config.epochs} epochs "
            f"({lam.shape[2]} pooled steps) × {config.batch_per_dataset} pairs per dataset per step, AdamW lr "
            f"{config.learning_rate}, weight decay {config.weight_decay}, MORE averaging '{config.averaging}', "
            f"two-fold cross-fitting by prompt, {config.seeds} seeds.")
    tabs: dict[str, Any] = {}
    if data is not None:
        tabs["Data (per file)"] = [{"file": n, "records in file": d["records_in_file"],
                                    "examined": d["records_examined"], "pairs kept": d["pairs_kept"],
                                    **{f"skipped {k}": v for k, v in d["skipped"].items()}} for n, d in data.items()]
    tabs.update(tables(summary, config))
    if ref_rows is not None:
        tabs["Sanity reference: exact logistic regression on the same features and folds"] = [
            {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in ref_rows]
    tabs["Reward distributions: quantiles (%) over all seeds and held-out responses"] = quantile_rows(dist)
    return write_report(out, title="MORE on frozen-backbone reward heads", what_ran=what, command=command,
                        tables=tabs, plots=["reward_distributions.png", "lambda.png"], claim=claim, verdict=verdict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The head experiment's flags (``argparse`` exits 2 with a one-line message on a bad flag)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="run directory (default runs/more_hh/<UTC time>)")
    parser.add_argument("--quick", action="store_true", help="smoke: random features, no model; verdict 'smoke'")
    parser.add_argument("--pairs", type=int, default=HHFeatureConfig.pairs_per_dataset,
                        help="pairs per dataset of the feature cache (complete 100-pair rounds are used)")
    parser.add_argument("--cached-only", action="store_true",
                        help="use only the complete rounds already cached (compute nothing)")
    parser.add_argument("--pooling", choices=("last", "mean"), default=HeadsConfig.pooling)
    parser.add_argument("--seeds", type=int, default=HeadsConfig.seeds)
    parser.add_argument("--epochs", type=float, default=HeadsConfig.epochs)
    parser.add_argument("--lr", type=float, default=HeadsConfig.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=HeadsConfig.weight_decay)
    parser.add_argument("--averaging", choices=("released", "ema", "none"), default=HeadsConfig.averaging)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs <= 0 or args.pairs < 1 or args.lr <= 0 or args.weight_decay < 0:
        parser.error("--seeds, --epochs, --pairs and --lr must be positive, --weight-decay non-negative")
    return args


def main(argv: list[str] | None = None, *, experiment: str = "more_hh") -> int:
    """CLI: ``--quick`` (random features, smoke verdict) or HH × SmolLM2 features (computed with progress where not
    cached, unless ``--cached-only``); prints the data report, per-seed progress and the verdict."""
    from experiments._common import make_run_dir

    args = parse_args(argv)
    if args.quick:
        config = quick_config()
        feats, note, data = random_features(), "Smoke: random Gaussian features, 3 datasets × 48 pairs.", None
    else:
        from experiments._more_hh import data_report, hh_features

        config = HeadsConfig(features=HHFeatureConfig(pairs_per_dataset=args.pairs), pooling=args.pooling,
                             seeds=args.seeds, epochs=args.epochs, learning_rate=args.lr,
                             weight_decay=args.weight_decay, averaging=args.averaging)
        try:
            data = data_report(config.features)
        except (FileNotFoundError, TypeError, OSError) as e:  # TypeError: smollm2_path() is None (no model)
            print(f"error: HH-RLHF data or SmolLM2 model not available ({e}); python -m "
                  "mojax.models.fetch_smollm2 fetches the model", file=sys.stderr)
            return 2
        for name, d in data.items():
            print(f"data: {name}: {d['pairs_kept']} pairs kept of {d['records_examined']} records examined "
                  f"({d['records_in_file']} in file); skipped {d['skipped']}", flush=True)
        feats = hh_features(config.features, cached_only=args.cached_only)
        if not all(len(f) for f in feats.values()):
            print("error: no cached features yet (drop --cached-only, or run python -m experiments._more_hh)",
                  file=sys.stderr)
            return 2
        note = ("HH-RLHF: " + ", ".join(f"{n} ({len(f['last'])} pairs)" for n, f in feats.items())
                + f"; plain transcripts ≤ {config.features.max_length} tokens; SmolLM2-135M-Instruct (Q4_1 GGUF) "
                "frozen.")
    out = make_run_dir(experiment, args.out)
    print(f"heads: {config.seeds} seeds × 2 folds × {len(METHODS)} methods on "
          f"{sum(len(f[config.pooling]) for f in feats.values())} pairs → {out}", flush=True)
    result = run_heads(feats, config, log=lambda line: print(line, flush=True))
    summary = summarize(result, config)
    verdict = decide(summary, config, quick=args.quick)
    reference = None if args.quick else logistic_reference(feats, config)
    path = write_outputs(out, result, summary, verdict, config, command=command_line(), data_note=note,
                         quick=args.quick, reference=reference, data=data)
    print(f"{verdict.markdown()}\nreport: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
