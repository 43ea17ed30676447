"""SPO experiment: the --quick smoke run (schema, smoke verdict, report), the helpful-vs-harmless task against an
independent reference, and the verdict rule (it must fail a policy that is S-DPO stopped early)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import _spo_real as SR
from experiments import _spo_stats as ST
from experiments import _spo_task as T
from experiments import spo as S
from lm_reference import finite
from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig

BASE = SyntheticLMConfig()


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick(S)


def test_quick_run_writes_the_documented_schema_and_concludes_nothing(quick_run):
    config, run_dir, metrics = quick_run
    assert metrics["verdict"]["result"] == "smoke" and metrics["verdict"]["claim"] == ST.CLAIM
    spo = S.alpha_name(config.alphas[0])
    assert set(metrics["methods"]) == {"sft", "dpo_dim1", "s_dpo", spo, "dpo_mix"}
    for m in metrics["methods"].values():
        for part in ("all", "benign", "risky"):
            assert len(m[part]["per_seed"]) == config.seeds and finite(m[part]["mean"])
    assert metrics["methods"]["sft"]["win_rate_vs_sft"]["mean"] == [0.5, 0.5]  # a policy against itself
    for b in ("dpo_mix", "s_dpo"):
        for d in T.DIMENSIONS:
            w = metrics["win_rates"][b][d]
            assert len(w["per_seed"]) == config.seeds and all(0 <= x <= 1 for x in w["per_seed"])
            assert w["lo"] <= w["mean"] <= w["hi"]
    fronts = metrics["fronts"]
    assert len(fronts["S-DPO (stopping step)"]["labels"]) == config.round2.steps // config.stop_every
    for f in fronts.values():
        assert all(0 <= h <= 1 for h in f["hypervolume"]["per_seed"])
    # S-DPO at θ = π_1 has z = 0 for every pair: ϕ = ½ exactly; SPO's ϕ = σ(αΔu) splits by the sign of Δu.
    assert metrics["phi"]["s_dpo"]["start"]["agree_mean"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["phi"][spo]["start"]["agree_mean"] > 0.5 > metrics["phi"][spo]["start"]["conflict_mean"]
    report = (run_dir / "report.md").read_text()
    assert "**Verdict: smoke**" in report and "draws no conclusion" in report
    for png in ("fronts.png", "phi.png", "round2.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ the task


def reference_rewards(topic: int, response: list[int], task: T.HHTask) -> tuple[float, float]:
    """Pure-Python re-derivation of (helpful, harmless) from the task's definition."""
    toks = []
    for t in response:
        if t == synthetic_lm.EOS:
            break
        if t != synthetic_lm.PAD:
            toks.append(t)
    n = max(len(toks), 1)
    c, c0 = BASE.tokens_per_class, BASE.content_start
    a = [t - c0 for t in toks if t >= c0 and ((t - c0) // c) % 3 == 0]
    helpful = len(a) / n
    harmful = sum(1 for o in a if o % c < task.harmful_tokens) / n
    return helpful, (1 - harmful) if topic in task.risky_topics else helpful


def token(topic: int, cls: int, j: int) -> int:
    c = BASE.tokens_per_class
    return BASE.content_start + topic * 3 * c + cls * c + j


def test_rewards_match_an_independent_reference():
    task = T.HHTask()
    rng = np.random.default_rng(0)
    topics = rng.integers(0, BASE.num_topics, 200)
    responses = rng.integers(0, BASE.vocab_size, (200, BASE.max_response_length))
    got = T.true_rewards(topics, responses, BASE, task)
    want = np.array([reference_rewards(int(t), list(r), task) for t, r in zip(topics, responses)])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_ideal_point_is_attainable_and_the_rewards_conflict_only_on_risky_prompts():
    task = T.HHTask()
    safe_a, harmful_a, refusal = token(0, 0, 3), token(0, 0, 0), token(0, 1, 0)
    eos = synthetic_lm.EOS
    resp = np.array([[safe_a, safe_a, eos, 0], [harmful_a, harmful_a, eos, 0], [refusal, refusal, eos, 0]])
    risky = T.true_rewards(np.array([0, 0, 0]), resp, BASE, task)  # topic 0 is risky
    benign = T.true_rewards(np.array([2, 2, 2]), resp, BASE, task)
    np.testing.assert_allclose(risky, [[1, 1], [1, 0], [0, 1]])  # safe help: both; harmful help / refusal: one
    np.testing.assert_allclose(benign[:, 0], benign[:, 1])  # benign: the dimensions agree exactly
    corr = T.base_correlations(BASE, task, num=2048)
    assert corr["benign"] == pytest.approx(1.0) and corr["risky"] < -0.5 and 0.3 < corr["risky_share"] < 0.7
    # Every class-A token harmful: no slack on risky prompts, the rewards sum to exactly 1 there.
    full = dataclasses.replace(task, harmful_tokens=BASE.tokens_per_class)
    r = T.true_rewards(np.zeros(3, int), resp, BASE, full)
    np.testing.assert_allclose(r.sum(1), 1.0)


def test_composition_splits_every_token_and_matches_the_rewards():
    task = T.HHTask()
    rng = np.random.default_rng(1)
    topics = rng.integers(0, BASE.num_topics, 300)
    responses = rng.integers(0, BASE.vocab_size, (300, BASE.max_response_length))
    responses[:, 0] = token(0, 2, 0)  # never empty
    comp = T.composition(topics, responses, BASE, task)
    r = T.true_rewards(topics, responses, BASE, task)
    risky = np.isin(topics, task.risky_topics)
    for part, mask in (("benign", ~risky), ("risky", risky)):
        shares = [comp[part][k] for k in T.COMPOSITION if k != "length"]
        assert sum(shares) == pytest.approx(1.0)
        assert comp[part]["harmful A"] + comp[part]["safe A"] == pytest.approx(r[mask, 0].mean())
    assert 1 - comp["risky"]["harmful A"] == pytest.approx(r[risky, 1].mean())


def test_pairs_are_chosen_first_by_bradley_terry_on_their_dimension():
    for d in (0, 1):
        pairs = T.make_pairs(BASE, T.HHTask(), dimension=d, num_pairs=600, seed=3)
        assert pairs.arrays["input_ids"].shape[:2] == (600, 2) and pairs.rewards.shape == (600, 2, 2)
        assert np.all(pairs.arrays["labels"][:, 0] == [1, 0]) and np.all(pairs.arrays["dataset_id"] == d)
        diff = pairs.rewards[:, 0, d] - pairs.rewards[:, 1, d]
        p = 1 / (1 + np.exp(-diff / BASE.temperature))
        np.testing.assert_allclose(pairs.true_prob[:, 0], p, atol=1e-5)
        assert np.mean(diff > 0) > 0.6  # labels follow the dimension's reward (BT noise allowed)
    with pytest.raises(ValueError, match="dimension"):
        T.make_pairs(BASE, T.HHTask(), dimension=2, num_pairs=4, seed=0)


# ------------------------------------------------------------------------------------------------ the verdict


def test_t_interval_matches_the_closed_form():
    mean, lo, hi = ST.t_interval(np.array([0.4, 0.5, 0.6]))
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t_{0.975, 2} · s / √n
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)
    _, lo1, hi1 = ST.t_interval(np.array([0.7]))
    assert lo1 == -np.inf and hi1 == np.inf


def policy_scores(rng, n, helpful, harmless):
    """[n, 2] sampled rewards around a policy's mean helpful/harmless levels."""
    return np.clip(np.stack([rng.normal(helpful, 0.15, n), rng.normal(harmless, 0.15, n)], 1), 0, 1)


def test_verdict_fails_a_policy_that_is_s_dpo_stopped_early():
    # The audit's counterexample: S-DPO stopped early sits between π_1 and S-DPO, so the old criterion ("beats S-DPO
    # on dimension 1 and π_1 on dimension 2") passes it; on the paper's terms it loses to S-DPO on dimension 2.
    rng = np.random.default_rng(0)
    win, old = [], []
    for _ in range(3):
        pi1, s_dpo, mix = (policy_scores(rng, 512, *m) for m in ((0.9, 0.05), (0.23, 0.74), (0.48, 0.48)))
        early = policy_scores(rng, 512, 0.74, 0.17)
        win.append([ST.paired_win_rates(early, mix), ST.paired_win_rates(early, s_dpo)])
        old.append(ST.paired_win_rates(early, s_dpo)[0] > 0.5 and ST.paired_win_rates(early, pi1)[1] > 0.5)
    assert all(old)
    verdict, table = ST.decide(np.array(win), ["dpo_mix", "s_dpo"], T.DIMENSIONS)
    assert verdict.result == "did_not_hold" and verdict.seeds == 3
    assert table["s_dpo"]["harmless"]["hi"] < 0.5 and "s_dpo on harmless" in verdict.test
    assert table["s_dpo"]["harmless"]["vs_half"] == "below"
    worst = table["s_dpo"]["harmless"]
    assert verdict.ci == (pytest.approx(worst["lo"]), pytest.approx(worst["hi"]))


def test_verdict_holds_only_when_every_interval_is_above_one_half():
    rng = np.random.default_rng(1)
    dominant = [[ST.paired_win_rates(policy_scores(rng, 512, 0.8, 0.8), policy_scores(rng, 512, *m))
                 for m in ((0.5, 0.5), (0.3, 0.7))] for _ in range(3)]
    assert ST.decide(np.array(dominant), ["dpo_mix", "s_dpo"], T.DIMENSIONS)[0].result == "held"
    same = [[ST.paired_win_rates(policy_scores(rng, 512, 0.5, 0.5), policy_scores(rng, 512, 0.5, 0.5))
             for _ in range(2)] for _ in range(3)]
    assert ST.decide(np.array(same), ["dpo_mix", "s_dpo"], T.DIMENSIONS)[0].result == "inconclusive"
    assert ST.decide(np.array(dominant[:1]), ["dpo_mix", "s_dpo"], T.DIMENSIONS)[0].result == "inconclusive"


# ------------------------------------------------------------------------------------------------ pieces


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


def test_mixed_pairs_have_the_requested_harmless_share():
    helpful = T.make_pairs(BASE, T.HHTask(), dimension=0, num_pairs=120, seed=0)
    harmless = T.make_pairs(BASE, T.HHTask(), dimension=1, num_pairs=120, seed=1)
    for share in (0.25, 0.5, 0.75):
        mix = S.mixed_pairs(helpful, harmless, share, seed=0)
        ids = mix.arrays["dataset_id"]
        assert np.mean(ids == 1) == pytest.approx(share, abs=0.01)
        assert max(np.sum(ids == 0), np.sum(ids == 1)) == 120  # the larger part is kept whole


def test_real_data_accuracy_of_the_reference_is_one_half():
    rng = np.random.default_rng(0)
    ref = rng.normal(-20, 3, (40, 2))
    assert SR.implicit_accuracy(ref, ref) == 0.5  # π_0 against itself: all ties (was reported as 0)
    better = ref + np.array([1.0, -1.0])
    assert SR.implicit_accuracy(better, ref) == 1.0


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="alphas"):
        S.Config(alphas=(0.0,))
    with pytest.raises(ValueError, match="mix_shares"):
        S.Config(mix_shares=(1.0,))
    with pytest.raises(ValueError, match="risky_topics"):
        S.Config(hh=T.HHTask(risky_topics=(7,)))
    with pytest.raises(ValueError, match="harmful_tokens"):
        S.Config(hh=T.HHTask(harmful_tokens=0))
    with pytest.raises(ValueError, match="stop_every"):
        S.Config(stop_every=0)
