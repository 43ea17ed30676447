"""COS-DPO learning-to-rank task: MSLR-WEB10K (SVMlight) or a synthetic MSLR-shaped set, split by query.

Every split is a :class:`Task` of ranking arrays: ``features [Q, L, F]``, ``where [Q, L]``, the main relevance label
``main [Q, L]`` and K auxiliary labels ``aux [Q, K, L]`` rescaled per query to the relevance-grade range [0, 4].
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

AUX_GRADE_MAX = 4.0  # auxiliary labels are rescaled per query to [0, 4], the range of MSLR's relevance grades
SPARSE_ZERO_SHARE = 0.5  # an auxiliary label is "sparse" when at least this share of its valid items is 0


@dataclasses.dataclass(frozen=True)
class Task:
    """Ranking arrays of one split: ``features [Q,L,F]``, ``where [Q,L]``, ``main [Q,L]``, ``aux [Q,K,L]``."""

    features: np.ndarray
    where: np.ndarray
    main: np.ndarray
    aux: np.ndarray

    def take(self, idx: np.ndarray) -> Task:
        return Task(self.features[idx], self.where[idx], self.main[idx], self.aux[idx])

    def __len__(self) -> int:
        return len(self.features)


def grade_aux_labels(aux: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Rescale each query's auxiliary label column to [0, 4] (min → 0, max → 4; constant columns → 0).

    ``aux [Q,K,L]``, ``where [Q,L]``. Auxiliary objectives come as raw feature columns (click counts in the
    thousands, quality scores 1–254, synthetic reals): per-query min–max puts them on the relevance-grade scale, so
    NDCG's gain 2^ψ − 1 stays finite and softmax label normalisation has a comparable temperature across objectives.
    """
    aux = np.asarray(aux, np.float64)
    mask = np.broadcast_to(where[:, None, :], aux.shape)
    lo = np.where(mask, aux, np.inf).min(-1, keepdims=True)
    hi = np.where(mask, aux, -np.inf).max(-1, keepdims=True)
    span = hi - lo
    ok = np.isfinite(span) & (span > 0)
    graded = np.where(ok, (aux - np.where(ok, lo, 0)) / np.where(ok, span, 1), 0.0) * AUX_GRADE_MAX
    return np.where(mask, graded, 0.0).astype(np.float32)


def synthetic_correlation(num_objectives: int, relevance_corr: float, aux_corr: float) -> np.ndarray:
    """Latent correlation ``[(1+K), (1+K)]`` of (relevance, aux_1..aux_K) for the synthetic task.

    Every auxiliary objective correlates ``relevance_corr`` with relevance (as MSLR's quality and click columns do)
    and ``aux_corr / (K − 1)`` with each other auxiliary objective: negative values make them conflict, so the
    Pareto front is a real trade-off; dividing by K − 1 keeps the matrix positive definite as K grows.
    """
    k = num_objectives
    pair = aux_corr / max(k - 1, 1)
    sigma = np.full((k + 1, k + 1), pair)
    sigma[0, :] = sigma[:, 0] = relevance_corr
    np.fill_diagonal(sigma, 1.0)
    if np.linalg.eigvalsh(sigma).min() <= 0:
        raise ValueError(f"relevance_corr={relevance_corr}, aux_corr={aux_corr} give no valid correlation matrix "
                         f"for K={k}; move them towards 0")
    return sigma


