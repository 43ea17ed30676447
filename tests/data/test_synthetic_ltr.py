"""Tests of mojax.data.synthetic_ltr: configured correlations, label distribution, shapes, determinism."""

import numpy as np
import pytest

from mojax.data.synthetic_ltr import SyntheticLTRConfig, latent_correlation, make_ranking_data


def flat(x, where):
    """[Q, K, L] → [n, K] over valid documents."""
    return np.moveaxis(x, 1, -1)[where]


def test_latent_and_label_correlations_as_configured():
    cfg = SyntheticLTRConfig(num_queries=400, aux_relevance_corr=(0.7, 0.2, -0.5))
    data, z = make_ranking_data(cfg, seed=0, return_latents=True)
    zz = flat(z, data.where)
    n = len(zz)
    sigma = latent_correlation(cfg)
    np.testing.assert_allclose(sigma[1:, 1:][np.triu_indices(3, 1)], [0.14, -0.35, -0.1])  # ρ_j ρ_m
    emp = np.corrcoef(zz.T)
    tol = 5 * (1 - sigma ** 2) / np.sqrt(n) + 1e-3  # standard error of a sample correlation
    assert np.all(np.abs(emp - sigma) < tol), (emp, sigma)
    # auxiliary labels are the latents; relevance is a noisy quantisation of s, so cov(label, a_m) = ρ_m cov(label, s)
    lab = flat(data.labels, data.where)
    np.testing.assert_array_equal(lab[:, 1:], zz[:, 1:].astype(np.float32))
    c_s = np.cov(lab[:, 0], zz[:, 0])[0, 1]
    for m, rho in enumerate((0.7, 0.2, -0.5), start=1):
        c = np.cov(lab[:, 0], lab[:, m])[0, 1]
        assert abs(c - rho * c_s) < 5 * np.sqrt(lab[:, 0].var() / n) + 1e-3
    assert np.corrcoef(lab[:, 0], lab[:, 3])[0, 1] < -0.3  # a conflicting objective


def test_full_correlation_matrix_and_validation():
    full = ((1.0, 0.3, 0.3), (0.3, 1.0, -0.6), (0.3, -0.6, 1.0))  # two auxiliaries that conflict with each other
    data, z = make_ranking_data(SyntheticLTRConfig(num_queries=300, correlation=full), seed=1, return_latents=True)
    emp = np.corrcoef(flat(z, data.where).T)
    assert abs(emp[1, 2] + 0.6) < 0.05 and abs(emp[0, 1] - 0.3) < 0.05
    with pytest.raises(ValueError, match="positive semi-definite"):
        SyntheticLTRConfig(correlation=((1, 0.9, 0.9), (0.9, 1, -0.9), (0.9, -0.9, 1)))
    with pytest.raises(ValueError, match="unit diagonal"):
        SyntheticLTRConfig(correlation=((2, 0), (0, 1)))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        SyntheticLTRConfig(aux_relevance_corr=(1.5,))


def test_relevance_label_distribution_follows_quantiles():
    cfg = SyntheticLTRConfig(num_queries=600)
    data = make_ranking_data(cfg, seed=2)
    rel = data.labels[:, 0][data.where]
    assert set(np.unique(rel).tolist()) <= {0, 1, 2, 3, 4}
    cum = np.cumsum(np.bincount(rel.astype(int), minlength=5))[:4] / len(rel)
    se = np.sqrt(np.asarray(cfg.relevance_quantiles) * (1 - np.asarray(cfg.relevance_quantiles)) / len(rel))
    assert np.all(np.abs(cum - cfg.relevance_quantiles) < 5 * se)


def test_shapes_padding_and_determinism():
    cfg = SyntheticLTRConfig(num_queries=50, min_list_size=3, max_list_size=12, num_features=20)
    a = make_ranking_data(cfg, seed=3)
    b = make_ranking_data(cfg, seed=3)
    assert a.features.shape == (50, 12, 20) and a.labels.shape == (50, 4, 12) and a.where.shape == (50, 12)
    assert a.features.dtype == np.float32 and a.labels.dtype == np.float32 and a.where.dtype == bool
    sizes = a.where.sum(1)
    assert sizes.min() >= 3 and sizes.max() <= 12
    assert np.all(a.where[:, :-1] >= a.where[:, 1:])  # valid documents first
    assert not a.features[~a.where].any() and not np.moveaxis(a.labels, 1, -1)[~a.where].any()
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(make_ranking_data(cfg, seed=4).features, a.features)
    assert a.objective_names == ("label", "aux_1", "aux_2", "aux_3") and cfg.num_objectives == 4


def test_features_carry_the_signal():
    """A least-squares probe on the features recovers each latent well above chance (the task is learnable)."""
    data, z = make_ranking_data(SyntheticLTRConfig(num_queries=80), seed=5, return_latents=True)
    x = data.features[data.where]
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    for m, target in enumerate(flat(z, data.where).T):
        coef, *_ = np.linalg.lstsq(x, target, rcond=None)
        r2 = 1 - np.var(target - x @ coef) / np.var(target)
        assert r2 > 0.5, (m, r2)
