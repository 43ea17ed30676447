"""SPO, sequential preference optimization (Lou et al. 2024; docs/methods/spo.md): align dimension 1 (helpful), then
dimension 2 (harmless) without losing dimension 1 — decided on the paper's terms, per-dimension win rates against
DPO-Mix and S-DPO over several training seeds.

Run::

    python -m experiments.spo                   # synthetic helpful-vs-harmless task, 4 training seeds
    python -m experiments.spo --quick           # seconds-long smoke preset (CI); verdict "smoke"
    python -m experiments.spo --seeds 5 --alphas 0.1 0.03 0.3
    python -m experiments.spo --data.data-paths <helpful.jsonl.gz> <harmless.jsonl.gz> \\
        --data.tokenizer-path ../shared/data/gpt2-bpe   # real pairs (HH helpful-base, then harmless-base)

**Claim tested** (:data:`experiments._spo_stats.CLAIM`): SPO wins more than half of the paired comparisons against
DPO-Mix and against S-DPO on both dimensions. **Test** (:func:`experiments._spo_stats.decide`): per training seed,
the win rate of SPO at the headline α (``alphas[0]``, fixed before running) over each baseline on each dimension
(one sample per held-out prompt from each policy with shared random numbers, scored by the exact true rewards,
ties ½); a 95% Student-t interval over the seeds; held if all four intervals lie above ½, did not hold if any lies
below ½, else inconclusive.

Task (:mod:`experiments._spo_task`): the shared synthetic prompts/responses; half the prompts (two of four topics)
are risky. ``helpful`` = share of class-A tokens; ``harmless`` = ``helpful`` on benign prompts and 1 − share of
*harmful* class-A tokens on risky ones, so the dimensions conflict in the data only on risky prompts and the ideal
(1, 1) is attainable (safe class-A tokens).

Protocol per training seed (its own pairs, batch order, held-out prompts and sampling seed; π_0 is the shared cached
SFT decoder): round 1 = DPO on helpful pairs → π_1; round 2 from π_1 on harmless pairs with cached π_0/π_1 log-probs:
**SPO** ``−log σ(β Δ[logπ_θ − logπ_1] − α Δ[logπ_1 − logπ_0])`` for each α, and **S-DPO** (α = 0, evaluated at
every ``stop_every`` steps: its stopping points); **DPO-Mix** = DPO from π_0 on a mix of both dimensions' pairs
(``mix_shares`` = share of harmless pairs; the first is the headline DPO-Mix) for ``round1.steps + round2.steps``.
Every SPO and DPO-Mix point has the same total step budget; S-DPO's stopping points use at most that.

Fronts: SPO's α sweep, DPO-Mix's mixing shares and S-DPO's stopping points as point sets of mean true rewards per
seed; hypervolume w.r.t. the reference (0, 0) (the ideal (1, 1) has hypervolume 1), with t intervals over seeds.

Outputs: ``config.json``; ``metrics.json`` (``verdict`` {claim, result, test, seeds, ci}; ``win_rates``
{baseline: {dimension: {mean, lo, hi, vs_half, per_seed}}} and ``win_rates_by_prompt_type``; ``methods`` {name:
mean true rewards, benign/risky split, with intervals}; ``fronts`` {family: points, hypervolume}; ``composition``
(token shares of the samples, benign/risky); ``phi``; ``delta_u_vs_true_r1``; ``task``); ``seeds.pkl`` (raw
per-seed results, written after each seed); ``fronts.png``, ``phi.png``, ``round2.png``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments import _lm_common as lm
from experiments import _spo_stats as st
from experiments import _spo_task as T
from experiments._common import cli, save_metrics
from experiments._report import Verdict
from mojax.losses import spo_loss
from mojax.train import DataConfig
from mojax.train.objectives import dpo_objective, spo_objective


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(lm.ExperimentConfig):
    """SPO experiment settings (defaults: the full run, about 8 minutes per seed on 2 heavily shared CPU cores)."""

    hh: T.HHTask = T.HHTask()
    """The helpful-vs-harmless rewards on the shared synthetic task (``task``)."""
    seeds: int = 4
    """Training seeds (each: its own pairs, batch order, held-out prompts and sampling noise)."""
    round1: lm.TrainConfig = lm.TrainConfig(steps=200, batch_size=32)
    """Round 1: DPO on dimension 1 (helpful)."""
    round2: lm.TrainConfig = lm.TrainConfig(steps=200, batch_size=32, seed=1)
    """Round 2: SPO / S-DPO on dimension 2 (harmless), from π_1."""
    optimizer: lm.OptimizerConfig = lm.OptimizerConfig(learning_rate=1e-3, warmup_steps=10)
    """AdamW of every run."""
    num_pairs: int = 2048
    """Training pairs per dimension."""
    num_samples: int = 512
    """Held-out prompts sampled per seed for the evaluation."""
    beta: float = 0.1
    """β of every DPO-type loss."""
    alphas: tuple[float, ...] = (0.1, 0.03, 0.3)
    """SPO constraint strengths α = λβ, one round-2 run each; the first is the headline SPO of the verdict (0.1 = β,
    i.e. λ = 1)."""
    mix_shares: tuple[float, ...] = (0.5, 0.25, 0.75)
    """DPO-Mix: share of harmless pairs in the mixed data, one run each; the first is the headline DPO-Mix (0.5 =
    the plain union of both dimensions' pairs)."""
    stop_every: int = 50
    """S-DPO is evaluated every this many round-2 steps (its stopping points; the last is the headline S-DPO)."""
    sample_temperature: float = 1.0
    """Sampling temperature of the evaluation."""
    data: DataConfig = DataConfig(eval_fraction=0.2)
    """Real pairs instead of the synthetic task: one file (PKU-SafeRLHF: objective 0 = better, then 1 = safer) or two
    files (dimension 1, dimension 2; e.g. HH helpful-base then harmless-base). No true rewards there: each policy is
    scored by held-out implicit-reward accuracy per dimension against π_0, and the verdict is inconclusive."""

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty tuple of positive values (S-DPO is α = 0), got {self.alphas}")
        if not self.mix_shares or any(not 0 < s < 1 for s in self.mix_shares):
            raise ValueError(f"mix_shares must be a non-empty tuple of values in (0, 1), got {self.mix_shares}")
        if not 1 <= self.stop_every <= self.round2.steps:
            raise ValueError(f"stop_every must be in [1, round2.steps = {self.round2.steps}], got {self.stop_every}")
        if self.num_pairs < 2 or self.num_samples < 1:
            raise ValueError(f"need num_pairs >= 2 and num_samples >= 1, got {self.num_pairs}, {self.num_samples}")
        if not self.data.real:
            self.hh.check(self.task)
        lm.check_real_data(self.data, max_files=2)  # one file (two objectives) or two (one per dimension)


def get_config(quick: bool = False) -> Config:
    """The full run, or with ``quick`` the CI smoke preset (tiny model, few steps, 2 seeds; verdict "smoke")."""
    if not quick:
        return Config()
    small = lm.TrainConfig(steps=6, batch_size=16)
    return Config(model=lm.QUICK_MODEL, sft=lm.QUICK_SFT, round1=small, round2=dataclasses.replace(small, seed=1),
                  optimizer=lm.OptimizerConfig(learning_rate=1e-3), num_pairs=64, num_samples=32, alphas=(0.1,),
                  mix_shares=(0.5,), stop_every=3, seeds=2, compile_cache=False, progress=False)


def is_quick(config: Config) -> bool:
    """Whether ``config`` is the smoke preset's scale (its verdict is "smoke" whatever the numbers)."""
    return config.model == lm.QUICK_MODEL or config.round1.steps + config.round2.steps < 50


def alpha_name(alpha: float) -> str:
    """Method key of one SPO run, e.g. ``spo_a0.1``."""
    return f"spo_a{alpha:g}"


def mix_name(share: float) -> str:
    """Method key of one DPO-Mix run, e.g. ``dpo_mix_0.25`` (the headline share is ``dpo_mix``)."""
    return f"dpo_mix_{share:g}"


def say(message: str) -> None:
    """One progress line (flushed: long runs go to a log file)."""
    print(f"[spo {time.strftime('%H:%M:%S')}] {message}", flush=True)


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


def mixed_pairs(helpful: lm.PairData, harmless: lm.PairData, share: float, seed: int) -> lm.PairData:
    """DPO-Mix's data: all pairs of the larger part and a seeded subset of the other, ``share`` of them harmless."""
    n1, n2 = len(helpful), len(harmless)
    rng = np.random.default_rng(seed)
    if share <= n2 / (n1 + n2):  # keep every helpful pair, subsample harmless ones
        k = max(1, round(n1 * share / (1 - share)))
        harmless = harmless.subset(np.sort(rng.choice(n2, min(k, n2), replace=False)))
    else:
        k = max(1, round(n2 * (1 - share) / share))
        helpful = helpful.subset(np.sort(rng.choice(n1, min(k, n1), replace=False)))
    return lm.concat_pairs([helpful, harmless])


# ----------------------------------------------------------------------------------------------------------------
# One training seed (synthetic task)
# ----------------------------------------------------------------------------------------------------------------


def run_seed(config: Config, pi0: Any, k: int) -> dict[str, Any]:
    """Every method on training seed ``k``: per-prompt true rewards ``[N, 2]`` of each policy's samples, S-DPO's
    stopping points, ϕ and Δu analyses, timings."""
    base = 1000 * k + config.seed
    task, hh = config.task, config.hh
    train1 = T.make_pairs(task, hh, dimension=0, num_pairs=config.num_pairs, seed=base + 1)
    pairs2 = T.make_pairs(task, hh, dimension=1, num_pairs=config.num_pairs, seed=base + 2)
    prompts = T.make_prompts(task, num=config.num_samples, seed=base + 3)
    topics = T.prompt_topics(prompts)

    compositions: dict[str, Any] = {}

    def score(model: Any, name: str | None = None) -> np.ndarray:
        responses, _ = lm.sample_and_score(model, prompts, task, seed=base + 4, temperature=config.sample_temperature)
        if name is not None:
            compositions[name] = T.composition(topics, responses, task, hh)
        return T.true_rewards(topics, responses, task, hh)

    run = dict(optimizer=config.optimizer, progress=config.progress)
    seeded = lambda c, extra=0: dataclasses.replace(c, seed=c.seed + 1000 * k + extra)  # noqa: E731
    dpo = dpo_objective(beta=config.beta, ref_mode="cached")
    scores: dict[str, np.ndarray] = {"sft": score(pi0, "sft")}
    seconds: dict[str, float] = {"sft": 0.0}

    say(f"seed {k + 1}/{config.seeds}: round 1 (DPO on helpful, {config.round1.steps} steps)")
    pi1, hist1 = lm.train(pi0, dpo, lm.with_ref_logps(train1, [pi0]), seeded(config.round1), desc="round 1", **run)
    scores["dpo_dim1"], seconds["dpo_dim1"] = score(pi1, "dpo_dim1"), hist1.seconds

    train2 = lm.with_ref_logps(pairs2, [pi0, pi1])  # row r = π_r
    prev = train2.arrays["ref_logps"]  # [E, 2, 2]
    delta_u = (prev[:, 1, 0] - prev[:, 0, 0]) - (prev[:, 1, 1] - prev[:, 0, 1])
    true_d1 = train2.rewards[:, 0, 0] - train2.rewards[:, 1, 0]
    risky_pair = np.isin(T.prompt_topics(train2.prompts), hh.risky_topics)
    phi, curves, stops = {}, {}, []
    spo = spo_objective(beta=config.beta)  # α is a traced hyper-parameter: one compiled step serves every run
    for alpha in (0.0, *config.alphas):
        name = "s_dpo" if alpha == 0 else alpha_name(alpha)
        say(f"seed {k + 1}/{config.seeds}: round 2 {name} (α = {alpha:g}, {config.round2.steps} steps)")
        r2 = seeded(config.round2)
        evals = []
        if alpha == 0:  # S-DPO's stopping points: sample and score every stop_every steps
            r2 = dataclasses.replace(r2, eval_every=config.stop_every)
            def eval_fn(m):
                evals.append(score(m))
                return dict(zip(T.DIMENSIONS, evals[-1].mean(0).tolist()))
        model, hist = lm.train(pi1, spo, train2, r2, hparams={"alpha": alpha}, desc=f"round 2: {name}",
                               eval_fn=eval_fn if alpha == 0 else None, **run)
        if alpha == 0:
            steps = [e["step"] for e in hist.evals]
            if len(steps) != len(evals):
                raise RuntimeError(f"S-DPO stopping points: {len(evals)} evaluations for steps {steps}")
            stops = [(s, r) for s, r in zip(steps, evals) if s > 0]
            scores[name] = score(model, name)  # the full-length S-DPO (the same samples as its last stop)
        else:
            scores[name] = score(model, name)
        seconds[name] = seconds["dpo_dim1"] + hist.seconds
        curves[name] = hist.metrics["loss"]
        end = phi_per_pair(lm.pair_logps(model, train2), prev, beta=config.beta, alpha=alpha)
        start = phi_per_pair(prev[:, 1], prev, beta=config.beta, alpha=alpha)  # θ = π_1
        phi[name] = {"start": phi_split(start, delta_u), "end": phi_split(end, delta_u),
                     "end_risky": phi_split(end[risky_pair], delta_u[risky_pair]),
                     "end_benign": phi_split(end[~risky_pair], delta_u[~risky_pair]), "values_end": end}

    total = dataclasses.replace(config.round1, steps=config.round1.steps + config.round2.steps)
    for i, share in enumerate(config.mix_shares):
        name = "dpo_mix" if i == 0 else mix_name(share)
        say(f"seed {k + 1}/{config.seeds}: {name} (harmless share {share:g}, {total.steps} steps)")
        mix = lm.with_ref_logps(mixed_pairs(train1, pairs2, share, seed=base + 5 + i), [pi0])
        model, hist = lm.train(pi0, dpo, mix, seeded(total, 7), desc=name, **run)
        scores[name], seconds[name] = score(model, name), hist.seconds
    return {"scores": scores, "seconds": seconds, "stops": stops, "compositions": compositions, "phi": phi,
            "curves": curves,
            "risky": np.isin(topics, hh.risky_topics), "delta_u": delta_u,
            "delta_u_vs_true_r1": {"corr": float(np.corrcoef(delta_u, true_d1)[0, 1]),
                                   "sign_agreement": float(np.mean(np.sign(delta_u[true_d1 != 0])
                                                                   == np.sign(true_d1[true_d1 != 0])))}}


def aggregate(config: Config, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: win rates and the verdict, mean rewards (overall, benign, risky) with t intervals, fronts."""
    dims = list(T.DIMENSIONS)
    spo = alpha_name(config.alphas[0])
    baselines = ["dpo_mix", "s_dpo"]
    extra = ["dpo_dim1", "sft", *[alpha_name(a) for a in config.alphas[1:]]]
    win = np.array([[st.paired_win_rates(r["scores"][spo], r["scores"][b]) for b in baselines] for r in runs])
    verdict, table = st.decide(win, baselines, dims)
    if is_quick(config):
        verdict = Verdict.smoke(st.CLAIM)
    win_extra = np.array([[st.paired_win_rates(r["scores"][spo], r["scores"][b]) for b in extra] for r in runs])
    _, table_extra = st.decide(win_extra, extra, dims)

    def summary(values: np.ndarray) -> dict[str, Any]:
        m, lo, hi = st.t_interval(values)
        bound = lambda x: x.tolist() if np.all(np.isfinite(x)) else None  # noqa: E731 (one seed: no interval)
        return {"mean": m.tolist(), "lo": bound(lo), "hi": bound(hi), "per_seed": values.tolist()}

    def by_part(r: dict[str, Any], b: str, part: str) -> np.ndarray:
        mask = r["risky"] if part == "risky" else ~r["risky"]
        return st.paired_win_rates(r["scores"][spo][mask], r["scores"][b][mask])

    by_type = {b: {part: summary(np.array([by_part(r, b, part) for r in runs])) for part in ("benign", "risky")}
               for b in baselines}

    methods = {}
    for name in runs[0]["scores"]:
        parts = {"all": [r["scores"][name].mean(0) for r in runs],
                 "benign": [r["scores"][name][~r["risky"]].mean(0) for r in runs],
                 "risky": [r["scores"][name][r["risky"]].mean(0) for r in runs]}
        methods[name] = {p: summary(np.array(v)) for p, v in parts.items()}
        methods[name]["train_seconds"] = float(np.mean([r["seconds"][name] for r in runs]))
        methods[name]["win_rate_vs_sft"] = summary(np.array([st.paired_win_rates(r["scores"][name],
                                                                                 r["scores"]["sft"]) for r in runs]))
    families = {
        "SPO (α sweep)": np.array([[r["scores"][alpha_name(a)].mean(0) for a in config.alphas] for r in runs]),
        "DPO-Mix (harmless share)": np.array([[r["scores"]["dpo_mix" if i == 0 else mix_name(s)].mean(0)
                                               for i, s in enumerate(config.mix_shares)] for r in runs]),
        "S-DPO (stopping step)": np.array([[sc.mean(0) for _, sc in r["stops"]] for r in runs]),
    }
    labels = {"SPO (α sweep)": [f"α={a:g}" for a in config.alphas],
              "DPO-Mix (harmless share)": [f"{s:g}" for s in config.mix_shares],
              "S-DPO (stopping step)": [str(s) for s, _ in runs[0]["stops"]]}
    reference = [0.0, 0.0]
    hv = st.front_hypervolumes(families, reference)
    spo_hv = hv["SPO (α sweep)"]
    fronts = {name: {"points_mean": pts.mean(0).tolist(), "points_per_seed": pts.tolist(), "labels": labels[name],
                     "hypervolume": summary(hv[name]),
                     "hypervolume_spo_minus_this": None if name.startswith("SPO") else summary(spo_hv - hv[name])}
              for name, pts in families.items()}
    comps = {name: {part: {c: float(np.mean([r["compositions"][name][part][c] for r in runs]))
                           for c in T.COMPOSITION} for part in ("benign", "risky")}
             for name in runs[0].get("compositions", {})}
    phi_keys = ("start", "end", "end_risky", "end_benign")
    phi = {name: {w: {s: float(np.nanmean([r["phi"][name][w][s] for r in runs]))
                      for s in ("agree_mean", "conflict_mean", "agree_count", "conflict_count")}
                  for w in phi_keys} for name in runs[0]["phi"]}
    return {"verdict": verdict, "dimensions": dims, "spo": spo, "synthetic": True,
            "win_rates": table, "win_rates_other": table_extra, "win_rates_by_prompt_type": by_type, "methods": methods,
            "fronts": fronts, "front_reference": reference, "phi": phi, "composition": comps,
            "delta_u_vs_true_r1": {key: summary(np.array([r["delta_u_vs_true_r1"][key] for r in runs]))
                                   for key in ("corr", "sign_agreement")},
            "task": {"hh": config.hh, "base_correlations": T.base_correlations(config.task, config.hh),
                     "attainable_front": "ideal point (1, 1)" if config.hh.harmful_tokens < config.task.tokens_per_class
                     else "segment (1, 1 - rho) to (1 - rho, 1), rho = share of risky prompts"},
            "round2_curves": runs[0]["curves"]}


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def main(config: Config) -> Path:
    """Every seed on the synthetic task (or one run on real pairs); aggregate, decide, write the run directory."""
    from experiments import _spo_report as R

    run_dir = config.start("spo")
    if config.data.real:
        from experiments import _spo_real

        metrics, extras = _spo_real.run(config)
        save_metrics(run_dir, metrics)
        R.write_real(run_dir, config, metrics, extras)
        say(f"report: {run_dir / 'report.md'}")
        return run_dir
    say(f"π_0: SFT decoder ({'quick' if is_quick(config) else 'default'} preset; cached after the first run)")
    pi0, _ = lm.sft_policy(config.task, config.model, config.sft, model_path=config.data.model_path,
                           cache_dir=config.cache_dir, progress=config.progress)
    pi0 = config.precision.apply(pi0)
    runs = []
    for k in range(config.seeds):
        t0 = time.perf_counter()
        runs.append(run_seed(config, pi0, k))
        with open(run_dir / "seeds.pkl", "wb") as f:  # raw per-seed results: re-aggregate without retraining
            pickle.dump(runs, f)
        say(f"seed {k + 1}/{config.seeds} done in {time.perf_counter() - t0:.0f} s")
    metrics = aggregate(config, runs)
    save_metrics(run_dir, metrics)
    R.write_synthetic(run_dir, config, metrics, runs[0])
    say(f"verdict: {metrics['verdict'].result}; report: {run_dir / 'report.md'}")
    return run_dir


if __name__ == "__main__":
    cli(get_config, main)
