"""COS-DPO on learning-to-rank (Ren et al., COS-DPO §4.1): profile the Pareto front of K auxiliary objectives.

Run (this is ``make demo``: synthetic MSLR-shaped task, K = 2, one seed; ~70 s of CPU by the measured per-step and
compile CPU times, against ~40 s for the previous, smaller defaults)::

    python -m experiments.cos_dpo_ltr                      # synthetic task, K = 2 auxiliary objectives
    python -m experiments.cos_dpo_ltr --num-seeds 3        # the full run: 3 seeds, intervals and a verdict
    python -m experiments.cos_dpo_ltr --num-objectives 5   # K = 5 (an 11-weight simplex sample, as Table 1)
    python -m experiments.cos_dpo_ltr --data-path ../shared/data/mslr-web10k-sample/msn1.fold1.train.5k.txt.gz
    python -m experiments.cos_dpo_ltr --quick              # seconds-long smoke preset (CI): verdict "smoke"

Protocol. A base ranker f_ref is trained on the main relevance label with ListNet. Every method then fine-tunes on
K auxiliary label columns with listwise DPO (ListNet on β·(f_θ − f_ref), eq. 8, docs/methods/cos-dpo.md) and is
evaluated on held-out queries at the same ``num_weights`` simplex weights (11: a linspace for K = 2; the K vertices,
the centroid and a fixed Dirichlet(1) sample otherwise):

- **W-COS-DPO**: one weight-conditioned model trained once, w ~ Dirichlet(α·1) drawn per list (the paper: per step,
  ``--no-per-example-weights``), loss Σ_k w_k ℓ_k − μ·cos; its budget ``cos_steps`` is stated in DPO-LS runs
  (default 3: the paper's Table 1 timings, 4,043 s against 14,649 s for 11 DPO-LS runs, are 3.0 runs);
- **W-COS-DPO (vertex cover)**: the same run with the vertex-covering sampler (``--cover-concentration``,
  ``--cover-vertex-fraction``: a share of exact vertices e_k, by default the vertices' share of the 11 weights,
  i.e. DPO-LS's budget share there); measured against the paper's sampler at the vertices (``vertex`` in
  metrics.json: DPO-LS's NDCG at e_k minus the method's, and which DPO-LS weight its e_k point is nearest to);
- **DPO-LS**: one run per weight (w is a traced hyper-parameter of the step: one compile for all runs);
- **DPO Soup**: the K single-objective runs (the DPO-LS vertex runs, same init), parameters mixed by w;
- **MO-DPO**: for each interior w, objective k = argmax w trained against the single models' implicit rewards;
- **T-COS-DPO**: conditioned on (w, β/‖β‖₁), β log-uniform per objective; served at any β by Prop. 3.1;
- **Prop. 3.1 check**: W-COS-DPO trained again at ``beta_alt``, rescaled to ``beta`` and compared front to front.

Paper settings (§4.1, the defaults): ``concat`` conditioning — a fresh ranker with w concatenated to the features
("training from scratch", the main text's choice); ``augment`` is the augmentation network f = f_ref + g_θ(x, w)
with the base frozen (§A.6.3). Base: a 2-layer transformer of width 128; fine-tuned rankers: 2 layers, width 64.
ListNet label normalisation ``auto``: ``l1`` when every auxiliary label is sparse (MSLR's click counts), ``softmax``
for dense ones (synthetic, quality scores), as eq. 7 and Fig. 2. Every method uses the same parametrisation, width
and step size.

Seeds (``--num-seeds``): each seed replicates the whole experiment (synthetic data, split, initialisations, data
order); ``metrics.json["verdict"]`` decides the claim from the per-seed relative HV difference W-COS-DPO − DPO-LS
(Student-t 95 % interval; fewer than 3 seeds → inconclusive; ``--quick`` → smoke).

Evaluation (as the paper's Fig. 2 / Table 1): NDCG@10 of each auxiliary label (gain 2^ψ − 1, ψ the auxiliary label
rescaled per query to [0, 4]) on the test queries, averaged over queries; a method's front is its ``num_weights``
points in that K-dimensional space; its hypervolume uses the reference point 0 (NDCG ≥ 0, the worst value; the
paper's choice as far as its numbers show), and ``hypervolume_gain`` uses the base model's point instead (the
volume that fine-tuning added). The main objective's NDCG@10 (relevance) is reported per point and averaged.

Outputs in the run directory: ``config.json``, ``metrics.json`` (``{"methods": {name: {"hypervolume",
"train_seconds", "num_params", "front", ...}}, "base": ..., "prop31": ..., "vertex": ..., "data": ...}`` of the first
seed, ``"seeds"`` (every seed's numbers), ``"summary"`` (means and intervals over seeds) and ``"verdict"``), PNG
plots of the first seed, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from experiments._common import cli, make_run_dir
from experiments._report import save_config, save_metrics
from experiments._ltr_report import METHOD_LABELS, front_distance, method_summary, write_outputs
from experiments._ltr_train import Experiment, Trained
from experiments._ltr_verdict import decide, seed_summary, vertex_analysis
from mojax.metrics import hypervolume
from mojax.models.ranker import num_params
from mojax.simplex import vertex_indices

__all__ = ["Config", "get_config", "main"]

EXPERIMENT = "cos_dpo_ltr"
SEED_STRIDE = 1000  # replicate i runs at seed + 1000·i (each run uses seed and seed + 1 internally)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """COS-DPO LTR experiment configuration (defaults: the paper's settings on ``make demo``'s synthetic K = 2 task).

    Attributes:
      data_path: an MSLR-WEB10K / SVMlight file (``.txt`` or ``.txt.gz``); ``None`` = the synthetic task.
      mslr_objectives: MSLR feature columns used as auxiliary labels (removed from the inputs); the paper's five
        are 132–136, its K = 2 figure uses 134/135 (query-url and url click counts).
      num_objectives: K for the synthetic task.
      synthetic_relevance_corr, synthetic_aux_corr: latent correlations of the synthetic task (see
        :func:`synthetic_correlation`): each auxiliary objective with relevance, and their total conflict.
      num_queries, list_size, num_features: synthetic task size (queries before the train/test split).
      test_fraction: share of queries held out for evaluation.
      base_d_model: width of the base ranker (the paper: 128); ``d_model`` the fine-tuned rankers' (the paper: 64).
      num_layers, num_heads, mlp_dim: transformer shape shared by all rankers (the paper: 2 layers; 0 layers =
        item-wise MLP).
      conditioning: ``concat`` (a fresh ranker with w concatenated to its input, the paper's main text) or
        ``augment`` (f = f_ref + g_θ, base frozen, §A.6.3).
      batch_size: queries per step.
      base_steps: ListNet steps for the base ranker; ``run_steps`` per DPO-LS / single-objective / MO-DPO run;
        ``cos_steps`` for the one W-COS-DPO (and T-COS-DPO) run that serves the whole front (default 3 DPO-LS runs'
        worth: the paper's Table 1 timings give W-COS-DPO 4,043 s against 14,649 s / 11 = 1,332 s per DPO-LS run).
      learning_rate: AdamW step size of every fine-tuning run; ``base_learning_rate`` of the base.
      lr_schedule: ``constant``, or ``cosine``: every fine-tuning run decays its step size from ``learning_rate``
        to 0 over its own budget (``run_steps`` for each DPO-LS / MO-DPO run, ``cos_steps`` for a COS run).
      beta: the common DPO temperature of all methods; ``beta_alt``: the second temperature of the Prop. 3.1 check.
      label_norm: ListNet label normalisation of the auxiliary labels: ``auto`` (``l1`` when every auxiliary label
        is sparse, i.e. ≥ 50 % zeros — MSLR's click counts — else ``softmax``, the paper's rule), ``softmax``, ``l1``.
      concentration: Dirichlet α of the W-COS-DPO / T-COS-DPO weight sampler.
      vertex_fraction: share of W-COS-DPO's weight draws put exactly on a uniformly chosen vertex e_k instead of
        drawn from the Dirichlet (0 = the paper's sampler).
      cover_concentration, cover_vertex_fraction: the sampler of the ``w_cos_dpo_vc`` method (vertex cover); the
        share ``None`` = the vertices' share of the ``num_weights`` evaluation weights (K / 11: DPO-LS's budget
        share at the vertices, set a priori).
      penalty: cosine penalty μ (eq. 18) of the COS methods (0 = plain scalarisation).
      per_example_weights: sample one w per query (default) instead of one per step (the paper's choice;
        docs/methods/cos-dpo.md allows both). Measured on the synthetic default (docs/experiments/cos-dpo-ltr.md,
        single runs): per query reached a higher hypervolume at equal steps — the conditioned model sees B weights
        per gradient step instead of one.
      tcos_beta_range: T-COS-DPO samples each β_k log-uniformly in this range.
      num_weights: points per front (11, as the paper).
      ndcg_k: NDCG cut-off.
      methods: which methods to run (``dpo_soup`` and ``mo_dpo`` need ``dpo_ls``'s vertex runs and run it). The
        default leaves out MO-DPO (9 more runs) and T-COS-DPO to keep ``make demo`` near a minute at the paper's
        widths; ``--methods w_cos_dpo w_cos_dpo_vc dpo_ls dpo_soup mo_dpo t_cos_dpo`` runs all (``--quick`` does).
      prop31: run the Prop. 3.1 temperature-rescaling check.
      seed: seed of data, initialisations and sampling (of the first seed).
      num_seeds: replicates of the whole experiment, at seeds ``seed + 1000·i`` (≥ 3 for a verdict).
      smoke: a smoke run (set by ``--quick``): its verdict is "smoke" and its report draws no conclusion.
      progress: show tqdm bars.
      out: run directory (default ``runs/cos_dpo_ltr/<timestamp>``).
    """

    data_path: str | None = None
    mslr_objectives: tuple[int, ...] = (134, 135)
    num_objectives: int = 2
    synthetic_relevance_corr: float = 0.25
    synthetic_aux_corr: float = -0.5
    num_queries: int = 1200
    list_size: int = 24
    num_features: int = 32
    test_fraction: float = 0.25
    base_d_model: int = 128
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    conditioning: Literal["augment", "concat"] = "concat"
    batch_size: int = 32
    base_steps: int = 400
    run_steps: int = 150
    cos_steps: int = 450
    learning_rate: float = 3e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    base_learning_rate: float = 3e-3
    beta: float = 1.0
    beta_alt: float = 2.0
    label_norm: Literal["auto", "softmax", "l1"] = "auto"
    concentration: float = 1.0
    vertex_fraction: float = 0.0
    cover_concentration: float = 1.0
    cover_vertex_fraction: float | None = None
    penalty: float = 0.0
    per_example_weights: bool = True
    tcos_beta_range: tuple[float, float] = (0.5, 2.0)
    num_weights: int = 11
    ndcg_k: int = 10
    methods: tuple[str, ...] = ("w_cos_dpo", "w_cos_dpo_vc", "dpo_ls", "dpo_soup")
    prop31: bool = True
    seed: int = 0
    num_seeds: int = 1
    smoke: bool = False
    progress: bool = True
    out: str | None = None

    def __post_init__(self):
        unknown = set(self.methods) - set(METHOD_LABELS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {sorted(METHOD_LABELS)}")
        if self.num_objectives < 2 and self.data_path is None:
            raise ValueError("a Pareto front needs num_objectives >= 2")
        if self.data_path is not None and len(self.mslr_objectives) < 2:
            raise ValueError("mslr_objectives needs at least 2 feature columns")
        if self.num_weights < 2:
            raise ValueError("num_weights must be >= 2")
        for name in ("vertex_fraction", "cover_vertex_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("beta", "beta_alt", "learning_rate", "base_learning_rate", "concentration", "cover_concentration"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        lo, hi = self.tcos_beta_range
        if not 0 < lo <= hi:
            raise ValueError(f"tcos_beta_range must satisfy 0 < lo <= hi, got {self.tcos_beta_range}")
        for name in ("batch_size", "base_steps", "run_steps", "cos_steps", "num_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def get_config(quick: bool = False) -> Config:
    """The ``make demo`` default, or with ``quick`` a seconds-long smoke preset (tiny task and models, few steps)."""
    if not quick:
        return Config()
    # CI smoke: every method (the default leaves two out) and the Prop. 3.1 check run end to end; numbers are not
    # meaningful at this size.
    return Config(num_queries=96, list_size=8, num_features=8, base_d_model=16, d_model=16, num_layers=1,
                  num_heads=2, mlp_dim=32, batch_size=16, base_steps=30, run_steps=6, cos_steps=18,
                  methods=tuple(METHOD_LABELS), progress=False, smoke=True)


# ----------------------------------------------------------------------------------------------------------------
# Methods: each trains its runs, evaluates its front at the experiment's weights and returns its metrics entry.
# ----------------------------------------------------------------------------------------------------------------


def summarize(exp: Experiment, diffs: list[np.ndarray], runs: list[Trained], *, params_per_run: int,
              steps_per_run: int) -> dict[str, Any]:
    """The metrics entry of a method whose test corrections at the experiment's weights are ``diffs``."""
    pts, mains = exp.eval_points(diffs)
    return method_summary(pts, mains, exp.base_point, seconds=sum(r.seconds for r in runs),
                          params=len(runs) * params_per_run, runs=len(runs), steps=len(runs) * steps_per_run,
                          weights=exp.weights, compile_seconds=sum(r.compile_seconds for r in runs))


def run_baselines(exp: Experiment, methods: set[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """DPO-LS (one run per weight), DPO Soup and MO-DPO (both built on DPO-LS's vertex runs); results and curves."""
    c, weights, test = exp.config, exp.weights, exp.test
    ls_runs = exp.run_dpo_ls(weights)
    ls_diffs = [exp.scores(r, test, exp.ref_test) for r in ls_runs]
    single = exp.count(0)
    results = {"dpo_ls": summarize(exp, ls_diffs, ls_runs, params_per_run=single, steps_per_run=c.run_steps)}
    vertices = vertex_indices(weights)
    singles = [ls_runs[v] for v in vertices]
    if "dpo_soup" in methods:
        diffs = [exp.scores(singles[0], test, exp.ref_test, params=exp.soup(w, singles)) for w in weights]
        results["dpo_soup"] = summarize(exp, diffs, singles, params_per_run=single, steps_per_run=c.run_steps)
    if "mo_dpo" in methods:
        # at e_k MO-DPO is DPO on objective k: the single model itself; one run per interior weight
        interior = [i for i in range(len(weights)) if i not in vertices]
        runs = dict(zip(interior, exp.run_modpo(weights[interior], singles)))
        diffs = [ls_diffs[i] if i in vertices else exp.scores(runs[i], test, exp.ref_test) for i in range(len(weights))]
        results["mo_dpo"] = summarize(exp, diffs, singles + list(runs.values()), params_per_run=single,
                                      steps_per_run=c.run_steps)
    return results, {"DPO-LS (w = first)": ls_runs[0].losses}


def run_t_cos(exp: Experiment) -> tuple[dict[str, Any], Trained, dict[str, np.ndarray]]:
    """T-COS-DPO: one run conditioned on (w, β/‖β‖₁); its front at β·1 and at two unequal temperature vectors."""
    c, k = exp.config, exp.num_objectives
    tcos = exp.train_t_cos()
    def diffs_at(betas: np.ndarray) -> list[np.ndarray]:
        # served at β = ‖β‖₁·d by Prop. 3.1 from the training scale K·β (see ltr_cos_dpo_objective)
        conds = [np.concatenate([w, betas / betas.sum()]) for w in exp.weights]
        return [exp.rescale(exp.scores(tcos, exp.test, exp.ref_test, cond=cond), k * c.beta, float(betas.sum()))
                for cond in conds]

    summary = summarize(exp, diffs_at(np.full(k, c.beta)), [tcos], params_per_run=exp.count(2 * k),
                        steps_per_run=c.cos_steps)
    lo, hi = c.tcos_beta_range
    vectors = {f"β = {c.beta:g}·1": np.full(k, c.beta), f"β_1 = {lo:g}, rest {hi:g}": np.r_[lo, np.full(k - 1, hi)],
               f"β_1 = {hi:g}, rest {lo:g}": np.r_[hi, np.full(k - 1, lo)]}
    return summary, tcos, {label: exp.eval_points(diffs_at(b))[0] for label, b in vectors.items()}


def prop31_check(exp: Experiment, wcos_diffs: list[np.ndarray], wcos_front: np.ndarray) -> dict[str, Any]:
    """Prop. 3.1: W-COS-DPO trained again at ``beta_alt``, rescaled to ``beta``, against the β-trained model."""
    c, where = exp.config, exp.test.where
    alt = exp.train_w_cos(c.beta_alt)
    raw = exp.w_cos_diffs(alt, exp.weights)
    rescaled = [exp.rescale(d, c.beta_alt, c.beta) for d in raw]
    raw_pts, _ = exp.eval_points(raw)
    res_pts, res_mains = exp.eval_points(rescaled)

    def rms(diffs: list[np.ndarray]) -> float:
        # Each list's correction is centred first: listwise losses ignore a per-list constant, so the correction's
        # offset is no part of the model (the head's bias gets a zero gradient up to rounding, on which Adam's
        # normalised steps random-walk) and Prop. 3.1 predicts the corrections only up to it.
        centred = [np.where(where, d - np.sum(np.where(where, d, 0), -1, keepdims=True) / where.sum(-1, keepdims=True),
                            0) for d in diffs]
        return float(np.sqrt(np.mean([np.mean(d[where] ** 2) for d in centred])))

    # Score-level agreement: Prop. 3.1 predicts β_alt·g_alt = β·g, i.e. the rescaled correction equals the
    # β-trained one; the relative RMS difference measures it directly (rankings only see it through NDCG).
    den = max(rms(wcos_diffs), 1e-12)
    return {
        "beta": c.beta, "beta_alt": c.beta_alt,
        "front_distance_rescaled": front_distance(res_pts, wcos_front),
        "front_distance_raw": front_distance(raw_pts, wcos_front),
        "score_rel_rms_rescaled": rms([r - d for r, d in zip(rescaled, wcos_diffs)]) / den,
        "score_rel_rms_raw": rms([r - d for r, d in zip(raw, wcos_diffs)]) / den,
        "hypervolume_beta": float(hypervolume(wcos_front, np.zeros(exp.num_objectives), maximize=True)),
        "hypervolume_rescaled": float(hypervolume(res_pts, np.zeros(exp.num_objectives), maximize=True)),
        "front_rescaled": res_pts.tolist(), "front_raw": raw_pts.tolist(),
        "main_ndcg_mean_rescaled": float(np.mean(res_mains)), "train_seconds": alt.seconds,
    }


def cover_vertex_fraction(c: Config, weights: np.ndarray) -> float:
    """The vertex-cover sampler's share of exact vertices: the config's, or the vertices' share of the weights."""
    return c.cover_vertex_fraction if c.cover_vertex_fraction is not None else len(vertex_indices(weights)) / len(
        weights)


def run_seed(c: Config, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                                             dict[str, np.ndarray]]:
    """One replicate of the experiment at ``c.seed``: its metrics (one seed's schema), loss curves, T-COS fronts."""
    exp = Experiment(c)
    k = exp.num_objectives
    d = exp.data_info
    log(f"{len(exp.train)} train / {len(exp.test)} test queries, L={exp.train.where.shape[1]}, F={exp.num_features}, "
        f"K={k} ({', '.join(exp.objective_names)}); label zero shares {d['label_zero_share']} → label_norm "
        f"{exp.label_norm}" + (f"; {d['lists_dropped_single_document']} one-document lists dropped"
                               if d.get("lists_dropped_single_document") else ""))
    base = exp.train_base()
    log(f"base ranker: {c.base_steps} steps in {base.seconds:.1f} s")
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, np.ndarray] = {"base (ListNet)": base.losses}
    if set(c.methods) & {"dpo_ls", "dpo_soup", "mo_dpo"}:  # Soup and MO-DPO need DPO-LS's vertex runs
        results, more_curves = run_baselines(exp, set(c.methods))
        curves |= more_curves
        log("baselines: " + ", ".join(f"{METHOD_LABELS[m]} HV {r['hypervolume']:.4g} in {r['train_seconds']:.1f} s"
                                      for m, r in results.items()))
    prop31: dict[str, Any] = {}
    if "w_cos_dpo" in c.methods or c.prop31:
        wcos = exp.train_w_cos(c.beta)
        wcos_diffs = exp.w_cos_diffs(wcos, exp.weights)
        results["w_cos_dpo"] = summarize(exp, wcos_diffs, [wcos], params_per_run=exp.count(k),
                                         steps_per_run=c.cos_steps)
        curves["W-COS-DPO"] = wcos.losses
        log(f"W-COS-DPO: HV {results['w_cos_dpo']['hypervolume']:.4g} in {wcos.seconds:.1f} s")
    cover = cover_vertex_fraction(c, exp.weights)
    if "w_cos_dpo_vc" in c.methods:
        vc = exp.train_w_cos(c.beta, concentration=c.cover_concentration, vertex_fraction=cover)
        results["w_cos_dpo_vc"] = summarize(exp, exp.w_cos_diffs(vc, exp.weights), [vc],
                                            params_per_run=exp.count(k), steps_per_run=c.cos_steps)
        curves["W-COS-DPO (vertex cover)"] = vc.losses
        log(f"W-COS-DPO (vertex cover, α = {c.cover_concentration:g}, vertex share {cover:.3g}): HV "
            f"{results['w_cos_dpo_vc']['hypervolume']:.4g} in {vc.seconds:.1f} s")
    tcos_fronts: dict[str, np.ndarray] = {}
    if "t_cos_dpo" in c.methods:
        results["t_cos_dpo"], tcos, tcos_fronts = run_t_cos(exp)
        curves["T-COS-DPO"] = tcos.losses
        log(f"T-COS-DPO: HV {results['t_cos_dpo']['hypervolume']:.4g}")
    if c.prop31:
        prop31 = prop31_check(exp, wcos_diffs, np.asarray(results["w_cos_dpo"]["front"]))
        log(f"Prop. 3.1: front distance {prop31['front_distance_rescaled']:.4f} rescaled vs "
            f"{prop31['front_distance_raw']:.4f} raw")
    results = {m: r for m, r in results.items() if m in c.methods}
    vertex = {}
    if "dpo_ls" in results:
        ls_front = np.asarray(results["dpo_ls"]["front"])
        vertex = {m: vertex_analysis(exp.weights, np.asarray(r["front"]), ls_front)
                  for m, r in results.items() if m != "dpo_ls"}
    metrics = {
        "seed": c.seed,
        "methods": results,
        "base": {"aux_ndcg": exp.base_point.tolist(), "main_ndcg": exp.base_main, "train_seconds": base.seconds,
                 "num_params": num_params(exp.base_model)},
        "objectives": exp.objective_names,
        "weights": exp.weights.tolist(),
        "hv_reference": [0.0] * k,
        "cos_budget_dpo_ls_runs": c.cos_steps / c.run_steps,
        "cover_vertex_fraction": cover,
        "vertex": vertex,
        "data": d | {"train_queries": len(exp.train), "test_queries": len(exp.test),
                     "list_size": int(exp.train.where.shape[1]), "num_features": exp.num_features},
        "prop31": prop31,
    }
    if tcos_fronts:
        metrics["t_cos_dpo_fronts"] = {name: v.tolist() for name, v in tcos_fronts.items()}
    return metrics, curves, tcos_fronts


def main(config: Config) -> Path:
    """Run the experiment (``num_seeds`` replicates); returns the run directory (``report.md``, ``metrics.json``,
    plots)."""
    c = config
    run_dir = make_run_dir(EXPERIMENT, c.out)
    save_config(run_dir, c)
    start = time.perf_counter()
    seeds = [c.seed + SEED_STRIDE * i for i in range(c.num_seeds)]
    print(f"[{EXPERIMENT}] run dir {run_dir}; {len(seeds)} seed(s) {seeds}", file=sys.stderr)
    per_seed, first = [], None
    for i, seed in enumerate(seeds):
        def log(msg: str, tag: str = f"seed {seed} ({i + 1}/{len(seeds)})") -> None:
            print(f"[{EXPERIMENT}] {time.perf_counter() - start:7.1f} s  {tag}: {msg}", file=sys.stderr, flush=True)

        out = run_seed(dataclasses.replace(c, seed=seed), log)
        per_seed.append(out[0])
        first = first or out
    metrics, curves, tcos_fronts = first
    summary = seed_summary(per_seed)
    verdict = decide(summary, budget_runs=c.cos_steps / c.run_steps, smoke=c.smoke)
    metrics = metrics | {
        "seeds": [{"seed": m["seed"], "vertex": m["vertex"],
                   "methods": {name: {key: r[key] for key in ("hypervolume", "hypervolume_gain", "main_ndcg_mean",
                                                              "train_seconds", "compile_seconds", "front")}
                               for name, r in m["methods"].items()}} for m in per_seed],
        "summary": summary,
        "verdict": dataclasses.asdict(verdict),
        "total_seconds": time.perf_counter() - start,
    }
    save_metrics(run_dir, metrics)
    write_outputs(run_dir, c, metrics, curves, tcos_fronts, verdict)
    print(f"[{EXPERIMENT}] {verdict.result}: report {run_dir / 'report.md'}")
    return run_dir


if __name__ == "__main__":
    cli(get_config, main)
