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


def test_logistic_head_is_the_regularised_logistic_minimiser():
    """Newton's solution equals an independent scipy L-BFGS minimisation of the same objective."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    diff = rng.normal(size=(40, 6)) + 0.3
    l2 = 0.5
    obj = lambda w: np.mean(np.logaddexp(0.0, -diff @ w)) + 0.5 * l2 * w @ w  # noqa: E731
    ref = minimize(obj, np.zeros(6), method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15}).x
    np.testing.assert_allclose(H.logistic_head(diff, l2), ref, atol=1e-5)


def test_logistic_reference_learns_a_linear_preference():
    feats = H.random_features(k=2, n=120, d=4, seed=1)
    cfg = H.HeadsConfig(reference_l2=0.01)
    rows = {(r["reference"], r["data"]): r for r in H.reference_rows(H.logistic_reference(feats, cfg), cfg)}
    assert rows[("per_dataset", "overall")]["accuracy"] > 0.8  # separable by construction
    pooled = rows[("pooled", "overall")]
    assert pooled["pairs"] == 240 and {"ece_5", "ece_10", "ece_20"} <= set(pooled)


def test_read_hh_pairs_counts_what_it_examined(tmp_path):
    import gzip

    from experiments._more_hh import read_hh_pairs

    recs = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad"}
            for i in range(6)] + [{"chosen": "same", "rejected": "same"}]
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in recs))
    tok = lambda text: {"input_ids": list(range(len(text.split())))}  # noqa: E731
    out = read_hh_pairs(path, tok, max_length=6, max_pairs=10, seed=0)
    assert out["records_read"] == out["records_examined"] == 7
    assert out["skipped"]["identical"] == 1 and len(out["chosen"]) + out["skipped"]["too_long"] == 6
    assert all(p.endswith("\n\nAssistant:") for p in out["prompts"])


def test_quick_run_writes_a_smoke_report(tmp_path):
    """Through the public entry point ``more_rm --preset hh-smollm2 --quick`` (one code path with _more_heads)."""
    from experiments import more_rm

    assert more_rm.run_cli(["--preset", "hh-smollm2", "--quick", "--out", str(tmp_path)]) == 0
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
