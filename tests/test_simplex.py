"""Tests for mojax/simplex.py: evaluation grids, vertex lookup, and the host Dirichlet sampler (KS against scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mojax.simplex import simplex_sampler, simplex_weights, vertex_indices


def test_simplex_weights_k2_is_a_linspace_with_vertices_at_both_ends():
    w2 = simplex_weights(2, 11)
    np.testing.assert_allclose(w2[:, 0], np.linspace(0, 1, 11))
    np.testing.assert_allclose(w2.sum(1), 1)
    assert vertex_indices(w2) == [10, 0]


def test_simplex_weights_k5_vertices_centroid_then_seeded_dirichlet():
    w5 = simplex_weights(5, 11, seed=3)
    assert w5.shape == (11, 5) and (w5 >= 0).all()
    np.testing.assert_allclose(w5.sum(1), 1, atol=1e-12)
    np.testing.assert_array_equal(w5[:5], np.eye(5))
    np.testing.assert_allclose(w5[5], 0.2)
    np.testing.assert_array_equal(w5[6:], np.random.default_rng(3).dirichlet(np.ones(5), size=5))
    np.testing.assert_array_equal(simplex_weights(5, 11, seed=3), w5)  # deterministic
    assert not np.array_equal(simplex_weights(5, 11, seed=4), w5)
    assert vertex_indices(w5) == list(range(5))
    np.testing.assert_array_equal(simplex_weights(3, 3), np.eye(3))  # exactly the vertices
    with pytest.raises(ValueError, match="cannot hold"):
        simplex_weights(5, 3)
    with pytest.raises(ValueError):
        simplex_weights(1, 11)


def test_vertex_indices_takes_the_first_and_refuses_a_missing_vertex():
    w = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert vertex_indices(w) == [1, 2]
    with pytest.raises(ValueError, match="e_1"):
        vertex_indices(np.array([[1.0, 0.0], [0.5, 0.5]]))


def test_simplex_sampler_is_dirichlet():
    rng = np.random.default_rng(0)
    per_list = simplex_sampler(3, 1.0, per_example=True)(rng, 4000)
    assert per_list.shape == (4000, 3) and per_list.dtype == np.float32
    np.testing.assert_allclose(per_list.sum(1), 1.0, atol=1e-6)
    assert (per_list >= 0).all()
    # Dirichlet(1, 1, 1): each marginal is Beta(1, 2)
    assert stats.kstest(per_list[:, 0], stats.beta(1, 2).cdf).pvalue > 1e-3
    # Dirichlet(0.5·1) at K = 2: w_1 ~ Beta(0.5, 0.5), heavier near the vertices than uniform
    w = simplex_sampler(2, 0.5, per_example=True)(rng, 4000)[:, 0]
    assert stats.kstest(w, stats.beta(0.5, 0.5).cdf).pvalue > 1e-3
    assert stats.kstest(w, stats.uniform.cdf).pvalue < 1e-6
    per_step = simplex_sampler(2, 1.0, per_example=False)(rng, 5)
    assert per_step.shape == (5, 2) and (per_step == per_step[0]).all()
    # the same generator state gives the same draws (a run's weights are reproducible from its seed)
    a = simplex_sampler(2)(np.random.default_rng(7), 8)
    np.testing.assert_array_equal(a, simplex_sampler(2)(np.random.default_rng(7), 8))


def test_simplex_sampler_vertex_mixture():
    # a share p of the draws sits exactly on a uniformly chosen vertex, the rest is Dirichlet
    rng = np.random.default_rng(1)
    mixed = simplex_sampler(3, 1.0, per_example=True, vertex_fraction=0.3)(rng, 6000)
    on_vertex = (mixed == 1.0).any(1)
    assert abs(on_vertex.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 6000)
    counts = np.bincount(mixed[on_vertex].argmax(1), minlength=3)
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.kstest(mixed[~on_vertex, 0], stats.beta(1, 2).cdf).pvalue > 1e-3
    for bad in ({"vertex_fraction": 1.0}, {"vertex_fraction": -0.1}):
        with pytest.raises(ValueError, match="vertex_fraction"):
            simplex_sampler(2, 1.0, **bad)
    with pytest.raises(ValueError, match="concentration"):
        simplex_sampler(2, 0.0)
