"""SPO experiment: a --quick smoke run (metrics.json schema, finiteness, report) and its pure pieces."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import spo as S
from lm_reference import finite


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick(S)


def test_quick_run_writes_the_documented_schema(quick_run):
    config, run_dir, metrics = quick_run
    spo = S.alpha_name(config.alphas[0])
    assert set(metrics["methods"]) == {"sft", "dpo_dim1", "s_dpo", spo, "dpo_mix"}
    for name, m in metrics["methods"].items():
        assert len(m["mean_true_rewards"]) == 2 and finite(m["mean_true_rewards"])
        assert len(m["win_rate_vs_sft"]) == 2 and all(0 <= w <= 1 for w in m["win_rate_vs_sft"])
        assert finite(m["train_seconds"])
    assert metrics["methods"]["sft"]["win_rate_vs_sft"] == [0.5, 0.5]  # a policy against itself
    assert set(metrics["spo_vs"][spo]) == {"sft", "dpo_dim1", "s_dpo", "dpo_mix"}
    for name in ("s_dpo", spo):
        for when in ("start", "end"):
            p = metrics["phi"][name][when]
            assert 0 < p["agree_mean"] < 1 and 0 < p["conflict_mean"] < 1
            assert p["agree_count"] + p["conflict_count"] <= config.num_pairs
    # S-DPO at θ = π_1 has z = 0 for every pair: ϕ = ½ exactly.
    assert metrics["phi"]["s_dpo"]["start"]["agree_mean"] == pytest.approx(0.5, abs=1e-6)
    # SPO at θ = π_1: ϕ = σ(αΔu) > ½ exactly on the agreeing pairs.
    assert metrics["phi"][spo]["start"]["agree_mean"] > 0.5 > metrics["phi"][spo]["start"]["conflict_mean"]
    assert metrics["front"]["hypervolume"] >= 0 and len(metrics["front"]["points"]) == 1 + len(config.alphas)
    assert isinstance(metrics["claim"]["keeps_dim1_vs_s_dpo"], bool)
    report = (run_dir / "report.md").read_text()
    assert "## Did the paper's claim hold here?" in report
    for png in ("rewards.png", "phi.png", "round2.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phi_per_pair_matches_the_closed_form():
    rng = np.random.default_rng(0)
    logps = rng.normal(-10, 2, (50, 2))
    prev = rng.normal(-10, 2, (50, 2, 2))  # [E, (π_0, π_1), (chosen, rejected)]
    beta, alpha = 0.2, 0.35
    delta_u = (prev[:, 1, 0] - prev[:, 0, 0]) - (prev[:, 1, 1] - prev[:, 0, 1])
    z = beta * ((logps[:, 0] - prev[:, 1, 0]) - (logps[:, 1] - prev[:, 1, 1])) - alpha * delta_u
    want = 1 / (1 + np.exp(z))  # ϕ = σ(−z)
    np.testing.assert_allclose(S.phi_per_pair(logps, prev, beta=beta, alpha=alpha), want, rtol=1e-5, atol=1e-6)
    split = S.phi_split(want, delta_u)
    assert split["agree_mean"] == pytest.approx(want[delta_u > 0].mean())
    assert split["agree_count"] + split["conflict_count"] == 50


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="distinct"):
        S.Config(dimensions=(1, 1))
    with pytest.raises(ValueError, match="alphas"):
        S.Config(alphas=(0.0,))
