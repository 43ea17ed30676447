"""LETOR / SVMlight ranking data: parse, group by query into padded lists, normalise, pick objectives.

Line format: ``<label> qid:<Q> <i>:<v> <i>:<v> ... [# comment]`` with 1-based feature ids; a feature absent from a
line is 0 (LETOR files omit features, e.g. the fixture's 20–21); the text after ``#`` (``docid = …``) is kept per
document. Blank and comment-only lines are not records. Malformed lines (no ``qid:``, a non-numeric value, a
feature id < 1 or > ``num_features``, a non-finite value) are skipped and counted in the
:class:`~mojax.data.report.DataReport` as ``malformed_line``; a file with no valid line raises
:class:`~mojax.data.report.DataError`.

Documents are grouped by qid in order of first appearance (a qid that reappears later joins its group). Lists longer
than ``max_list_size`` are cut (``long_lists="truncate"``: the first documents in file order are kept) or split into
several lists of the same qid (``"split"``); both are counted (``list_truncated`` / ``list_split``).

Objectives (COS-DPO's multi-objective LTR): ``objectives=("label", 132, 133)`` makes label row 0 the relevance label
and rows 1, 2 the raw values of features 132 and 133; with ``drop_objective_features`` those columns are removed
from the model's inputs (the model must not read its own target). Labels are the raw values unless
``objective_normalization`` says otherwise.

Normalisation of the input features (``normalization``), computed over valid documents only; padded slots stay 0:

- ``"query_minmax"``: per query and feature, ``(x − min_q) / (max_q − min_q)``; a feature constant within a query → 0.
- ``"zscore"``: global ``(x − mean) / std``; a constant column (std ≤ 1e-12·(1+|mean|)) → 0.
- ``"log1p_zscore"``: ``sign(x)·log1p(|x|)`` then ``zscore``: tames heavy-tailed, zero-heavy columns (MSLR's click
  counts and dwell time) that a plain z-score would turn into a few huge outliers.
- ``"none"``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mojax.data.report import DataError, DataReport

__all__ = ["LetorConfig", "RankingData", "read_letor", "parse_letor_lines", "normalize_features",
           "NORMALIZATIONS"]

NORMALIZATIONS = ("none", "query_minmax", "zscore", "log1p_zscore")
#: Largest feature id accepted when ``num_features`` is not given (MSLR has 136, Istella 220, Yahoo 700).
MAX_FEATURE_ID = 1 << 16


@dataclass(frozen=True, kw_only=True, eq=False)
class RankingData:
    """Queries as padded lists (the ranking batch layout, with Q queries in place of B).

    Attributes:
      features: float32 ``[Q, L, F]`` input features (0 at padded slots).
      where: bool ``[Q, L]`` True for real documents.
      labels: float32 ``[Q, K, L]`` per-objective labels (0 at padded slots).
      qids: ``[Q]`` query ids (a split long query repeats its qid).
      objective_names: K names (``"label"`` or ``"feature_<id>"``).
      feature_ids: F original 1-based feature ids of the input columns.
      comments: optional object array ``[Q, L]`` of per-document comments ('' at padded slots).
    """

    features: np.ndarray
    where: np.ndarray
    labels: np.ndarray
    qids: np.ndarray
    objective_names: tuple[str, ...] = ()
    feature_ids: tuple[int, ...] = ()
    comments: np.ndarray | None = None

    def __post_init__(self):
        q, l, _ = self.features.shape
        if self.where.shape != (q, l) or self.labels.shape[0] != q or self.labels.shape[2] != l:
            raise ValueError(f"inconsistent shapes: features {self.features.shape}, where {self.where.shape}, "
                             f"labels {self.labels.shape}")
        if len(self.qids) != q:
            raise ValueError(f"{len(self.qids)} qids for {q} lists")

    @property
    def num_objectives(self) -> int:
        """K."""
        return self.labels.shape[1]

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Query ``i`` as a record for a Grain pipeline: ``features [L, F]``, ``where [L]``, ``labels [K, L]``."""
        return {"features": self.features[i], "where": self.where[i], "labels": self.labels[i]}

    def subset(self, index: np.ndarray | Sequence[int]) -> "RankingData":
        """The queries at ``index`` (integer array), same padding."""
        index = np.asarray(index, dtype=np.int64)
        return RankingData(features=self.features[index], where=self.where[index], labels=self.labels[index],
                           qids=self.qids[index], objective_names=self.objective_names,
                           feature_ids=self.feature_ids,
                           comments=None if self.comments is None else self.comments[index])

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int = 0) -> tuple["RankingData", ...]:
        """Random split by qid (the lists of one split query stay together) into parts of about these fractions.

        Part sizes are counted in distinct qids: ``floor(cumsum(fractions)·num_qids)`` boundaries, the last part
        takes the rest. Deterministic in ``seed``.
        """
        fractions = np.asarray(fractions, dtype=np.float64)
        if fractions.ndim != 1 or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
            raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
        uniq = np.unique(self.qids)
        perm = np.random.default_rng(seed).permutation(len(uniq))
        bounds = np.floor(np.cumsum(fractions)[:-1] * len(uniq)).astype(int)
        parts = np.split(uniq[perm], bounds)
        return tuple(self.subset(np.flatnonzero(np.isin(self.qids, part))) for part in parts)


