"""A synthetic multi-objective learning-to-rank task in MSLR-WEB10K's shape.

Each document has a latent Gaussian vector ``z = (s, a_1 … a_M) ~ N(0, Σ)`` with unit variances: ``s`` is the latent
relevance, ``a_m`` are auxiliary objectives (the analogues of MSLR's feature columns 132–136 that COS-DPO uses as
extra objectives). Σ is either given in full (``correlation``) or built from ``aux_relevance_corr = (ρ_1 … ρ_M)`` as a
one-factor model ``a_m = ρ_m·s + sqrt(1 − ρ_m²)·ε_m``, i.e. ``Σ_{0m} = ρ_m``, ``Σ_{jm} = ρ_j·ρ_m``; a negative ρ
makes an objective conflict with relevance (and with the positively correlated ones).

- Relevance label 0–4: ``s + label_noise·ε`` cut at the quantiles ``relevance_quantiles`` of its N(0, 1 + label_noise²)
  distribution (defaults follow MSLR's skew: about 52 % zeros, 32 % ones, 13 % twos, 2 % threes, 1 % fours).
- Auxiliary labels: the raw ``a_m`` (continuous, "feature-like").
- Features ``[F]``: ``z·W + feature_noise·ε + query_shift·u_q`` with a fixed random ``W [(1+M), F]`` (seeded), i.i.d.
  noise, and a per-query offset ``u_q ~ N(0, I_F)`` shared by the query's documents (so per-query normalisation
  matters, as on real LETOR data).
- Lists: ``L_q ~ U{min_list_size..max_list_size}`` documents per query, padded to ``max_list_size``.

Labels are ``[Q, K, L]`` with K = 1 + M: row 0 the relevance label, rows 1.. the auxiliaries. A pure function of
``(config, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mojax.data.letor import RankingData

__all__ = ["SyntheticLTRConfig", "latent_correlation", "make_ranking_data"]


@dataclass(frozen=True, kw_only=True)
class SyntheticLTRConfig:
    """The synthetic ranking task (module docstring for the definitions).

    Attributes:
      num_queries: Q.
      min_list_size, max_list_size: documents per query (L = max_list_size after padding).
      num_features: F.
      aux_relevance_corr: ρ_m, one per auxiliary objective (ignored when ``correlation`` is given).
      correlation: optional full ``(1+M)×(1+M)`` correlation matrix of ``(s, a_1 … a_M)``.
      feature_noise: std of the features' i.i.d. noise.
      label_noise: std of the noise added to ``s`` before quantising the relevance label.
      query_shift: std of the per-query feature offset.
      relevance_quantiles: cumulative probabilities of labels ≤ 0, 1, 2, 3.
    """

    num_queries: int = 256
    min_list_size: int = 8
    max_list_size: int = 32
    num_features: int = 32
    aux_relevance_corr: tuple[float, ...] = (0.6, 0.2, -0.5)
    correlation: tuple[tuple[float, ...], ...] | None = None
    feature_noise: float = 0.5
    label_noise: float = 0.5
    query_shift: float = 0.5
    relevance_quantiles: tuple[float, float, float, float] = (0.52, 0.84, 0.97, 0.99)

    def __post_init__(self):
        if self.num_queries < 1 or self.num_features < 1:
            raise ValueError("num_queries and num_features must be positive")
        if not 1 <= self.min_list_size <= self.max_list_size:
            raise ValueError("need 1 <= min_list_size <= max_list_size")
        q = np.asarray(self.relevance_quantiles)
        if q.shape != (4,) or np.any(np.diff(q) <= 0) or q[0] <= 0 or q[-1] >= 1:
            raise ValueError(f"relevance_quantiles must be 4 increasing numbers in (0, 1), got {q.tolist()}")
        if min(self.feature_noise, self.label_noise, self.query_shift) < 0:
            raise ValueError("noise levels must be non-negative")
        latent_correlation(self)  # validates the correlation matrix

    @property
    def num_objectives(self) -> int:
        """K = 1 + M."""
        return latent_correlation(self).shape[0]


def latent_correlation(config: SyntheticLTRConfig) -> np.ndarray:
    """The ``(1+M)×(1+M)`` correlation matrix Σ of ``(s, a_1 … a_M)``; raises ValueError if it is not one."""
    if config.correlation is not None:
        sigma = np.asarray(config.correlation, dtype=np.float64)
    else:
        rho = np.asarray(config.aux_relevance_corr, dtype=np.float64).reshape(-1)
        if np.any(np.abs(rho) > 1):
            raise ValueError(f"aux_relevance_corr must lie in [-1, 1], got {rho.tolist()}")
        v = np.concatenate([[1.0], rho])
        sigma = np.outer(v, v)
        np.fill_diagonal(sigma, 1.0)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1] or not np.allclose(sigma, sigma.T):
        raise ValueError(f"correlation must be a symmetric square matrix, got shape {sigma.shape}")
    if not np.allclose(np.diag(sigma), 1.0):
        raise ValueError("correlation must have a unit diagonal")
    if np.linalg.eigvalsh(sigma).min() < -1e-10:
        raise ValueError("correlation matrix is not positive semi-definite")
    return sigma


def make_ranking_data(config: SyntheticLTRConfig = SyntheticLTRConfig(), *, seed: int,
                      return_latents: bool = False) -> RankingData | tuple[RankingData, np.ndarray]:
    """Sample the task. Returns :class:`RankingData` (and, if asked, the latents ``[Q, 1+M, L]``, 0 at padding)."""
    rng = np.random.default_rng(seed)
    sigma = latent_correlation(config)
    k, q, lmax, f = sigma.shape[0], config.num_queries, config.max_list_size, config.num_features
    # eigh instead of Cholesky: a PSD but singular Σ (e.g. ρ = ±1) is allowed
    vals, vecs = np.linalg.eigh(sigma)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))  # root @ root.T == Σ
    sizes = rng.integers(config.min_list_size, config.max_list_size + 1, q)
    where = np.arange(lmax)[None, :] < sizes[:, None]
    z = rng.standard_normal((q, lmax, k)) @ root.T  # [Q, L, K]
    w = rng.standard_normal((k, f)) / np.sqrt(k)
    feats = z @ w + config.feature_noise * rng.standard_normal((q, lmax, f)) \
        + config.query_shift * rng.standard_normal((q, 1, f))
    noisy = z[..., 0] + config.label_noise * rng.standard_normal((q, lmax))
    dist = NormalDist(0.0, float(np.sqrt(1.0 + config.label_noise ** 2)))
    cuts = np.asarray([dist.inv_cdf(p) for p in config.relevance_quantiles])
    relevance = np.searchsorted(cuts, noisy, side="right").astype(np.float64)  # 0..4
    labels = np.concatenate([relevance[:, None, :], np.moveaxis(z[..., 1:], -1, 1)], axis=1)  # [Q, K, L]
    labels = np.where(where[:, None, :], labels, 0.0).astype(np.float32)
    data = RankingData(features=np.where(where[..., None], feats, 0.0).astype(np.float32), where=where,
                       labels=labels, qids=np.arange(q),
                       objective_names=("label",) + tuple(f"aux_{m}" for m in range(1, k)),
                       feature_ids=tuple(range(1, f + 1)))
    if return_latents:
        return data, np.where(where[:, None, :], np.moveaxis(z, -1, 1), 0.0)
    return data
