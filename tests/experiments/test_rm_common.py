"""Reward-model pieces of the MORE experiment (experiments/_rm_common.py): the calibration helpers against float64
NumPy references and the mixture labelling against the true rewards recomputed from the collated tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import _rm_common as R
from mojax.data import synthetic_lm


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
    p = R.sigmoid(np.asarray(margins, np.float64)).astype(np.float32).astype(np.float64)
    assert R.pairwise_ece(p, num_bins=num_bins) == pytest.approx(_ece_reference(p, num_bins), abs=2e-6)


def test_pairwise_ece_closed_forms():
    # All predictions right with confidence 0.8 → |1 − 0.8|; half right at confidence 0.5 → 0.
    assert R.pairwise_ece(np.full(7, 0.8)) == pytest.approx(0.2, abs=1e-6)
    assert R.pairwise_ece(np.full(4, 0.5)) == pytest.approx(0.0, abs=1e-7)
    # One wrong (p = 0.3: confidence 0.7, wrong) and one right (p = 0.7) in the same bin: |0.5 − 0.7| = 0.2.
    assert R.pairwise_ece(np.array([0.3, 0.7]), num_bins=10) == pytest.approx(0.2, abs=1e-6)
    with pytest.raises(ValueError):
        R.pairwise_ece(np.array([]))


def test_reliability_bins_against_truth():
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 1, 500)
    perfect = R.reliability_bins(q, q, num_bins=10)
    assert float(perfect["error"]) == pytest.approx(0.0, abs=1e-12)
    assert perfect["count"].sum() == 1000  # both orientations of every pair
    # A constant prediction of ½ is off by the mean |q − ½| (bins of p hold everything in one bin).
    half = R.reliability_bins(np.full(500, 0.5), q, num_bins=10)
    assert float(half["error"]) == pytest.approx(abs(np.concatenate([q, 1 - q]).mean() - 0.5), abs=1e-12)
    with pytest.raises(ValueError):
        R.reliability_bins(q, q[:-1])


def test_synthetic_datasets_follow_their_mixtures():
    """Chosen first, dataset ids, and true_prob = σ(ΔR^(k)/τ) with R^(k) recomputed from the collated tokens."""
    task = synthetic_lm.SyntheticLMConfig()
    mixtures = ((0.5, 0.0, 0.5, 0.0), (0.0, 0.0, 0.5, 0.5))
    data, margin = R.synthetic_datasets(task, mixtures, num_pairs=40, seed=3)
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