@dataclass(frozen=True, kw_only=True)
class LetorConfig:
    """Options of :func:`read_letor` (see the module docstring).

    Attributes:
      num_features: F of the file; None = the largest feature id seen.
      objectives: label rows, in order: ``"label"`` and/or 1-based feature ids.
      drop_objective_features: remove feature columns used as objectives from the inputs.
      max_list_size: L; None = the longest query.
      long_lists: ``"truncate"`` or ``"split"`` lists longer than ``max_list_size``.
      min_list_size: lists with fewer documents are skipped (``list_too_short``); 1 keeps all.
      normalization: input features, one of :data:`NORMALIZATIONS`.
      objective_normalization: objective columns taken from features, one of :data:`NORMALIZATIONS` (the relevance
        label is never normalised).
    """

    num_features: int | None = None
    objectives: tuple[str | int, ...] = ("label",)
    drop_objective_features: bool = True
    max_list_size: int | None = None
    long_lists: str = "truncate"
    min_list_size: int = 1
    normalization: str = "none"
    objective_normalization: str = "none"

    def __post_init__(self):
        if self.long_lists not in ("truncate", "split"):
            raise ValueError(f"long_lists must be 'truncate' or 'split', got {self.long_lists!r}")
        for name in (self.normalization, self.objective_normalization):
            if name not in NORMALIZATIONS:
                raise ValueError(f"unknown normalization {name!r}; expected one of {NORMALIZATIONS}")
        if not self.objectives:
            raise ValueError("objectives must name at least one label column")
        for o in self.objectives:
            if o != "label" and not (isinstance(o, int) and not isinstance(o, bool) and o >= 1):
                raise ValueError(f"an objective is 'label' or a 1-based feature id, got {o!r}")
        if self.max_list_size is not None and self.max_list_size < 1:
            raise ValueError("max_list_size must be positive")


