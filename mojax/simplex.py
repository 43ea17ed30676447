"""Preference weights on the probability simplex, host side (NumPy): evaluation grids, vertices, samplers.

A multi-objective method is compared at a fixed set of weights w ∈ Δ^{K−1} (its front: one point per weight,
:func:`simplex_weights`), its specialists sit at the vertices e_k (:func:`vertex_indices`), and a weight-conditioned
model (COS-DPO) trains on weights drawn per step or per example (:func:`simplex_sampler`). Drawing on the host keeps
``jax.random.dirichlet``'s rejection-sampling loops out of the compiled train step; the weights then enter the step
as a batch entry (``batch["weights"]``), as a fixed-weight run's weight does, so both steps compile alike.
The in-step JAX draw is :func:`mojax.losses.sample_simplex_weights`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["simplex_sampler", "simplex_weights", "vertex_indices"]


def simplex_weights(num_objectives: int, num_weights: int, *, seed: int = 0) -> np.ndarray:
    """The evaluation weights ``[n, K]`` (float64) a front is measured at.

    K = 2: ``(i/(n−1), 1 − i/(n−1))`` for i = 0..n−1 (COS-DPO's 11-point sweep), vertices at both ends. K > 2: the
    K vertices, the centroid, then ``n − K − 1`` draws from Dirichlet(1) with a fixed ``seed`` (a simplex grid has
    C(m+K−1, K−1) points and cannot match 11 at K = 5); vertices first.

    >>> simplex_weights(2, 3).tolist()
    [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    """
    k, n = num_objectives, num_weights
    if k < 2 or n < 2:
        raise ValueError(f"a front needs num_objectives >= 2 and num_weights >= 2, got {k} and {n}")
    if k == 2:
        t = np.linspace(0.0, 1.0, n)
        return np.stack([t, 1.0 - t], 1)
    if n < k:
        raise ValueError(f"num_weights={n} cannot hold the {k} vertices of the simplex")
    rows = [np.eye(k)]
    if n > k:
        rows.append(np.full((1, k), 1.0 / k))
    if n > k + 1:
        rows.append(np.random.default_rng(seed).dirichlet(np.ones(k), size=n - k - 1))
    return np.concatenate(rows)[:n]


def vertex_indices(weights: np.ndarray) -> list[int]:
    """For each objective k, the row of ``weights [n, K]`` that is the vertex e_k (the first one if repeated).

    >>> vertex_indices(simplex_weights(2, 5))
    [4, 0]
    """
    weights = np.asarray(weights)
    out = []
    for k in range(weights.shape[1]):
        hits = np.flatnonzero(np.isclose(weights[:, k], 1.0))
        if len(hits) == 0:
            raise ValueError(f"the weights lack the vertex e_{k}")
        out.append(int(hits[0]))
    return out


def simplex_sampler(num_objectives: int, concentration: float = 1.0, *, per_example: bool = True,
                    vertex_fraction: float = 0.0) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A host sampler ``sample(rng, batch_size) -> [B, K] float32`` of w ~ Dirichlet(α·1_K).

    Args:
      num_objectives: K ≥ 1.
      concentration: α > 0 (1 = uniform on the simplex; α < 1 puts more mass near the vertices).
      per_example: one draw per row; ``False`` draws one w per call and repeats it on every row (COS-DPO's
        per-step choice).
      vertex_fraction: p ∈ [0, 1): each draw is, with probability p, a uniformly chosen vertex e_k instead (a
        mixture; 0 = plain Dirichlet). The vertices are where dedicated single-objective runs specialise, and
        Dirichlet(1) rarely draws near them.
    """
    if num_objectives < 1:
        raise ValueError(f"num_objectives must be >= 1, got {num_objectives}")
    if not concentration > 0:
        raise ValueError(f"concentration must be positive, got {concentration}")
    if not 0 <= vertex_fraction < 1:
        raise ValueError(f"vertex_fraction must be in [0, 1), got {vertex_fraction}")
    alpha = np.full(num_objectives, concentration, np.float64)
    corners = np.eye(num_objectives)

    def sample(rng: np.random.Generator, batch_size: int) -> np.ndarray:
        n = batch_size if per_example else 1
        w = rng.dirichlet(alpha, size=n)
        if vertex_fraction:
            on_vertex = rng.random(n) < vertex_fraction
            w[on_vertex] = corners[rng.integers(num_objectives, size=int(on_vertex.sum()))]
        return np.broadcast_to(w, (batch_size, num_objectives)).astype(np.float32)

    return sample