def zero_share(aux: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``[K]``: the share of valid items whose auxiliary label is 0, per objective (``aux [Q,K,L]``, ``where [Q,L]``).

    Measured on the raw columns: MSLR's click counts are mostly 0 (sparse), its quality scores and the synthetic
    Gaussians almost never are (dense).
    """
    mask = np.broadcast_to(np.asarray(where, bool)[:, None, :], aux.shape)
    return (np.sum((np.asarray(aux) == 0) & mask, axis=(0, 2)) / np.maximum(mask.sum(axis=(0, 2)), 1)).astype(float)


def resolve_label_norm(label_norm: str, zero_shares: np.ndarray) -> str:
    """The ListNet label normalisation actually used: ``auto`` picks the paper's rule (COS-DPO eq. 7 and Fig. 2:
    ``l1`` for sparse labels, ``softmax`` for dense ones) — ``l1`` when every auxiliary label is sparse (at least
    :data:`SPARSE_ZERO_SHARE` of its items are 0), else ``softmax`` (one normalisation serves all K objectives)."""
    if label_norm != "auto":
        return label_norm
    return "l1" if np.all(np.asarray(zero_shares) >= SPARSE_ZERO_SHARE) else "softmax"


def load_task(config: Any) -> tuple[Task, Task, list[str], dict[str, Any]]:
    """Train/test splits (by query id), the auxiliary objectives' names and the data report, for a
    ``cos_dpo_ltr.Config``.

    The data report (``metrics.json["data"]``) holds the source, the reader's counts for a file (lines kept and
    skipped, lists split), the lists dropped for having fewer than 2 documents, each objective's share of zero
    labels and the label normalisation that ``label_norm="auto"`` resolved to.
    """
    info: dict[str, Any] = {"source": config.data_path or "synthetic"}
    if config.data_path is None:
        from mojax.data.synthetic_ltr import SyntheticLTRConfig, make_ranking_data

        sigma = synthetic_correlation(config.num_objectives, config.synthetic_relevance_corr,
                                      config.synthetic_aux_corr)
        data = make_ranking_data(SyntheticLTRConfig(
            num_queries=config.num_queries, min_list_size=max(2, config.list_size // 2),
            max_list_size=config.list_size, num_features=config.num_features,
            correlation=tuple(map(tuple, sigma.tolist()))), seed=config.seed)
        names = [f"aux{k + 1}" for k in range(config.num_objectives)]
    else:
        from mojax.data.letor import LetorConfig, read_letor

        # The model reads neither its targets nor the paper's other auxiliary columns: with MSLR's 136 features
        # the inputs are the first 131 (COS-DPO §A.4, after Mahapatra et al. 2023b).
        cols = tuple(config.mslr_objectives)
        dropped = tuple(sorted(set(cols) | {132, 133, 134, 135, 136})) if max(cols) <= 136 else cols
        data, report = read_letor(config.data_path, LetorConfig(
            objectives=("label", *dropped), max_list_size=config.list_size, long_lists="split",
            normalization="log1p_zscore"))
        print(report.summary(), file=sys.stderr)
        info["reader"] = {k: v for k, v in report.to_dict().items() if k in ("kept", "total", "skipped", "altered")}
        rows = [0] + [1 + dropped.index(col) for col in cols]
        data = dataclasses.replace(data, labels=data.labels[:, rows])
        names = [f"f{col}" for col in cols]
    keep = np.flatnonzero(data.where.sum(-1) >= 2)  # a one-document list has no ranking to learn or measure
    info["lists_dropped_single_document"] = int(len(data.where) - len(keep))
    data = data.subset(keep)
    shares = zero_share(np.asarray(data.labels)[:, 1:], np.asarray(data.where))
    info["label_zero_share"] = dict(zip(names, shares.round(4).tolist()))
    info["label_norm"] = resolve_label_norm(config.label_norm, shares)
    train, test = data.split((1 - config.test_fraction, config.test_fraction), seed=config.seed)
    if len(train) < 2 or len(test) < 1:
        raise ValueError(f"{len(data)} usable lists: too few to split into train and test")

    def task(d) -> Task:
        labels = np.asarray(d.labels, np.float32)  # [Q, 1 + K, L], objective 0 = relevance
        return Task(np.asarray(d.features, np.float32), np.asarray(d.where, bool), labels[:, 0],
                    grade_aux_labels(labels[:, 1:], d.where))

    return task(train), task(test), names, info

