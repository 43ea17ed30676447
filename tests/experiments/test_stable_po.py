"""Stable PO experiment: a --quick smoke run (metrics.json schema, finiteness, report) and its pure pieces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import experiments._lm_common as L
from experiments import stable_po as S
from lm_reference import finite
from mojax.losses import dpo_loss

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick(S)


def test_quick_run_writes_the_documented_schema(quick_run):
    config, run_dir, metrics = quick_run
    k = config.task.num_objectives
    assert set(metrics["methods"]) == set(S.METHOD_LABELS)
    steps = [0, 3, 6]  # eval_every = 3, 6 steps
    for name, m in metrics["methods"].items():
        for key in ("chosen_logp_delta", "rejected_logp_delta", "accuracy", "true_accuracy", "train_seconds"):
            assert finite(m[key]), (name, key, m[key])
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["true_accuracy"] <= 1.0
        assert len(m["mean_true_rewards"]) == k and len(m["win_rate_vs_sft"]) == k
        assert all(0.0 <= w <= 1.0 for w in m["win_rate_vs_sft"])
        t = m["trajectory"]
        assert t["step"] == steps and len(t["chosen_logps"]) == len(t["rejected_logps"]) == len(steps)
        assert finite(t["chosen_logps"]) and finite(t["rejected_logps"])
        # Every method starts from the same π_0: the step-0 evaluation is π_0's.
        assert t["chosen_logps"][0] == pytest.approx(metrics["sft"]["chosen_logps"], abs=1e-4)
        assert m["chosen_logp_delta"] == pytest.approx(t["chosen_logps"][-1] - t["chosen_logps"][0], abs=1e-4)
    assert metrics["sft"]["nll_after"] < metrics["sft"]["nll_before"]
    assert isinstance(metrics["claim"]["held"], bool)
    report = (run_dir / "report.md").read_text()
    assert "## Did the paper's claim hold here?" in report
    for png in ("logp_trajectories.png", "accuracy.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_penalty_zero_stable_po_is_dpo_and_the_hinge_adds_lambda_times_the_drop():
    quick = S.get_config(quick=True)
    model = L.build_decoder(quick.task, quick.model)  # the quick run's graph: its compiled log-prob pass is reused
    data = L.synthetic_pairs(quick.task, dimension=0, num_pairs=8, seed=0)
    logps = L.pair_logps(model, data)
    ref = logps + np.array([[0.7, -0.2]], np.float32) * np.arange(8)[:, None] / 8  # chosen fell by up to 0.6
    batch = {k: jnp.asarray(v) for k, v in dataclasses.replace(
        data, arrays={**data.arrays, "ref_logps": ref[:, None, :]}).batch(np.arange(8)).items()}
    cfg = dataclasses.replace(quick, beta=0.3, penalty=0.0)
    lam = 2.0
    objectives = [S.objective_for("stable_po", cfg), S.objective_for("dpo", cfg),
                  S.objective_for("stable_po", dataclasses.replace(cfg, penalty=lam))]
    graphdef, state = nnx.split(model)
    # One jitted evaluation of the three objectives (eager op-by-op dispatch is slow on a shared 2-core CPU).
    plain, dpo, pen = jax.jit(lambda st, b: [f(nnx.merge(graphdef, st), b, jax.random.key(0))[0]
                                             for f in objectives])(state, batch)
    want = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=0.3)
    np.testing.assert_allclose(plain, want, rtol=1e-5)
    np.testing.assert_allclose(dpo, want, rtol=1e-5)
    hinge = np.maximum(ref[:, 0] - logps[:, 0], 0).mean()
    np.testing.assert_allclose(pen, float(want) + lam * hinge, rtol=1e-5)
    assert hinge > 0.1  # the check above exercised an active hinge


def test_pair_metrics_by_hand():
    logps = np.array([[-1.0, -3.0], [-2.0, -1.0], [-4.0, -4.5]])
    ref = np.array([[-2.0, -2.0], [-2.0, -2.0], [-4.0, -4.0]])
    lengths = np.array([[1, 2], [2, 1], [4, 1]])
    out = S.pair_metrics(logps, ref, lengths, true_margin=np.array([1.0, -1.0, 0.0]))
    # DPO margins: (1 − (−1)) = 2, (0 − 1) = −1, (0 − (−0.5)) = 0.5 → 2 of 3 positive.
    assert out["accuracy_dpo"] == pytest.approx(2 / 3)
    # Length-normalised: −1 vs −1.5 (yes), −1 vs −1 (no: tie), −1 vs −4.5 (yes).
    assert out["accuracy_simpo"] == pytest.approx(2 / 3)
    # True order on the two untied pairs: +, −; DPO margins +, − agree on both.
    assert out["true_accuracy_dpo"] == 1.0
    assert out["chosen_logps"] == pytest.approx(-7 / 3)


def test_claim_summary_decides_from_the_numbers():
    res = {"dpo": {"chosen_logp_delta": -3.0, "accuracy": 0.70},
           "stable_po": {"chosen_logp_delta": 0.01, "accuracy": 0.69}}
    c = S.claim_summary(res, n_eval=400)
    assert c["dpo_chosen_falls"] and c["stable_po"]["chosen_holds"] and c["stable_po"]["accuracy_not_worse"]
    assert c["held"]
    res["stable_po"]["accuracy"] = 0.55  # far below DPO: not "equal or better"
    assert not S.claim_summary(res, n_eval=400)["held"]
    res["stable_po"]["accuracy"] = 0.70
    res["dpo"]["chosen_logp_delta"] = 0.2  # no displacement under DPO: nothing to fix, the claim is not shown
    assert not S.claim_summary(res, n_eval=400)["held"]
    assert "did not hold" in S.claim_paragraph({m: {**r, "rejected_logp_delta": -1.0} for m, r in res.items()},
                                               S.claim_summary(res, n_eval=400))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        S.Config(methods=("dpo", "orpo"))
    with pytest.raises(ValueError, match="dimension"):
        S.Config(dimension=7)
