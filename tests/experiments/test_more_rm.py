"""MORE reward-model experiment: --quick smoke run (schema, finiteness, artefacts), λ against an independent QP
solve of the logged head gradients, the calibration helpers against float64 NumPy references, and the mixture
labelling against the true rewards recomputed from the collated tokens."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from experiments import _lm_common as lm
from experiments import more_rm
from mojax.data import synthetic_lm
from mojax.solvers import min_norm_weights


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("more_rm_quick")
    return more_rm.main(dataclasses.replace(more_rm.get_config(quick=True), out=str(out)))


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_quick_run_schema_and_artefacts(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"more", "hybrid", "sequential", "ensemble"}
    names = metrics["datasets"]
    assert len(names) == 3
    for name, m in metrics["methods"].items():
        for scores in [m["overall"], *m["per_dataset"].values()]:
            for key in ("accuracy", "ece_5", "ece_10", "ece_20", "true_prob_mae", "true_prob_ece"):
                assert _finite(scores[key]) and 0.0 <= scores[key] <= 1.0, (name, key, scores[key])
        assert set(m["per_dataset"]) == set(names)
        assert sum(s["num_pairs"] for s in m["per_dataset"].values()) == m["overall"]["num_pairs"]
        assert all(_finite(v) for v in m["reward_stats"].values())
        assert m["train_seconds"] > 0
    assert all(0.5 <= v <= 1.0 for v in metrics["bayes_accuracy"].values())
    assert "claim" in metrics and metrics["claim"]["text"]
    report = (quick_run / "report.md").read_text()
    for png in ("lambda.png", "reward_distributions.png", "reliability.png"):
        assert (quick_run / png).stat().st_size > 0 and f"]({png})" in report
    assert "Did the paper's claim hold here?" in report


def test_logged_lambda_is_the_min_norm_point_of_the_logged_head_gradients(quick_run):
    """Every step's λ is on the simplex and minimises ‖λᵀĜ‖² over the simplex for that step's (EMA,
    normalised) head-gradient rows Ĝ — checked against scipy's SLSQP, an independent QP solver."""
    logged = np.load(quick_run / "lambda_qp.npz")
    lam, rows = logged["lambda"].astype(np.float64), logged["qp_rows"].astype(np.float64)
    steps, k = lam.shape
    assert rows.shape[:2] == (steps, k) and rows.shape[2] > 0 and bool(logged["normalize"])
    np.testing.assert_allclose(lam.sum(1), 1.0, atol=1e-5)
    assert (lam >= -1e-7).all()
    for s in range(steps):
        g = rows[s] / np.linalg.norm(rows[s], axis=1, keepdims=True)
        gram = g @ g.T
        ref = minimize(lambda x: x @ gram @ x, np.full(k, 1.0 / k), jac=lambda x: 2 * gram @ x, method="SLSQP",
                       bounds=[(0, 1)] * k, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                       options={"ftol": 1e-14, "maxiter": 500})
        assert lam[s] @ gram @ lam[s] <= ref.fun + 1e-6, s
        np.testing.assert_allclose(np.asarray(min_norm_weights(rows[s].astype(np.float32), normalize=True)), lam[s],
                                   atol=1e-5)
    # The EMA moves slowly (decay 0.99), so consecutive QP inputs are close but not equal: λ is recomputed per step.
    assert not np.array_equal(rows[0], rows[-1])


def _ece_reference(p: np.ndarray, num_bins: int) -> float:
    """Guo et al. ECE, written independently: bins ((m−1)/M, m/M] of the confidence max(p, 1−p)."""
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(np.float64) + 0.5 * (p == 0.5)
    total = 0.0
    for m in range(num_bins):
        lo, hi = m / num_bins, (m + 1) / num_bins
        sel = (conf > lo) & (conf <= hi) if m > 0 else (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


@settings(max_examples=20, deadline=None)  # each new length compiles the JAX ECE once
@given(st.lists(st.floats(-8.0, 8.0, allow_nan=False, width=32), min_size=1, max_size=60),
       st.sampled_from([5, 10, 20]))
def test_pairwise_ece_matches_reference(margins, num_bins):
    p = more_rm.sigmoid(np.asarray(margins, np.float64)).astype(np.float32).astype(np.float64)
    assert more_rm.pairwise_ece(p, num_bins=num_bins) == pytest.approx(_ece_reference(p, num_bins), abs=2e-6)


def test_pairwise_ece_closed_forms():
    # All predictions right with confidence 0.8 → |1 − 0.8|; half right at confidence 0.5 → 0.
    assert more_rm.pairwise_ece(np.full(7, 0.8)) == pytest.approx(0.2, abs=1e-6)
    assert more_rm.pairwise_ece(np.full(4, 0.5)) == pytest.approx(0.0, abs=1e-7)
    # One wrong (p = 0.3: confidence 0.7, wrong) and one right (p = 0.7) in the same bin: |0.5 − 0.7| = 0.2.
    assert more_rm.pairwise_ece(np.array([0.3, 0.7]), num_bins=10) == pytest.approx(0.2, abs=1e-6)
    with pytest.raises(ValueError):
        more_rm.pairwise_ece(np.array([]))


def test_reliability_bins_against_truth():
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 1, 500)
    perfect = more_rm.reliability_bins(q, q, num_bins=10)
    assert float(perfect["error"]) == pytest.approx(0.0, abs=1e-12)
    assert perfect["count"].sum() == 1000  # both orientations of every pair
    # A constant prediction of ½ is off by the mean |q − ½| (bins of p hold everything in one bin).
    half = more_rm.reliability_bins(np.full(500, 0.5), q, num_bins=10)
    assert float(half["error"]) == pytest.approx(abs(np.concatenate([q, 1 - q]).mean() - 0.5), abs=1e-12)
    with pytest.raises(ValueError):
        more_rm.reliability_bins(q, q[:-1])


