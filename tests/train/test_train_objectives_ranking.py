"""Tests for mojax/train/objectives/ranking.py against float64 NumPy forms of listwise DPO, MO-DPO and COS-DPO."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mojax.losses import modpo_loss, sample_simplex_weights
from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig
from mojax.train.objectives import COSDPOSampling
from mojax.train.objectives import ranking as R

F = 5
SMALL = dict(num_features=F, d_model=8, num_layers=0, num_heads=1, mlp_dim=8)  # item-wise MLP: cheap to trace


def _ranker(cond_dim=0, seed=0):
    return ListRanker(ListRankerConfig(**SMALL, cond_dim=cond_dim), rngs=nnx.Rngs(seed))


def _augmented(cond_dim=0):
    model = AugmentedRanker(_ranker(0, 0), _ranker(cond_dim, 1))
    # a non-zero correction (the head starts at zero): the tests must see f_θ ≠ f_ref
    model.delta.head.kernel[...] = jnp.asarray(np.random.default_rng(9).normal(size=model.delta.head.kernel.shape),
                                               jnp.float32)
    return model


def _batch(seed=0, b=6, l=4, k=2, pad=True, binary=False):
    rng = np.random.default_rng(seed)
    where = np.ones((b, l), bool)
    if pad:
        where[1, -1] = where[2, 2:] = False
    if binary:  # one preferred item per list and objective
        labels = np.eye(l, dtype=np.float32)[rng.integers(0, l, size=(b, k))]
    else:
        labels = (4 * rng.random((b, k, l))).astype(np.float32)
    return {"features": rng.normal(size=(b, l, F)).astype(np.float32), "where": where,
            "labels": np.where(where[:, None], labels, 0).astype(np.float32),
            "ref_scores": rng.normal(size=(b, l)).astype(np.float32)}


def _listwise_dpo_np(diff, labels, where, beta, label_norm="softmax"):
    """Per-list listwise DPO in float64: cross-entropy of normalised labels against softmax(β·diff) on valid items."""
    out = np.zeros(len(diff))
    for i in range(len(diff)):
        v = where[i]
        lab = np.asarray(labels[i][v], np.float64)
        target = np.exp(lab - lab.max()) / np.exp(lab - lab.max()).sum() if label_norm == "softmax" else lab / lab.sum()
        s = beta * np.asarray(diff[i][v], np.float64)
        logp = s - s.max() - np.log(np.exp(s - s.max()).sum())
        out[i] = -(target * logp).sum()
    return out


def _diff(model, batch, cond=None, ref_mode="model"):
    if ref_mode == "model":
        return np.asarray(model(batch["features"], where=batch["where"], cond=cond), np.float64) - np.asarray(
            model.reference_scores(batch["features"], where=batch["where"]), np.float64)
    return np.asarray(model(batch["features"], where=batch["where"], cond=cond), np.float64) - batch["ref_scores"]


def test_correction_of_an_augmented_ranker_is_its_delta_and_cached_subtracts_ref_scores():
    batch = _batch()
    model = _augmented()
    got = np.asarray(R.correction(model, batch))
    np.testing.assert_allclose(got, _diff(model, batch), rtol=1e-5, atol=1e-5)
    assert np.abs(got).max() > 1e-3  # a real correction, not the zero-initialised head
    plain = _ranker()
    np.testing.assert_allclose(R.correction(plain, batch, ref_mode="cached"),
                               np.where(batch["where"], _diff(plain, batch, ref_mode="cached"), 0), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="ref_scores"):
        R.correction(plain, {k: v for k, v in batch.items() if k != "ref_scores"}, ref_mode="cached")
    with pytest.raises(ValueError, match="AugmentedRanker"):
        R.correction(plain, batch, ref_mode="model")
    with pytest.raises(ValueError, match="ref_mode"):
        R.ltr_scalarized_dpo_objective(weights=(0.5, 0.5), ref_mode="lora")


@pytest.mark.parametrize("ref_mode", ["model", "cached"])
def test_scalarized_dpo_is_the_weighted_sum_of_listwise_dpo_losses(ref_mode):
    batch = _batch(1)
    model = _augmented() if ref_mode == "model" else _ranker()
    diff = _diff(model, batch, ref_mode=ref_mode)
    per_obj = np.stack([_listwise_dpo_np(diff, batch["labels"][:, k], batch["where"], 0.7) for k in range(2)], 1)
    for w in ((1.0, 0.0), (0.0, 1.0), (0.3, 0.7)):
        obj = R.ltr_scalarized_dpo_objective(weights=w, beta=0.7, ref_mode=ref_mode)
        loss, m = obj(model, batch, None)
        np.testing.assert_allclose(loss, np.mean(per_obj @ np.asarray(w)), rtol=1e-5)
        np.testing.assert_allclose(m["objective_losses"], per_obj.mean(0), rtol=1e-5)
        assert float(m["count"]) == 6.0
    # at a vertex, DPO-LS is single-objective listwise DPO
    single, _ = R.ltr_listwise_dpo_objective(beta=0.7, objective_index=1, ref_mode=ref_mode)(model, batch, None)
    vertex, _ = R.ltr_scalarized_dpo_objective(weights=(0.0, 1.0), beta=0.7, ref_mode=ref_mode)(model, batch, None)
    np.testing.assert_allclose(vertex, single, rtol=1e-6)
    # a masked example is no example
    masked = batch | {"example_mask": np.array([1, 1, 1, 1, 1, 0], bool)}
    loss, m = R.ltr_scalarized_dpo_objective(weights=(0.3, 0.7), beta=0.7, ref_mode=ref_mode)(model, masked, None)
    np.testing.assert_allclose(loss, np.mean((per_obj @ np.asarray([0.3, 0.7]))[:5]), rtol=1e-5)
    assert float(m["count"]) == 5.0


def test_hyper_parameters_are_traced_one_compile_serves_every_weight_and_beta():
    batch = {k: jnp.asarray(v) for k, v in _batch(2).items()}
    model = _augmented()
    a = R.ltr_scalarized_dpo_objective(weights=(0.2, 0.8), beta=0.5)
    b = R.ltr_scalarized_dpo_objective(weights=(0.9, 0.1), beta=2.0)
    assert a.fn is b.fn  # the same fn for the same static choices: fit's step cache shares one compile
    traces = []

    @jax.jit
    def loss_at(hp):
        traces.append(1)
        return a.fn(model, batch, None, hp)[0]

    for obj in (a, b):
        np.testing.assert_allclose(loss_at(obj.initial_hparams()), obj(model, batch, None)[0], rtol=1e-6)
    assert len(traces) == 1
    assert R.ltr_cos_dpo_objective(beta=1.0).fn is R.ltr_cos_dpo_objective(beta=2.0, penalty=0.5).fn
    assert R.ltr_modpo_objective(weights=(0.5, 0.5)).fn is R.ltr_modpo_objective(weights=(0.2, 0.8), beta=3.0).fn
    with pytest.raises(ValueError, match="beta"):
        R.ltr_scalarized_dpo_objective(weights=(0.5, 0.5), beta=0.0)
    with pytest.raises(ValueError, match="weights"):
        R.ltr_modpo_objective(weights=(0.5, -0.5))


def test_modpo_on_two_item_lists_is_pairwise_modpo_and_at_a_vertex_listwise_dpo():
    # MO-DPO for lists with L = 2, binary labels and l1 normalisation is exactly mojax.losses.modpo_loss (pairs).
    batch = _batch(3, b=8, l=2, pad=False, binary=True)
    rng = np.random.default_rng(4)
    batch["single_diffs"] = rng.normal(size=(8, 2, 2)).astype(np.float32)
    model = _augmented()
    beta = 0.5
    diff = _diff(model, batch)
    rows = np.arange(8)
    for w in ((0.3, 0.7), (0.8, 0.2)):
        k = int(np.argmax(w))
        loss, _ = R.ltr_modpo_objective(weights=w, beta=beta, label_norm="l1")(model, batch, None)
        chosen = np.argmax(batch["labels"][:, k], -1)
        single = batch["single_diffs"][rows, 1 - k]  # [B, 2]: the other objective's model
        margin = beta * (single[rows, chosen] - single[rows, 1 - chosen])
        want = modpo_loss(diff[rows, chosen], diff[rows, 1 - chosen], 0.0, 0.0, margin[:, None], np.asarray(w),
                          beta=beta, objective_index=k)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
    big = _batch(5) | {"single_diffs": rng.normal(size=(6, 2, 4)).astype(np.float32)}
    loss, _ = R.ltr_modpo_objective(weights=(0.0, 1.0), beta=2.0)(model, big, None)
    want = _listwise_dpo_np(_diff(model, big), big["labels"][:, 1], big["where"], 2.0).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_w_cos_dpo_reads_host_weights_per_step_and_per_list():
    batch = _batch(6)
    model = _augmented(cond_dim=2)
    w = np.asarray([0.3, 0.7], np.float32)
    step = R.ltr_cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2), beta=0.8)
    loss, _ = step(model, batch | {"weights": np.tile(w, (6, 1))}, None)
    diff = _diff(model, batch, cond=np.tile(w, (6, 1)))
    per_obj = np.stack([_listwise_dpo_np(diff, batch["labels"][:, k], batch["where"], 0.8) for k in range(2)], 1)
    np.testing.assert_allclose(loss, per_obj.mean(0) @ w, rtol=1e-5)
    # the penalty lowers the loss by μ·cos(ℓ̄, w)
    pen, m = step(model, batch | {"weights": np.tile(w, (6, 1))}, None, hparams={"penalty": 0.5})
    means = per_obj.mean(0)
    np.testing.assert_allclose(loss - pen, 0.5 * means @ w / np.linalg.norm(means) / np.linalg.norm(w), rtol=1e-4)
    # one weight per list: list b is conditioned on and scored with its own w_b
    ws = np.random.default_rng(7).dirichlet(np.ones(2), size=6).astype(np.float32)
    per_list = R.ltr_cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2, per_example=True), beta=0.8)
    loss, _ = per_list(model, batch | {"weights": ws}, None)
    diff = _diff(model, batch, cond=ws)
    per_obj = np.stack([_listwise_dpo_np(diff, batch["labels"][:, k], batch["where"], 0.8) for k in range(2)], 1)
    np.testing.assert_allclose(loss, np.mean(np.sum(ws * per_obj, 1)), rtol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        per_list(model, batch | {"weights": ws[:, :1]}, None)


def test_w_cos_dpo_drawn_in_the_step_equals_the_same_draw_from_the_batch():
    batch = _batch(8)
    model = _augmented(cond_dim=2)
    key = jax.random.PRNGKey(11)
    obj = R.ltr_cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2), beta=0.6, penalty=0.3)
    w = np.asarray(sample_simplex_weights(jax.random.split(key)[0], (), 2))  # the step's draw from the key
    np.testing.assert_allclose(obj(model, batch, key)[0], obj(model, batch | {"weights": np.tile(w, (6, 1))}, None)[0],
                               rtol=1e-6)


def test_t_cos_dpo_trains_objective_k_at_k_beta_d_k():
    batch = _batch(9)
    model = _augmented(cond_dim=4)
    key = jax.random.PRNGKey(3)
    sampling = COSDPOSampling(num_objectives=2, temperature=True, beta_min=0.5, beta_max=2.0)
    loss, _ = R.ltr_cos_dpo_objective(sampling=sampling, beta=1.5)(model, batch, key)
    kw, kb = jax.random.split(key)
    w = np.asarray(sample_simplex_weights(kw, (), 2))
    betas = np.exp(np.asarray(jax.random.uniform(kb, (2,), minval=np.log(0.5), maxval=np.log(2.0))))
    d = betas / betas.sum()
    diff = _diff(model, batch, cond=np.tile(np.r_[w, d], (6, 1)))
    want = sum(w[k] * _listwise_dpo_np(diff, batch["labels"][:, k], batch["where"], 2 * 1.5 * d[k]).mean()
               for k in range(2))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # the same with w and d from the batch
    host = batch | {"weights": np.tile(w, (6, 1)), "temperatures": np.tile(d, (6, 1)).astype(np.float32)}
    np.testing.assert_allclose(R.ltr_cos_dpo_objective(sampling=sampling, beta=1.5)(model, host, None)[0], want,
                               rtol=1e-5)


def test_listwise_dpo_with_a_fixed_conditioning_reads_it_from_the_hyper_parameters():
    batch = _batch(10)
    model = _augmented(cond_dim=2)
    obj = R.ltr_listwise_dpo_objective(beta=1.3, objective_index=0, cond=(0.25, 0.75))
    for c in ((0.25, 0.75), (1.0, 0.0)):
        cond = np.tile(np.asarray(c, np.float32), (6, 1))
        want = _listwise_dpo_np(_diff(model, batch, cond=cond), batch["labels"][:, 0], batch["where"], 1.3).mean()
        np.testing.assert_allclose(obj(model, batch, None, hparams={"cond": jnp.asarray(c)})[0], want, rtol=1e-5)
