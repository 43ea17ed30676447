"""Tests of mojax.data.report: counting, summaries, JSON round trip, failing fast on unusable sources."""

import json

import pytest

from mojax.data.report import DataError, DataReport, NoUsableDataError


def test_counts_samples_and_summary():
    rep = DataReport(source="f.jsonl", max_samples=2)
    rep.keep(5)
    for line in (3, 7, 9):
        rep.skip("malformed_json", line, "bad")
    rep.skip("empty_response", 4, "empty")
    rep.alter("too_long_truncated", 11, "cut")
    assert rep.kept == 5 and rep.num_skipped == 4 and rep.total == 9
    assert rep.skipped == {"malformed_json": 3, "empty_response": 1}
    assert rep.samples["malformed_json"] == [(3, "bad"), (7, "bad")]  # capped at max_samples
    text = rep.summary()
    assert "kept 5 of 9" in text and "skipped malformed_json: 3 (e.g. line 3, line 7)" in text
    assert "altered too_long_truncated: 1" in text
    assert rep.first_error() == "line 3: malformed_json: bad"


def test_save_load_roundtrip(tmp_path):
    rep = DataReport(source="x")
    rep.keep(2)
    rep.skip("non_utf8", 5, "byte 0xff")
    path = rep.save(tmp_path / "run" / "data_report.json")
    d = json.loads(path.read_text())
    assert d["kept"] == 2 and d["skipped"] == {"non_utf8": 1} and d["samples"]["non_utf8"][0]["line"] == 5
    back = DataReport.load(path)
    assert back.to_dict() == rep.to_dict()


def test_unusable_source_fails_fast_with_path_and_first_error():
    rep = DataReport(source="/data/train.jsonl")
    rep.skip("missing_field", 2, "missing 'chosen'")
    rep.skip("malformed_json", 1, "Expecting value")
    with pytest.raises(DataError, match=r"/data/train.jsonl.*line 1: malformed_json"):
        rep.raise_if_unusable()
    rep.keep()
    rep.raise_if_unusable()  # one usable record is enough
    with pytest.raises(NoUsableDataError, match=r"empty\.jsonl: no records \(the file is empty or holds only blank"):
        DataReport(source="empty.jsonl").raise_if_unusable()  # an empty source is unusable too
    assert issubclass(NoUsableDataError, DataError)  # one type for a command line to turn into exit code 2


def test_merge_and_unkeep():
    a, b = DataReport(source="a"), DataReport(source="b")
    a.keep(3)
    b.keep(1)
    b.skip("bad_label", 2)
    m = a.merge(b)
    assert (m.kept, m.num_skipped, m.source) == (4, 1, "a + b")
    m.unkeep(2)
    assert m.kept == 2
    with pytest.raises(ValueError):
        m.unkeep(3)