def normalize_features(features: np.ndarray, where: np.ndarray, method: str) -> np.ndarray:
    """Normalise ``features [Q, L, F]`` over valid documents ``where [Q, L]`` (module docstring for the methods).

    Computed in float64; returns float32 with padded slots 0.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; expected one of {NORMALIZATIONS}")
    x = features.astype(np.float64)
    m = where[..., None]
    if method == "none":
        return np.where(m, x, 0.0).astype(np.float32)
    if method == "query_minmax":
        lo = np.where(m, x, np.inf).min(axis=1, keepdims=True)
        hi = np.where(m, x, -np.inf).max(axis=1, keepdims=True)
        span = hi - lo
        safe = np.where(np.isfinite(span) & (span > 0), span, 1.0)
        out = np.where(np.isfinite(span) & (span > 0), (x - lo) / safe, 0.0)
        return np.where(m, out, 0.0).astype(np.float32)
    if method == "log1p_zscore":
        x = np.sign(x) * np.log1p(np.abs(x))
    valid = x[where]  # [n, F]
    mean = valid.mean(axis=0) if len(valid) else np.zeros(x.shape[-1])
    std = valid.std(axis=0) if len(valid) else np.ones(x.shape[-1])
    constant = std <= 1e-12 * (1.0 + np.abs(mean))
    out = (x - mean) / np.where(constant, 1.0, std)
    out = np.where(constant, 0.0, out)
    return np.where(m, out, 0.0).astype(np.float32)


def _open_text_lines(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def parse_letor_lines(lines: Iterable[bytes | str], report: DataReport, *, num_features: int | None = None,
                      max_feature_id: int = MAX_FEATURE_ID
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[str], list[int]]:
    """Parse SVMlight lines into ``(labels [n], qids [n] (str), features, comments, line_numbers)``.

    ``features`` holds one sparse row per line: ``(ids int64 [m], values float64 [m])`` with 1-based ids; a repeated
    id keeps its last value. ``line_numbers`` are the 1-based file lines of the kept rows.

    Malformed lines are counted in ``report`` (``malformed_line``, with the 1-based line number) and skipped: among
    them feature ids above ``num_features`` (or, when that is None, above ``max_feature_id``: a typo such as
    ``99999999999:1`` would otherwise allocate a dense column per id). A UTF-8 byte-order mark before the first
    line is ignored.
    """
    labels, qids, feats, comments, linenos = [], [], [], [], []  # feats: (ids, values) per line
    limit = num_features if num_features is not None else max_feature_id
    for lineno, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.skip("non_utf8", lineno, str(e))
                continue
        if lineno == 1:
            raw = raw.removeprefix("\ufeff")
        body, _, comment = raw.partition("#")
        tokens = body.split()
        if not tokens:
            continue  # blank or comment-only line: not a record
        try:
            if len(tokens) < 2 or not tokens[1].startswith("qid:") or len(tokens[1]) == 4:
                raise ValueError("second field must be qid:<id>")
            label = float(tokens[0])
            # "i:v i:v ..." -> one C-level float conversion per line (the per-token Python loop was 5x slower)
            pairs = tokens[2:]
            if any(t.count(":") != 1 for t in pairs):
                raise ValueError("features must be id:value")
            flat = np.array(" ".join(pairs).replace(":", " ").split(), dtype=np.float64).reshape(-1, 2)
            idx, val = flat[:, 0], flat[:, 1]
            if not np.all(np.isfinite(idx)) or np.any(idx != np.round(idx)) or np.any(idx < 1) or np.any(idx > limit):
                raise ValueError(f"feature ids must be integers in 1..{limit}"
                                 + ("" if num_features is not None else " (set num_features for more)"))
            if not np.all(np.isfinite(val)) or not np.isfinite(label):
                raise ValueError("non-finite label or feature value")
            row = (idx.astype(np.int64), val)
        except ValueError as e:
            report.skip("malformed_line", lineno, str(e))
            continue
        labels.append(label)
        qids.append(tokens[1][4:])
        feats.append(row)
        comments.append(comment.strip())
        linenos.append(lineno)
        report.keep()
    return np.asarray(labels, dtype=np.float64), np.asarray(qids), feats, comments, linenos


def _qid_value(q: str):
    try:
        return int(q)
    except ValueError:
        return q


def read_letor(source: str | Path | Iterable[str], config: LetorConfig = LetorConfig(), *,
               report: DataReport | None = None) -> tuple[RankingData, DataReport]:
    """Read an SVMlight / LETOR file (plain or ``.gz``) or an iterable of lines into :class:`RankingData`.

    Returns:
      ``(data, report)``: labels ``[Q, K, L]`` in the order of ``config.objectives``, features ``[Q, L, F']`` with
      F' = F minus the objective columns when ``drop_objective_features``.

    Raises:
      DataError: unreadable file or an objective feature id beyond F; :class:`~mojax.data.report.NoUsableDataError`
        (a DataError) when no line is valid.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        report = report if report is not None else DataReport(source=str(path))
        try:
            with _open_text_lines(path) as f:
                labels, qids, feats, comments, linenos = parse_letor_lines(f, report,
                                                                           num_features=config.num_features)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read: {type(e).__name__}: {e}") from e
    else:
        report = report if report is not None else DataReport(source="<lines>")
        labels, qids, feats, comments, linenos = parse_letor_lines(source, report, num_features=config.num_features)
    report.raise_if_unusable()  # NoUsableDataError: an empty file, blank or comment lines only, or all malformed

    num_f = config.num_features or int(max((r[0].max() for r in feats if len(r[0])), default=0))
    for o in config.objectives:
        if o != "label" and o > num_f:
            raise DataError(f"objective feature {o} is beyond the {num_f} features of {report.source}")
    dense = np.zeros((len(feats), num_f), dtype=np.float64)
    for n, (ids, vals) in enumerate(feats):
        dense[n, ids - 1] = vals

    # group by qid, in order of first appearance
    order: dict[str, list[int]] = {}
    for n, q in enumerate(qids):
        order.setdefault(str(q), []).append(n)
    groups: list[tuple[str, list[int]]] = []
    for q, rows in order.items():
        cap = config.max_list_size
        if cap is not None and len(rows) > cap:
            if config.long_lists == "truncate":
                report.alter("list_truncated", linenos[rows[0]], f"qid {q}: {len(rows)} documents, kept {cap}")
                groups.append((q, rows[:cap]))
            else:
                report.alter("list_split", linenos[rows[0]], f"qid {q}: {len(rows)} documents in lists of {cap}")
                groups.extend((q, rows[i:i + cap]) for i in range(0, len(rows), cap))
        else:
            groups.append((q, rows))
    kept_groups = []
    for q, rows in groups:
        if len(rows) < config.min_list_size:
            report.skip("list_too_short", linenos[rows[0]], f"qid {q}: {len(rows)} < {config.min_list_size} documents")
        else:
            kept_groups.append((q, rows))
    if not kept_groups:
        raise DataError(f"{report.source}: no list has at least {config.min_list_size} documents")

    nq = len(kept_groups)
    lmax = config.max_list_size or max(len(r) for _, r in kept_groups)
    feat = np.zeros((nq, lmax, num_f), dtype=np.float64)
    rel = np.zeros((nq, lmax), dtype=np.float64)
    where = np.zeros((nq, lmax), dtype=bool)
    com = np.full((nq, lmax), "", dtype=object)
    for g, (_, rows) in enumerate(kept_groups):
        feat[g, :len(rows)] = dense[rows]
        rel[g, :len(rows)] = labels[rows]
        where[g, :len(rows)] = True
        com[g, :len(rows)] = [comments[r] for r in rows]

    obj_cols = [o - 1 for o in config.objectives if o != "label"]
    if obj_cols:
        obj_feats = normalize_features(feat[:, :, obj_cols], where, config.objective_normalization)
    label_rows, j = [], 0
    names = []
    for o in config.objectives:
        if o == "label":
            label_rows.append(np.where(where, rel, 0.0))
            names.append("label")
        else:
            label_rows.append(obj_feats[:, :, j])
            names.append(f"feature_{o}")
            j += 1
    keep_cols = [c for c in range(num_f) if not (config.drop_objective_features and c in obj_cols)]
    features = normalize_features(feat[:, :, keep_cols], where, config.normalization)
    data = RankingData(features=features, where=where,
                       labels=np.stack(label_rows, axis=1).astype(np.float32),
                       qids=np.asarray([_qid_value(q) for q, _ in kept_groups]),
                       objective_names=tuple(names), feature_ids=tuple(c + 1 for c in keep_cols), comments=com)
    return data, report
