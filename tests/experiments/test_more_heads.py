"""MORE head experiment on cached features (experiments/_more_heads.py): metrics, split, verdict rule, smoke run."""

import json

import numpy as np
import pytest

from experiments import _more_heads as H
from experiments._rm_common import pairwise_ece


def test_ece_equals_the_library_ece_for_every_bin_count():
    margins = np.random.default_rng(0).normal(scale=2.0, size=(3, 57))
    for bins in (5, 10, 20):
        got = H.ece(margins, bins)
        want = [pairwise_ece(1.0 / (1.0 + np.exp(-m)), num_bins=bins) for m in margins]
        np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(H.accuracy(np.array([[1.0, -1.0, 0.0, 2.0]])), [0.625])


def test_folds_keep_each_prompt_together():
    hashes = np.repeat(np.arange(20, dtype=np.uint64), 3)
    fold = H.fold_of(hashes, seed=1)
    assert set(fold.tolist()) == {0, 1}
    assert all(len(set(fold[hashes == h].tolist())) == 1 for h in range(20))


def _summary(result_margins, seeds=3):
    ds = np.repeat([0, 1], 30)
    result = {"dataset": ds, "names": ["a", "b"], "margins": result_margins}
    return H.summarize(result, H.HeadsConfig(seeds=seeds, bootstrap=200))


def test_summary_of_identical_methods_has_zero_difference_and_cis():
    m = np.random.default_rng(0).normal(size=(3, 60))
    s = _summary({k: m for k in H.METHODS})
    row = s["more"]["overall"]
    assert row["d_ece_10"] == 0 and row["d_ece_10_ci"] == [0.0, 0.0] and row["d_accuracy_ci_seeds"] == [0.0, 0.0]
    assert s["more"]["a"]["num_pairs"] == 30


def test_verdict_follows_the_stated_rule():
    # 70% of the pairs right: confident margins (p ≈ 0.99) are over-confident, margins of logit(0.7) calibrated.
    signs = np.where(np.random.default_rng(0).random(size=(3, 60)) < 0.7, 1.0, -1.0)
    confident = {k: 5.0 * signs for k in H.METHODS}
    calm = {**confident, "more": np.log(0.7 / 0.3) * signs}
    cfg = H.HeadsConfig(seeds=3, bootstrap=200)
    assert H.decide(_summary(calm), cfg, quick=False).result == "held"
    swapped = {**confident, "hybrid": calm["more"]}
    assert H.decide(_summary(swapped), cfg, quick=False).result == "did_not_hold"
    worse = {**calm, "more": -calm["more"]}  # calibrated-looking but wrong on every pair: accuracy CI below 0
    assert H.decide(_summary(worse), cfg, quick=False).result == "did_not_hold"
    assert H.decide(_summary(confident), cfg, quick=False).result == "inconclusive"
    assert H.decide(_summary(calm), cfg, quick=True).result == "smoke"


def test_quick_run_writes_a_smoke_report(tmp_path):
    assert H.main(["--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["verdict"]["result"] == "smoke"
    assert set(metrics["methods"]) == set(H.METHODS)
    lam = np.asarray(metrics["lambda"]["final"])
    assert lam.shape == (3,) and abs(lam.sum() - 1) < 1e-5
    for name in ("report.md", "reward_distributions.png", "lambda.png"):
        assert (tmp_path / name).is_file()
    assert "draws no conclusion" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv", [["--out"], ["--quick", "--out", "x", "--pooling", "max"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        H.main(argv)
    assert e.value.code == 2
