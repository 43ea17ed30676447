"""Tests for experiments/cos_dpo_ltr.py and its ``_ltr_*`` modules: objectives, helpers, a --quick smoke run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from flax import nnx

from experiments import _ltr_report as R
from experiments import _ltr_task as T
from experiments import _ltr_train as TR
from experiments import cos_dpo_ltr as E
from experiments._common import cli
from mojax.losses import listwise_dpo_loss, modpo_loss, sample_simplex_weights
from mojax.models.ranker import ListRanker, ListRankerConfig
from mojax.simplex import simplex_weights

MSLR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mslr-web10k-sample" / \
    "msn1.fold1.train.5k.txt.gz"
REQUIRED = ("w_cos_dpo", "dpo_ls", "dpo_soup", "mo_dpo")


def _batch(rng, b=6, l=5, f=8, k=2, binary=False, pad=True):
    feats = rng.normal(size=(b, l, f)).astype(np.float32)
    where = np.ones((b, l), bool)
    if pad:
        where[0, -2:] = False  # a padded list
    if binary:  # one preferred item per list and objective
        aux = np.eye(l, dtype=np.float32)[rng.integers(0, l, size=(b, k))]
    else:
        aux = (4 * rng.random((b, k, l))).astype(np.float32)
    aux = np.where(where[:, None], aux, 0)
    return {"features": feats, "where": where, "aux": aux, "main": np.zeros((b, l), np.float32),
            "ref_scores": rng.normal(size=(b, l)).astype(np.float32)}


def _ranker(f=8, cond_dim=0, seed=0):
    return ListRanker(ListRankerConfig.tiny(num_features=f, cond_dim=cond_dim), rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------------------


def test_fixed_weight_objective_vertex_is_single_objective_listwise_dpo():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    model = _ranker()
    diff = model(batch["features"], where=batch["where"]) - batch["ref_scores"]
    obj = TR.fixed_weight_objective(beta=0.7, label_norm="softmax")
    for k in range(2):
        w = np.broadcast_to(np.eye(2, dtype=np.float32)[k], (6, 2))
        loss, metrics = obj(model, batch | {"weights": w}, None)
        want = listwise_dpo_loss(model(batch["features"], where=batch["where"]), batch["ref_scores"],
                                 batch["aux"][:, k], beta=0.7, where=batch["where"])
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(metrics[f"loss_{k}"], want, rtol=1e-5)
    # an interior weight is the weighted sum of the two objectives' losses
    loss, m = obj(model, batch | {"weights": np.full((6, 2), [0.3, 0.7], np.float32)}, None)
    np.testing.assert_allclose(loss, 0.3 * m["loss_0"] + 0.7 * m["loss_1"], rtol=1e-5)
    assert np.isfinite(float(loss)) and diff.shape == (6, 5)


def test_modpo_objective_equals_pairwise_modpo_on_two_item_lists():
    # MO-DPO for lists with L = 2, binary labels and l1 normalisation is exactly mojax.losses.modpo_loss (pairs).
    rng = np.random.default_rng(1)
    batch = _batch(rng, b=8, l=2, binary=True, pad=False)
    batch["single_diff"] = rng.normal(size=(8, 2, 2)).astype(np.float32)
    model = _ranker()
    beta = 0.5
    diff = np.asarray(model(batch["features"], where=batch["where"]) - batch["ref_scores"])
    for w in ([0.3, 0.7], [0.8, 0.2]):
        w = np.asarray(w, np.float32)
        k = int(np.argmax(w))
        loss, _ = TR.modpo_objective(beta=beta, label_norm="l1")(model, batch | {"weights": np.tile(w, (8, 1))}, None)
        chosen = np.argmax(batch["aux"][:, k], -1)
        rows = np.arange(8)
        other = 1 - k
        single = batch["single_diff"][rows, other]  # [B, 2]
        margin_other = beta * (single[rows, chosen] - single[rows, 1 - chosen])
        want = modpo_loss(diff[rows, chosen], diff[rows, 1 - chosen], 0.0, 0.0, margin_other[:, None], w, beta=beta,
                          objective_index=k)
        np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_modpo_objective_at_vertex_is_dpo_on_that_objective():
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    batch["single_diff"] = rng.normal(size=(6, 2, 5)).astype(np.float32)
    model = _ranker()
    w = np.tile(np.asarray([0.0, 1.0], np.float32), (6, 1))
    loss, _ = TR.modpo_objective(beta=2.0, label_norm="softmax")(model, batch | {"weights": w}, None)
    want = listwise_dpo_loss(model(batch["features"], where=batch["where"]), batch["ref_scores"], batch["aux"][:, 1],
                             beta=2.0, where=batch["where"])
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_per_objective_losses_depend_on_beta_times_diff_only():
    # Prop. 3.1's premise, through the experiment's wiring: ℓ(β, f − f_ref) = ℓ(β', (β/β')(f − f_ref)).
    rng = np.random.default_rng(3)
    batch = _batch(rng)
    diff = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    a = TR.per_objective_losses(diff, batch, 0.5, "softmax")
    b = TR.per_objective_losses(diff * (0.5 / 2.0), batch, 2.0, "softmax")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert a.shape == (6, 2)
    # per-objective temperatures [1, K] score objective k at β_k
    c = TR.per_objective_losses(diff, batch, jnp.asarray([[0.5, 2.0]]), "softmax")
    np.testing.assert_allclose(c[:, 0], a[:, 0], rtol=1e-5)
    np.testing.assert_allclose(c[:, 1], TR.per_objective_losses(diff, batch, 2.0, "softmax")[:, 1], rtol=1e-5)


def test_w_cos_objective_conditions_on_the_batch_weight():
    rng = np.random.default_rng(4)
    batch = _batch(rng) | {"beta": np.full((6,), 0.8, np.float32)}
    model = _ranker(cond_dim=2)
    w = np.asarray([0.3, 0.7], np.float32)
    obj = TR.w_cos_objective(label_norm="softmax", penalty=0.0, per_example=False)
    loss, _ = obj(model, batch | {"weights": np.tile(w, (6, 1))}, None)
    scores = model(batch["features"], where=batch["where"], cond=np.tile(w, (6, 1)))
    want = sum(w[k] * listwise_dpo_loss(scores, batch["ref_scores"], batch["aux"][:, k], beta=0.8,
                                        where=batch["where"]) for k in range(2))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # the penalty lowers the loss by μ·cos(ℓ, w) ∈ (0, 1]
    pen = TR.w_cos_objective(label_norm="softmax", penalty=0.5, per_example=False)(
        model, batch | {"weights": np.tile(w, (6, 1))}, None)[0]
    assert 0 < float(loss - pen) <= 0.5 + 1e-6
    # one weight per list: list b is conditioned on and scored with its own w_b
    ws = rng.dirichlet(np.ones(2), size=6).astype(np.float32)
    loss, _ = TR.w_cos_objective(label_norm="softmax", penalty=0.0, per_example=True)(
        model, batch | {"weights": ws}, None)
    scores = model(batch["features"], where=batch["where"], cond=ws)
    per_list = np.stack([listwise_dpo_loss(scores, batch["ref_scores"], batch["aux"][:, k], beta=0.8,
                                           where=batch["where"], reduce_fn=None) for k in range(2)], 1)
    valid = batch["where"].any(-1)
    np.testing.assert_allclose(loss, np.sum(ws * per_list, 1)[valid].mean(), rtol=1e-5)


def test_t_cos_objective_trains_objective_k_at_k_beta_d_k():
    rng = np.random.default_rng(5)
    batch = _batch(rng)
    model = _ranker(cond_dim=4)
    key = jax.random.PRNGKey(3)
    obj = TR.t_cos_objective(beta=1.5, label_norm="softmax", num_objectives=2, concentration=1.0, penalty=0.0,
                            beta_range=(0.5, 2.0))
    loss, _ = obj(model, batch, key)
    kw, kb = jax.random.split(key)
    w = np.asarray(sample_simplex_weights(kw, (), 2))
    betas = np.exp(np.asarray(jax.random.uniform(kb, (2,), minval=np.log(0.5), maxval=np.log(2.0))))
    d = betas / betas.sum()
    scores = model(batch["features"], where=batch["where"], cond=np.tile(np.r_[w, d], (6, 1)))
    want = sum(w[k] * listwise_dpo_loss(scores, batch["ref_scores"], batch["aux"][:, k], beta=2 * 1.5 * d[k],
                                        where=batch["where"]) for k in range(2))
    np.testing.assert_allclose(loss, want, rtol=1e-5)


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


@pytest.mark.parametrize("temperature", [False, True])
def test_cos_objectives_match_the_engines_ltr_cos_dpo_objective(temperature):
    # Two independent implementations of W/T-COS-DPO for rankers: the experiment's (correction-only, β as a batch
    # input) and mojax.train's ltr_cos_dpo_objective (full scores against cached reference scores).
    from mojax.train.objectives import COSDPOSampling, ltr_cos_dpo_objective

    rng = np.random.default_rng(8)
    batch = _batch(rng, pad=False)
    model = _ranker(cond_dim=4 if temperature else 2)
    key = jax.random.PRNGKey(11)
    engine = ltr_cos_dpo_objective(
        sampling=COSDPOSampling(num_objectives=2, temperature=temperature, beta_min=0.5, beta_max=2.0),
        beta=0.6, penalty=0.3, label_norm="softmax", ref_mode="cached")
    want, _ = engine(model, batch | {"labels": batch["aux"]}, key)
    if temperature:
        mine = TR.t_cos_objective(beta=0.6, label_norm="softmax", num_objectives=2, concentration=1.0, penalty=0.3,
                                 beta_range=(0.5, 2.0))
        got, _ = mine(model, batch, key)
    else:
        # the engine draws w in the step from the key's first half; the experiment reads it from the batch
        w = np.asarray(sample_simplex_weights(jax.random.split(key)[0], (), 2))
        mine = TR.w_cos_objective(label_norm="softmax", penalty=0.3, per_example=False)
        got, _ = mine(model, batch | {"beta": np.full((6,), 0.6, np.float32), "weights": np.tile(w, (6, 1))}, key)
    np.testing.assert_allclose(got, want, rtol=1e-5)


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


def test_finetune_tx_cosine_decays_over_each_runs_own_budget():
    exp = TR.Experiment(dataclasses.replace(E.get_config(quick=True), lr_schedule="cosine"))
    lr0 = exp.config.learning_rate
    assert exp.finetune_tx(10) is exp.finetune_tx(10)  # one optimizer per budget: its runs share a compiled step
    assert exp.finetune_tx(10) is not exp.finetune_tx(20)
    for n in (10, 20):
        tx = exp.finetune_tx(n)
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
    assert const.finetune_tx(10) is const.tx and const.finetune_tx(20) is const.tx


def test_resume_refuses_a_decaying_schedule():
    exp = TR.Experiment(dataclasses.replace(E.get_config(quick=True), lr_schedule="cosine"))
    exp.train_base()
    first = exp.train_w_cos(1.0, steps=2)
    with pytest.raises(ValueError, match="decaying schedule"):
        exp.train_w_cos(1.0, steps=2, resume=first)
