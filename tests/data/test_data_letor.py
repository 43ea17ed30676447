"""Tests of mojax.data.letor: SVMlight parsing, grouping, list policies, objectives, normalisation, real files."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_testlib import shared_file
from mojax.data.letor import LetorConfig, normalize_features, read_letor
from mojax.data.report import DataError

TEXT = """\
# a comment-only line
2 qid:7 1:0.5 3:1.5 # doc a
0 qid:7 2:2 3:-1
1 qid:7 1:4 2:1 3:0.5 4:9 #doc c

3 qid:9 1:1 4:3 # d
oops qid:9 1:1
1 9 1:1
0 qid:9 1:x
2 qid:9 0:1
1 qid:7 1:-1 # late member of query 7
"""


def test_parse_grouping_missing_features_comments_and_bad_lines():
    data, rep = read_letor(TEXT.splitlines(), LetorConfig(objectives=("label",)))
    assert rep.kept == 5 and rep.skipped == {"malformed_line": 4}
    assert [loc for loc, _ in rep.samples["malformed_line"]] == [7, 8, 9]  # first three remembered
    assert data.qids.tolist() == [7, 9]
    assert data.features.shape == (2, 4, 4) and data.labels.shape == (2, 1, 4)
    np.testing.assert_array_equal(data.features[0], [[0.5, 0, 1.5, 0], [0, 2, -1, 0], [4, 1, 0.5, 9], [-1, 0, 0, 0]])
    np.testing.assert_array_equal(data.features[1, 0], [1, 0, 0, 3])
    assert data.where.tolist() == [[True] * 4, [True, False, False, False]]
    assert data.labels[:, 0].tolist() == [[2, 0, 1, 1], [3, 0, 0, 0]]
    assert data.comments[0].tolist() == ["doc a", "", "doc c", "late member of query 7"]
    assert not data.features[1, 1:].any()  # padding is zero


def test_objectives_pick_label_and_feature_columns():
    cfg = LetorConfig(objectives=(4, "label", 1), drop_objective_features=True)
    data, _ = read_letor(TEXT.splitlines(), cfg)
    assert data.objective_names == ("feature_4", "label", "feature_1")
    assert data.feature_ids == (2, 3)
    np.testing.assert_array_equal(data.labels[0], [[0, 0, 9, 0], [2, 0, 1, 1], [0.5, 0, 4, -1]])
    np.testing.assert_array_equal(data.features[0, :, 0], [0, 2, 1, 0])
    keep, _ = read_letor(TEXT.splitlines(), LetorConfig(objectives=("label", 4), drop_objective_features=False))
    assert keep.feature_ids == (1, 2, 3, 4)
    with pytest.raises(DataError, match="objective feature 12 is beyond"):
        read_letor(TEXT.splitlines(), LetorConfig(objectives=(12,)))
    with pytest.raises(ValueError, match="1-based feature id"):
        LetorConfig(objectives=(0,))


def test_long_lists_truncate_or_split():
    lines = [f"{i % 3} qid:1 1:{i}" for i in range(7)] + ["1 qid:2 1:100"]
    data, rep = read_letor(lines, LetorConfig(max_list_size=3, long_lists="truncate"))
    assert data.features.shape == (2, 3, 1) and data.features[0, :, 0].tolist() == [0, 1, 2]
    assert rep.altered == {"list_truncated": 1}
    data, rep = read_letor(lines, LetorConfig(max_list_size=3, long_lists="split"))
    assert data.qids.tolist() == [1, 1, 1, 2]
    assert data.features[:3, :, 0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 0, 0]]
    assert data.where.sum() == 8 and rep.altered == {"list_split": 1}
    data, rep = read_letor(lines, LetorConfig(min_list_size=2))
    assert data.qids.tolist() == [1] and rep.skipped == {"list_too_short": 1}


def reference_normalize(x, where, method):
    """Loop-based float64 re-derivation of the normalisations."""
    q, l, f = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    if method == "query_minmax":
        for i in range(q):
            for j in range(f):
                v = x[i, where[i], j]
                if len(v) and v.max() > v.min():
                    out[i, where[i], j] = (v - v.min()) / (v.max() - v.min())
        return out
    y = np.sign(x) * np.log1p(np.abs(x)) if method == "log1p_zscore" else x.astype(np.float64)
    for j in range(f):
        v = y[..., j][where]
        sd = v.std()
        if sd > 1e-12 * (1 + abs(v.mean())):
            out[..., j][where] = (v - v.mean()) / sd
    return out


@pytest.mark.parametrize("method", ["query_minmax", "zscore", "log1p_zscore"])
def test_normalisation_matches_reference_incl_constant_and_zero_heavy_columns(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 4)) * 3
    x[..., 1] = 2.0  # constant column
    x[..., 2] = np.where(rng.random((5, 6)) < 0.9, 0.0, rng.exponential(500, (5, 6)))  # zero-heavy, heavy-tailed
    x[2, :, 3] = 1.5  # constant within one query
    where = rng.random((5, 6)) < 0.8
    where[:, 0] = True
    got = normalize_features(x, where, method)
    np.testing.assert_allclose(got, reference_normalize(x, where, method), atol=1e-5)
    assert np.all(got[~where] == 0) and np.all(np.isfinite(got))
    assert np.all(got[..., 1] == 0)


def test_split_partitions_queries():
    lines = [f"{i % 2} qid:{i // 3} 1:{i}" for i in range(60)]
    data, _ = read_letor(lines, LetorConfig(max_list_size=2, long_lists="split"))
    parts = data.split((0.5, 0.3, 0.2), seed=1)
    qsets = [set(p.qids.tolist()) for p in parts]
    assert [len(s) for s in qsets] == [10, 6, 4]
    assert set().union(*qsets) == set(range(20)) and sum(len(p) for p in parts) == len(data)
    assert all(not (a & b) for i, a in enumerate(qsets) for b in qsets[i + 1:])  # a split query stays together
    assert [p.qids.tolist() for p in data.split((0.5, 0.3, 0.2), seed=1)] == [p.qids.tolist() for p in parts]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5),
                          st.dictionaries(st.integers(1, 8), st.floats(-1e3, 1e3, allow_nan=False), max_size=8)),
                min_size=1, max_size=20))
def test_roundtrip_random_svmlight(rows):
    lines = [f"{lab} qid:{q} " + " ".join(f"{k}:{v!r}" for k, v in sorted(feats.items())) for lab, q, feats in rows]
    data, rep = read_letor(lines, LetorConfig(num_features=8))
    assert rep.kept == len(rows) and data.where.sum() == len(rows)
    qorder = list(dict.fromkeys(q for _, q, _ in rows))
    assert data.qids.tolist() == qorder
    slot = {q: 0 for q in qorder}
    for lab, q, feats in rows:
        g = qorder.index(q)
        dense = np.zeros(8)
        for k, v in feats.items():
            dense[k - 1] = v
        np.testing.assert_array_equal(data.features[g, slot[q]], dense.astype(np.float32))  # float32 output
        assert data.labels[g, 0, slot[q]] == lab
        slot[q] += 1


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_letor(tmp_path / "none.txt")
    (tmp_path / "bad.txt").write_text("hello\nworld\n")
    with pytest.raises(DataError, match=r"bad.txt: none of 2 records.*line 1: malformed_line"):
        read_letor(tmp_path / "bad.txt")


def test_real_letor_fixture():
    data, rep = read_letor(shared_file("letor-fixture", "pytorchltr-dataset.txt"))
    assert rep.kept == 39 and rep.num_skipped == 0
    assert data.qids.tolist() == [1, 16, 60, 63] and data.where.sum(axis=1).tolist() == [6, 9, 14, 10]
    assert data.features.shape == (4, 14, 45)
    assert data.comments[0, 0] == "docid = 244338"
    # feature 20 is absent from the first line: it reads as 0; the first line's feature 1 is 1.0
    assert data.features[0, 0, 19] == 0 and data.features[0, 0, 0] == 1.0


def test_real_mslr_sample_with_cos_dpo_objectives():
    path = shared_file("mslr-web10k-sample", "msn1.fold1.train.5k.txt.gz")
    cfg = LetorConfig(objectives=("label", 132, 133, 134, 135, 136), normalization="log1p_zscore",
                      max_list_size=128, long_lists="split")
    data, rep = read_letor(path, cfg)
    assert rep.kept == 5000 and rep.num_skipped == 0 and rep.altered["list_split"] == 12
    assert len(np.unique(data.qids)) == 43 and data.where.sum() == 5000
    assert data.features.shape[1:] == (128, 131) and data.labels.shape[1:] == (6, 128)
    assert 132 not in data.feature_ids and len(data.feature_ids) == 131
    rel = data.labels[:, 0][data.where]
    assert set(np.unique(rel).tolist()) <= {0, 1, 2, 3, 4}
    assert np.all(np.isfinite(data.features))
    # query click count (134) is zero on all but 130 of the 5,000 rows (SOURCES.md); QualityScore2 (133) in 1..254
    assert int((data.labels[:, 3][data.where] != 0).sum()) == 130
    q2 = data.labels[:, 2][data.where]
    assert q2.min() >= 0 and q2.max() <= 254
    scaled = normalize_features(np.moveaxis(data.labels[:, 1:], 1, -1), data.where, "query_minmax")
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_bad_letor_lines_are_counted_at_their_file_lines(tmp_path):
    from mojax.data.report import NoUsableDataError

    lines = ["# header", "", "2 qid:1 1:0.5", "1 qid:1 99999999999:1", "1 qid:1 inf:1", "0 qid:1 1:1e400",
             "1 qid:2 2:1", "0 qid:1 1:0.1", "1 qid:1 1:0.2", "1 qid:3 1:3"]
    data, rep = read_letor(lines, LetorConfig(max_list_size=2, min_list_size=2))
    # a huge feature id is one malformed line, not a dense column per id (MemoryError before)
    assert [loc for loc, _ in rep.samples["malformed_line"]] == [4, 5, 6]
    assert "set num_features" in rep.samples["malformed_line"][0][1]
    # list-stage locations are file lines: qid 1 starts at line 3, qid 2 (too short) at line 7, qid 3 at line 10
    assert rep.samples["list_truncated"] == [(3, "qid 1: 3 documents, kept 2")]
    assert [loc for loc, _ in rep.samples["list_too_short"]] == [7, 10]
    assert data.qids.tolist() == [1]
    # a BOM before the first line costs nothing; a file of blanks and comments raises one clear error
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf2 qid:1 1:1\n0 qid:1 1:2\n")
    assert read_letor(tmp_path / "b.txt")[1].kept == 2
    for content in (b"", b"\n# only a comment\n  \n"):
        (tmp_path / "e.txt").write_bytes(content)
        with pytest.raises(NoUsableDataError, match=r"e\.txt: no records"):
            read_letor(tmp_path / "e.txt")


_LETOR_TOKENS = st.sampled_from(["qid:1", "qid:2", "qid:", "1:0.5", "2:-3", "3:1e9", "0:1", "1:x", "1:", ":",
                                 "7:nan", "65537:1", "1e300:1", "2", "0", "-1", "#", "# c", "inf", "\t"])


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.one_of(st.lists(_LETOR_TOKENS, max_size=6).map(" ".join), st.text(max_size=20),
                                st.binary(max_size=20)), max_size=8),
       max_list_size=st.none() | st.integers(1, 3), long_lists=st.sampled_from(["truncate", "split"]))
def test_fuzz_letor_lines_never_crash_the_reader(lines, max_list_size, long_lists):
    try:
        data, rep = read_letor(lines, LetorConfig(max_list_size=max_list_size, long_lists=long_lists,
                                                  normalization="zscore"))
    except DataError as e:
        assert "\n" not in str(e)
        return
    assert data.where.sum() >= 1 and np.all(np.isfinite(data.features)) and np.all(np.isfinite(data.labels))
    assert rep.kept + rep.skipped.get("malformed_line", 0) + rep.skipped.get("non_utf8", 0) <= len(lines)
