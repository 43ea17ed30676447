"""Tests for experiments/cos_dpo_ltr.py and its ``_ltr_*`` modules: helpers, the report, a --quick smoke run.

The LTR objectives are tested in tests/train/test_train_objectives_ranking.py, the simplex helpers in
tests/test_simplex.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from experiments import _ltr_report as R
from experiments import _ltr_task as T
from experiments import _ltr_train as TR
from experiments import cos_dpo_ltr as E
from experiments._common import cli
from mojax.simplex import simplex_weights
from mojax.train import make_optimizer

MSLR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mslr-web10k-sample" / \
    "msn1.fold1.train.5k.txt.gz"
REQUIRED = ("w_cos_dpo", "dpo_ls", "dpo_soup", "mo_dpo")


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
    train, test, names = T.load_task(cfg)
    assert names == ["f134", "f135"]
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
        # every method's runs include one that compiled its step (fit's compile_seconds), within its total time
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


def _check_param_counts_follow_architecture(quick_run):
    _, m = quick_run
    cfg = E.get_config(quick=True)
    r = {n: v["num_params"] for n, v in m["methods"].items()}
    single = r["dpo_soup"] // 2
    assert r["dpo_soup"] == 2 * single and r["dpo_ls"] == cfg.num_weights * single
    assert r["mo_dpo"] == cfg.num_weights * single  # K single models + the interior runs
    # conditioning adds C input rows to the first projection: K·d_model (W-COS), 2K·d_model (T-COS)
    assert r["w_cos_dpo"] == single + 2 * cfg.d_model
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