def test_synthetic_datasets_follow_their_mixtures():
    """Chosen first, dataset ids, and true_prob = σ(ΔR^(k)/τ) with R^(k) recomputed from the collated tokens."""
    task = synthetic_lm.SyntheticLMConfig()
    mixtures = ((0.5, 0.0, 0.5, 0.0), (0.0, 0.0, 0.5, 0.5))
    data, margin = more_rm.synthetic_datasets(task, mixtures, num_pairs=40, seed=3)
    assert len(data) == 80
    np.testing.assert_array_equal(data.arrays["dataset_id"], np.repeat([0, 1], 40))
    np.testing.assert_array_equal(data.arrays["labels"][:, 0], np.tile([1.0, 0.0], (80, 1)))
    full = dataclasses.replace(task, objectives=synthetic_lm.OBJECTIVES)
    ids, lmask = data.arrays["input_ids"], data.arrays["loss_mask"]
    recomputed = np.zeros((80, 2))
    for i in range(80):
        prompt = np.asarray(data.prompts[i])
        for j in range(2):
            resp = ids[i, j][lmask[i, j]]
            r = synthetic_lm.true_rewards(prompt[None], resp[None], full)[0]
            recomputed[i, j] = np.asarray(mixtures[data.arrays["dataset_id"][i]]) @ r
    np.testing.assert_allclose(recomputed[:, 0] - recomputed[:, 1], margin, atol=1e-6)
    np.testing.assert_allclose(data.true_prob[:, 0], 1 / (1 + np.exp(-margin / task.temperature)), atol=1e-9)
    assert 0.2 < np.mean(data.true_prob[:, 0] > 0.5) < 1.0  # BT labels are noisy: some chosen are truly worse


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        more_rm.Config(methods=("more", "nope"))
    with pytest.raises(ValueError, match="mixture"):
        more_rm.Config(mixtures=((1.0, 0.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="at least 2"):
        more_rm.Config(mixtures=((1.0, 0.0, 0.0, 0.0),))
    with pytest.raises(ValueError, match="tokenizer"):
        more_rm.Config(data_paths=("a.jsonl", "b.jsonl"))


def test_train_rm_reuses_one_compiled_step():
    """Runs sharing one objective object compile once (the K-run baselines) and give train_policy's exact result;
    the batch is capped at a per-dataset subset's size."""
    from experiments import _lm_common
    from mojax.train.objectives import bradley_terry_objective

    task = synthetic_lm.SyntheticLMConfig()
    backbone = lm.build_decoder(task, lm.ModelConfig(d_model=16, num_layers=1, num_heads=2, mlp_dim=32), seed=0)
    data, _ = more_rm.synthetic_datasets(task, ((0, 0, 1, 0), (0, 0, 0, 1)), num_pairs=16, seed=0)
    cfg = lm.TrainConfig(steps=3, batch_size=8, learning_rate=1e-2, warmup_steps=0, eval_every=0)
    rm = more_rm.make_reward_model(backbone, seed=0)
    bt = bradley_terry_objective()
    a, _ = lm.train_policy(rm, bt, data, cfg, progress=False)
    size = len(_lm_common._STEP_CACHE)
    more_rm.train_rm(rm, bt, data, cfg, steps=1, desc="x", progress=False)  # another run length: same program
    b, hist = more_rm.train_rm(rm, bt, data, cfg, desc="x", progress=False)
    assert len(_lm_common._STEP_CACHE) == size
    assert len(hist.metrics["loss"]) == 3
    np.testing.assert_allclose(more_rm.pair_rewards(a, data), more_rm.pair_rewards(b, data), rtol=1e-5, atol=1e-6)
    small = data.subset(np.arange(5))
    _, hist = more_rm.train_rm(rm, bt, small, cfg, steps=2, desc="x", progress=False)  # batch 8 > 5 examples
    assert len(hist.metrics["loss"]) == 2
