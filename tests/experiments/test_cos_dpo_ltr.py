"""Tests for experiments/cos_dpo_ltr.py and its ``_ltr_*`` modules: helpers, the report, a --quick smoke run.

The LTR objectives are tested in tests/train/test_train_objectives_ranking.py, the simplex helpers in
tests/test_simplex.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from experiments import _ltr_report as R
from experiments import _ltr_task as T
from experiments import _ltr_train as TR
from experiments import _ltr_verdict as V
from experiments import cos_dpo_ltr as E
from experiments._common import cli
from mojax.simplex import simplex_weights
from mojax.train import make_optimizer

MSLR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mslr-web10k-sample" / \
    "msn1.fold1.train.5k.txt.gz"
REQUIRED = ("w_cos_dpo", "w_cos_dpo_vc", "dpo_ls", "dpo_soup", "mo_dpo")


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def test_grade_aux_labels_against_loop():
    rng = np.random.default_rng(6)
    aux = rng.normal(size=(4, 3, 6)) * 100
    where = rng.random((4, 6)) < 0.7
    where[:, 0] = True
    aux[1, 2] = 5.0  # constant column
    got = T.grade_aux_labels(aux, where)
    for q in range(4):
        for k in range(3):
            v = aux[q, k][where[q]]
            want = np.zeros(6)
            if v.max() > v.min():
                want[where[q]] = 4 * (v - v.min()) / (v.max() - v.min())
            np.testing.assert_allclose(got[q, k], want, rtol=1e-5, atol=1e-5)


def test_synthetic_correlation_is_valid_and_conflicting():
    for k in (2, 5):
        s = T.synthetic_correlation(k, 0.25, -0.5)
        assert np.linalg.eigvalsh(s).min() > 0 and np.allclose(np.diag(s), 1)
        assert s[1, 2] < 0 and s[0, 1] == 0.25
    with pytest.raises(ValueError, match="no valid correlation"):
        T.synthetic_correlation(5, 0.9, -0.9)


def test_zero_share_and_label_norm_rule():
    aux = np.array([[[0, 0, 3, 9], [1, 2, 3, 4]], [[0, 5, 0, 7], [0, 1, 2, 3]]], float)  # [Q=2, K=2, L=4]
    where = np.array([[True, True, True, False], [True, True, True, True]])
    # objective 0: zeros at (0,0), (0,1), (1,0), (1,2) of 7 valid items; objective 1: one zero, at (1,0)
    np.testing.assert_allclose(T.zero_share(aux, where), [4 / 7, 1 / 7])
    assert T.resolve_label_norm("auto", np.array([0.6, 0.9])) == "l1"
    assert T.resolve_label_norm("auto", np.array([0.6, 0.1])) == "softmax"  # one dense label: softmax for all
    assert T.resolve_label_norm("l1", np.array([0.0])) == "l1"  # an explicit choice is kept
    _, _, _, info = T.load_task(E.get_config(quick=True))
    assert info["label_norm"] == "softmax" and info["source"] == "synthetic"  # Gaussian labels are dense


def test_config_validation():
    with pytest.raises(ValueError, match="unknown methods"):
        E.Config(methods=("nope",))
    with pytest.raises(ValueError):
        E.Config(beta=0.0)
    with pytest.raises(ValueError):
        E.Config(tcos_beta_range=(2.0, 1.0))


@pytest.mark.skipif(not MSLR.is_file(), reason="../shared MSLR sample absent")
def test_load_task_mslr_sample():
    cfg = E.Config(data_path=str(MSLR), mslr_objectives=(134, 135), list_size=32)
    train, test, names, info = T.load_task(cfg)
    assert names == ["f134", "f135"]
    # the data report: the reader's counts, and click counts are sparse, so `auto` picks l1 (paper eq. 7, Fig. 2)
    assert info["reader"]["kept"] == info["reader"]["total"] > 0
    assert min(info["label_zero_share"].values()) >= T.SPARSE_ZERO_SHARE and info["label_norm"] == "l1"
    assert train.features.shape[-1] == 131  # features 132–136 are targets, never inputs (paper §A.4)
    assert train.aux.shape[1] == 2 and set(np.unique(train.main)) <= {0, 1, 2, 3, 4}
    for t in (train, test):
        assert t.aux.min() >= 0 and t.aux.max() <= 4 and (t.where.sum(-1) >= 2).all()
        assert np.isfinite(t.features).all()


# ---------------------------------------------------------------------------------------------------------------
# End to end: the --quick preset through the CLI
# ---------------------------------------------------------------------------------------------------------------


def _hv2d_max(points):
    """Independent 2-D hypervolume (maximisation, reference 0): union of boxes [0, x]×[0, y], swept by x."""
    pts = sorted((tuple(p) for p in points if p[0] > 0 and p[1] > 0), key=lambda p: -p[0])
    area, top = 0.0, 0.0
    for x, y in pts:
        if y > top:
            area += x * (y - top)
            top = y
    return area


def test_quick_run_end_to_end(tmp_path):
    # One test for the one smoke run: under pytest-xdist a module fixture would rerun it in every worker.
    run_dir = Path(cli(E.get_config, E.main, argv=["--quick", "--out", str(tmp_path / "run")]))
    quick_run = run_dir, json.loads((run_dir / "metrics.json").read_text())
    _check_metrics_schema_and_sanity(quick_run)
    _check_param_counts_follow_architecture(quick_run)
    _check_prop31_and_report(quick_run)


def _check_metrics_schema_and_sanity(quick_run):
    run_dir, m = quick_run
    cfg = E.get_config(quick=True)
    k = 2
    assert set(REQUIRED) <= set(m["methods"])
    for name, r in m["methods"].items():
        assert isinstance(r["hypervolume"], float) and 0 < r["hypervolume"] <= 1, name
        assert isinstance(r["train_seconds"], float) and r["train_seconds"] > 0, name
        # every method's runs include one that compiled its step (fit's compile_seconds), within its total time;
        # the vertex-cover run reuses W-COS-DPO's compiled step (only its host sampler differs)
        if name == "w_cos_dpo_vc":
            assert r["compile_seconds"] == 0, name
        else:
            assert 0 < r["compile_seconds"] < r["train_seconds"], name
        assert isinstance(r["num_params"], int) and r["num_params"] > 0, name
        front = np.asarray(r["front"])
        assert front.shape == (cfg.num_weights, k), name
        assert np.isfinite(front).all() and (front >= 0).all() and (front <= 1).all(), name
        np.testing.assert_allclose(r["hypervolume"], _hv2d_max(front), rtol=1e-12, err_msg=name)
        assert 0 <= r["main_ndcg_mean"] <= 1
    ls, soup, mo = (np.asarray(m["methods"][n]["front"]) for n in ("dpo_ls", "dpo_soup", "mo_dpo"))
    for v in (0, -1):  # Soup and MO-DPO reuse DPO-LS's vertex runs: identical points at the vertices
        np.testing.assert_array_equal(ls[v], soup[v])
        np.testing.assert_array_equal(ls[v], mo[v])
    # the vertex gap from the fronts by hand: e_0 = (1, 0) is the last weight, e_1 the first (K = 2 linspace)
    for name in ("w_cos_dpo", "w_cos_dpo_vc", "dpo_soup"):
        f = np.asarray(m["methods"][name]["front"])
        want = [ls[-1, 0] - f[-1, 0], ls[0, 1] - f[0, 1]]
        np.testing.assert_allclose(m["vertex"][name]["gaps"], want, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(m["vertex"]["dpo_soup"]["gaps"], 0, atol=0)  # Soup's vertices are DPO-LS's runs
    assert m["cover_vertex_fraction"] == pytest.approx(2 / cfg.num_weights)  # default: the vertices' share
    assert m["cos_budget_dpo_ls_runs"] == cfg.cos_steps / cfg.run_steps == 3
    # a smoke run concludes nothing; one seed, its summary over that seed
    assert m["verdict"]["result"] == "smoke" and m["verdict"]["seeds"] == 1 and m["verdict"]["ci"] is None
    assert [s["seed"] for s in m["seeds"]] == [cfg.seed]
    assert m["summary"]["w_cos_dpo"]["hypervolume"]["mean"] == m["methods"]["w_cos_dpo"]["hypervolume"]
    assert m["data"]["label_norm"] == "softmax" and m["data"]["source"] == "synthetic"


def _check_param_counts_follow_architecture(quick_run):
    _, m = quick_run
    cfg = E.get_config(quick=True)
    r = {n: v["num_params"] for n, v in m["methods"].items()}
    single = r["dpo_soup"] // 2
    assert r["dpo_soup"] == 2 * single and r["dpo_ls"] == cfg.num_weights * single
    assert r["mo_dpo"] == cfg.num_weights * single  # K single models + the interior runs
    # conditioning adds C input rows to the first projection: K·d_model (W-COS), 2K·d_model (T-COS)
    assert r["w_cos_dpo"] == r["w_cos_dpo_vc"] == single + 2 * cfg.d_model
    assert r["t_cos_dpo"] == single + 4 * cfg.d_model


def _check_prop31_and_report(quick_run):
    run_dir, m = quick_run
    p = m["prop31"]
    for key in ("front_distance_rescaled", "front_distance_raw", "score_rel_rms_rescaled", "hypervolume_rescaled"):
        assert np.isfinite(p[key]) and p[key] >= 0
    np.testing.assert_allclose(p["hypervolume_rescaled"], _hv2d_max(p["front_rescaled"]), rtol=1e-12)
    # the rescaled front is a different model's front: not byte-identical to the raw one unless β_alt = β
    assert p["beta_alt"] != p["beta"]
    report = (run_dir / "report.md").read_text()
    assert "| W-COS-DPO |" in report and "| DPO-LS |" in report and "## Did the paper's claim hold here?" in report
    claim = report.split("## Did the paper's claim hold here?")[1]
    assert f"{m['methods']['w_cos_dpo']['hypervolume']:.4g}" in claim  # written from the measured numbers
    assert "**Verdict: smoke**" in claim and "draws no conclusion" in claim
    assert not any(word in claim for word in ("held", "did not hold", "as the paper reports"))
    for png in ("fronts.png", "prop31.png", "t_cos_dpo.png", "train_loss.png"):
        assert f"]({png})" in report
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(run_dir / png).ndim == 3
    saved = json.loads((run_dir / "config.json").read_text())
    want = dataclasses.asdict(dataclasses.replace(E.get_config(quick=True), out=str(run_dir)))
    assert saved == json.loads(json.dumps(want))


def test_gap_analysis_swaps_the_vertex_points():
    weights = simplex_weights(2, 5)
    ours = np.array([[0.40, 0.80], [0.50, 0.70], [0.60, 0.60], [0.70, 0.50], [0.80, 0.40]])
    theirs = np.array([[0.30, 0.90], [0.50, 0.70], [0.55, 0.55], [0.70, 0.50], [0.90, 0.30]])
    metrics = {"methods": {"w_cos_dpo": {"front": ours.tolist()}, "dpo_ls": {"front": theirs.tolist()}},
               "weights": weights.tolist(), "data": {"train_queries": 10}}
    text = R.gap_analysis(E.get_config(quick=True), metrics, ["dpo_ls"])
    mixed, other = ours.copy(), theirs.copy()
    mixed[[0, -1]], other[[0, -1]] = theirs[[0, -1]], ours[[0, -1]]
    assert f"vertex points would have HV {_hv2d_max(mixed):.4g} " in text
    assert f"vertex points {_hv2d_max(other):.4g})" in text
    # vertex gap: e_0 = weights[-1] = (1, 0) → objective 0: 0.9 − 0.8; e_1 = weights[0] → objective 1: 0.9 − 0.8
    assert "ahead at the vertices by +0.1000 NDCG" in text


def test_finetune_optimizer_cosine_decays_over_each_runs_own_budget():
    exp = TR.Experiment(dataclasses.replace(E.get_config(quick=True), lr_schedule="cosine"))
    lr0 = exp.config.learning_rate
    # equal configs per budget: fit's step cache keys on the value, so a budget's runs share a compiled step
    assert exp.finetune_optimizer(10) == exp.finetune_optimizer(10) != exp.finetune_optimizer(20)
    for n in (10, 20):
        tx = make_optimizer(exp.finetune_optimizer(n))
        params = {"x": jnp.zeros(())}
        state = tx.init(params)
        steps = []
        for _ in range(n + 1):
            # with a constant unit gradient Adam's normalised step is 1, so the update is −lr(t)
            updates, state = tx.update({"x": jnp.ones(())}, state, params)
            steps.append(-float(updates["x"]))
        want = 0.5 * lr0 * (1 + np.cos(np.pi * np.arange(n + 1) / n))
        np.testing.assert_allclose(steps, want, rtol=1e-5, atol=1e-9)
    const = TR.Experiment(E.get_config(quick=True))
    assert const.finetune_optimizer(10) == const.finetune_optimizer(20)
    assert const.finetune_optimizer(10).decay_steps == 0


def test_resume_refuses_a_decaying_schedule():
    exp = TR.Experiment(dataclasses.replace(E.get_config(quick=True), lr_schedule="cosine"))
    exp.train_base()
    first = exp.train_w_cos(1.0, steps=2)
    with pytest.raises(ValueError, match="decaying schedule"):
        exp.train_w_cos(1.0, steps=2, resume=first)


def test_runs_of_a_method_share_one_compiled_step_until_dropped():
    exp = TR.Experiment(E.get_config(quick=True))
    exp.train_base()
    exp.drop_compiled()
    first = exp.train_w_cos(1.0, steps=2)
    assert first.result.compiled and 0 < first.compile_seconds <= first.seconds
    more = exp.train_w_cos(1.0, steps=2, resume=first)  # a resumed chunk: same objective, filter and optimizer
    assert not more.result.compiled and more.compile_seconds == 0.0 and int(more.state.step) == 4
    assert not exp.train_w_cos(2.0, steps=3).result.compiled  # another β and budget: a traced input, same step
    exp.drop_compiled()
    assert exp.train_w_cos(1.0, steps=2).result.compiled  # cold start after the cache is dropped


# ---------------------------------------------------------------------------------------------------------------
# Across seeds: intervals, the vertex analysis, the verdict (_ltr_verdict)
# ---------------------------------------------------------------------------------------------------------------


def test_t_interval_against_closed_form():
    x = [0.1, 0.3, 0.2, 0.6]
    mean, lo, hi = V.t_interval(x)
    # t_{0.975, 3} = 3.182446305284263 (tables); sample std with ddof 1
    half = 3.182446305284263 * np.std(x, ddof=1) / 2
    assert mean == pytest.approx(0.3) and lo == pytest.approx(0.3 - half) and hi == pytest.approx(0.3 + half)
    m1, lo1, hi1 = V.t_interval([0.5])
    assert m1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    with pytest.raises(ValueError):
        V.t_interval([])


def test_vertex_analysis_finds_a_front_shrunk_inward():
    w = simplex_weights(2, 11)  # w[i] = (i/10, 1 − i/10): e_1 at row 0, e_0 at row 10
    ls = np.stack([np.linspace(0.5, 0.9, 11), np.linspace(0.9, 0.5, 11)], 1)  # objective 0 grows with w_0
    shrunk = ls.copy()
    shrunk[10], shrunk[0] = ls[9], ls[1]  # the conditioned map's vertex points are DPO-LS's w = (0.9, 0.1), (0.1, 0.9)
    out = V.vertex_analysis(w, shrunk, ls)
    step = 0.4 / 10
    np.testing.assert_allclose(out["gaps"], [step, step])
    assert out["gap"] == pytest.approx(step)
    np.testing.assert_allclose(out["nearest_ls_weight"], [[0.9, 0.1], [0.1, 0.9]])
    same = V.vertex_analysis(w, ls, ls)
    assert same["gap"] == 0 and np.allclose(same["nearest_ls_weight"], [[1, 0], [0, 1]])


def _seed(hv_cos, hv_ls, gap=0.01):
    m = lambda hv: {"hypervolume": hv, "main_ndcg_mean": 0.8, "train_seconds": 1.0}  # noqa: E731
    return {"methods": {"w_cos_dpo": m(hv_cos), "dpo_ls": m(hv_ls)}, "vertex": {"w_cos_dpo": {"gap": gap}}}


def test_seed_summary_and_decision():
    seeds = [_seed(0.70, 0.74), _seed(0.71, 0.74), _seed(0.69, 0.73)]
    summary = V.seed_summary(seeds)
    d = summary["w_cos_dpo"]["hv_rel_diff_to_dpo_ls"]
    want = [(0.70 - 0.74) / 0.74, (0.71 - 0.74) / 0.74, (0.69 - 0.73) / 0.73]
    np.testing.assert_allclose(d["values"], want)
    assert d["mean"] == pytest.approx(np.mean(want)) and d["hi"] < 0
    v = V.decide(summary, budget_runs=3.0, smoke=False)
    assert v.result == "did_not_hold" and v.seeds == 3 and v.ci == (d["lo"], d["hi"]) and "3 DPO-LS runs" in v.claim
    assert V.decide(V.seed_summary([_seed(0.80, 0.74), _seed(0.79, 0.74), _seed(0.81, 0.73)]), budget_runs=3.0,
                    smoke=False).result == "held"
    mixed = V.decide(V.seed_summary([_seed(0.80, 0.74), _seed(0.70, 0.74), _seed(0.74, 0.74)]), budget_runs=3.0,
                     smoke=False)
    assert mixed.result == "inconclusive" and mixed.ci[0] < 0 < mixed.ci[1]
    two = V.decide(V.seed_summary(seeds[:2]), budget_runs=3.0, smoke=False)
    assert two.result == "inconclusive" and two.ci is None  # fewer than 3 seeds decide nothing
    smoke = V.decide(summary, budget_runs=3.0, smoke=True)
    assert smoke.result == "smoke" and smoke.ci is None
