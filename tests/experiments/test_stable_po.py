"""Stable PO experiment: the arithmetic task (worked answers, near misses, exact match), the paired statistics and
verdict, and a --quick smoke run (metrics.json schema, report, plots)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from experiments import _stable_arith as A
from experiments import _stable_stats as st
from experiments import stable_po as S

TASK = A.ArithmeticTask(digits=3)


def _random_problems(n=400, digits=3, seed=0):
    rng = np.random.default_rng(seed)
    return A.Problems(a=rng.integers(0, 10 ** digits, n), b=rng.integers(0, 10 ** digits, n))


def test_worked_answer_by_hand_and_against_integer_addition():
    assert A.worked_answer(237, 348, 3) == "15,08,05>585"
    assert A.worked_answer(999, 1, 3) == "10,10,10>1000"
    assert A.worked_answer(0, 0, 3) == "00,00,00>000"
    p = _random_problems()
    for a, b in zip(p.a, p.b):
        text = A.worked_answer(int(a), int(b), 3)
        sums, answer = text.split(">")
        assert int(answer) == a + b
        digits_a, digits_b = f"{a:03d}"[::-1], f"{b:03d}"[::-1]
        carry = 0
        for j, s in enumerate(sums.split(",")):  # each column sum re-derived from the digits
            want = int(digits_a[j]) + int(digits_b[j]) + carry
            assert int(s) == want and len(s) == 2
            carry = want // 10


def test_near_miss_is_wrong_and_differs_minimally():
    p = _random_problems(n=2000)
    rng = np.random.default_rng(1)
    kinds = {"dropped_carry": 0, "slip": 0}
    for a, b in zip(p.a, p.b):
        chosen, rejected = A.worked_answer(int(a), int(b), 3), A.near_miss(int(a), int(b), 3, rng)
        assert len(rejected) == len(chosen)
        diff = [i for i, (x, y) in enumerate(zip(chosen, rejected)) if x != y]
        assert len(diff) == 2, (chosen, rejected)  # one column sum's ones digit and its answer digit
        wrong = int(A.answer_of(rejected))
        assert wrong != a + b and abs(wrong - (a + b)) in (1, 10, 100)
        j = diff[0] // 3  # the column whose sum changed
        kinds["dropped_carry" if j > 0 and int(chosen.split(",")[j - 1][:2]) >= 10
              and int(rejected.split(">")[0].split(",")[j]) < int(chosen.split(">")[0].split(",")[j])
              else "slip"] += 1
    assert min(kinds.values()) > 200  # both kinds of error occur


def test_pair_and_sft_rows_and_disjoint_splits():
    train, held = A.make_problems(TASK, num_train=300, num_eval=50, seed=0)
    assert not set(zip(train.a.tolist(), train.b.tolist())) & set(zip(held.a.tolist(), held.b.tolist()))
    data = A.pair_data(TASK, held, seed=0)
    ids, mask = data.arrays["input_ids"], data.arrays["loss_mask"]
    assert ids.shape == (50, 2, TASK.width) and (data.arrays["labels"][:, 0] == [1, 0]).all()
    for i in range(5):
        prompt = A.decode(data.prompts[i])
        assert prompt == A.prompt_text(int(held.a[i]), int(held.b[i]), 3)
        chosen = A.decode(ids[i, 0][mask[i, 0]])  # the scored tokens: the response and its EOS
        assert chosen == A.worked_answer(int(held.a[i]), int(held.b[i]), 3)
        assert ids[i, 0][mask[i, 0]][-1] == A.EOS and A.decode(ids[i, 1][mask[i, 1]]) != chosen
    sft = A.sft_data(TASK, held)
    np.testing.assert_array_equal(sft.arrays["input_ids"][:, 0], ids[:, 0])
    with pytest.raises(ValueError, match="exceed"):
        A.make_problems(A.ArithmeticTask(digits=1), num_train=90, num_eval=20)


def test_exact_match_grades_the_final_answer():
    p = A.Problems(a=np.array([237, 237, 237, 237, 999]), b=np.array([348, 348, 348, 348, 1]))
    responses = ["15,08,05>585",  # correct
                 "99,99,99>585",  # wrong steps, right answer: the final answer is what is graded
                 "15,08,05>586",  # near miss
                 "15,08,05585",  # no answer marker
                 "10,10,10>000"]  # dropped final carry
    np.testing.assert_array_equal(A.exact_match(responses, p, TASK), [True, True, False, False, False])
    assert A.decode([A.BOS, *A.encode("12>3"), A.EOS, *A.encode("9")]) == "12>3"


def test_paired_bootstrap_and_mcnemar():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, size=(3, 400))
    out = st.paired_bootstrap(d, n_boot=2000)
    assert out["mean"] == pytest.approx(d.mean()) and out["lo"] < out["mean"] < out["hi"]
    # The bootstrap SE of a mean over problems ≈ the SD of the per-problem seed means / sqrt(P).
    assert out["se"] == pytest.approx(d.mean(0).std(ddof=1) / np.sqrt(400), rel=0.1)
    const = st.paired_bootstrap(np.full((2, 10), 0.25))
    assert const["lo"] == const["hi"] == pytest.approx(0.25)
    a = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 1, 1]], bool)
    b = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 1, 1]], bool)
    m = st.mcnemar(a, b)
    assert (m["a_only"], m["b_only"]) == (4, 1)
    assert m["p"] == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)
    assert st.mcnemar(a, a)["p"] == 1.0
    with pytest.raises(ValueError):
        st.paired_bootstrap(np.array([[0.0, np.nan]]))


def test_decide_from_intervals():
    ci = lambda lo, hi: {"mean": (lo + hi) / 2, "lo": lo, "hi": hi}  # noqa: E731
    assert st.decide(ci(-0.01, 0.2), ci(0.01, 0.05))["result"] == "held"
    assert st.decide(ci(-0.01, 0.2), ci(-0.02, 0.05))["result"] == "inconclusive"
    assert st.decide(ci(-3.0, -1.0), ci(0.01, 0.05))["result"] == "did_not_hold"  # the chosen log-prob fell
    assert st.decide(ci(0.0, 0.2), ci(-0.05, -0.01))["result"] == "did_not_hold"  # exact match lower
    assert st.decide(ci(-0.2, 0.1), ci(0.01, 0.05))["result"] == "inconclusive"


def test_method_keys_and_lambda_relative_to_beta():
    config = S.Config(beta=0.2, penalty_ratios=(0.1, 1.0, 10.0), gap_ratios=(1.0,))
    keys = S.run_list(config)
    assert keys == ["dpo", "stable_po_r0.1", "stable_po_r1", "stable_po_r10", "bilevel_r1", "value_gap_r1", "simpo",
                    "simpo_stable_r1"]
    objs = {k: S.objective_for(k, config, mean_chosen_length=10.0) for k in keys}
    assert objs["stable_po_r10"][1] == {"penalty": pytest.approx(2.0)}
    assert objs["stable_po_r0.1"][0].fn is objs["stable_po_r10"][0].fn  # one compiled step for the λ sweep
    assert objs["simpo_stable_r1"][1]["penalty"] == pytest.approx(config.simpo_beta / 10.0)
    assert objs["simpo"][0].fn is objs["simpo_stable_r1"][0].fn and objs["simpo"][1] == {"penalty": 0.0}
    with pytest.raises(ValueError, match="primary_ratio"):
        S.Config(penalty_ratios=(0.1,))
    with pytest.raises(ValueError, match="unknown"):
        S.Config(methods=("dpo", "orpo"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # The smoke preset with the value-gap objective (new) and the penalty family; the bilevel and SimPO objectives
    # go through the same code path and are tested in tests/train.
    config = dataclasses.replace(S.get_config(quick=True), methods=("dpo", "stable_po", "value_gap"),
                                 out=str(tmp_path_factory.mktemp("stable_po")))
    run_dir = S.main(config)
    return config, run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_quick_run_is_a_smoke_run_with_the_documented_schema(quick_run):
    config, run_dir, metrics = quick_run
    assert metrics["verdict"]["result"] == "smoke" and metrics["verdict"]["seeds"] == len(config.seeds)
    assert set(metrics["methods"]) == {"dpo", "stable_po_r1", "value_gap_r1"}
    steps = [0, 2, 4]
    for key, m in metrics["methods"].items():
        assert 0.0 <= m["exact_match"] <= 1.0 and len(m["exact_match_seeds"]) == len(config.seeds)
        c = m["chosen_logp_delta"]
        assert np.isfinite([c["mean"], c["lo"], c["hi"], m["rejected_logp_delta"]]).all() and c["lo"] <= c["hi"]
        t = m["trajectory"]
        assert t["step"] == steps and len(t["chosen_logps"]) == len(t["exact_match"]) == len(steps)
        # Every method starts from the same π_0 per seed: the step-0 evaluation is π_0's (mean over seeds).
        assert t["chosen_logps"][0] == pytest.approx(metrics["sft"]["chosen_logps"], abs=1e-4)
        assert set(m["vs_sft"]) == {"exact_match_diff", "mcnemar"}
        if key != "dpo":
            assert set(m["vs_dpo"]) == {"exact_match_diff", "exact_match_diff_seeds", "mcnemar"}
    assert metrics["methods"]["stable_po_r1"]["hparams"] == {"penalty": pytest.approx(config.beta)}
    with np.load(run_dir / "per_problem.npz") as arrays:  # the per-problem data the summary was computed from
        correct = arrays["stable_po_r1/correct"]
        assert correct.shape == (len(config.seeds), config.num_eval)
        assert metrics["methods"]["stable_po_r1"]["exact_match"] == pytest.approx(correct.mean())
        d = arrays["stable_po_r1/chosen"] - arrays["sft/chosen"]
        assert metrics["methods"]["stable_po_r1"]["chosen_logp_delta"]["mean"] == pytest.approx(d.mean(), abs=1e-5)
    report = (run_dir / "report.md").read_text()
    assert "**Verdict: smoke**" in report and "draws no conclusion" in report
    for png in ("logp_trajectories.png", "exact_match.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
