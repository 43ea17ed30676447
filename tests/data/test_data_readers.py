"""Tests of mojax.data.readers: every schema and container, bad input counted by reason, real files."""

import copy
import gzip
import json
import random

import numpy as np

import pytest

from data_testlib import CHAT_TEMPLATE, FORMAT_RECORDS, shared_file, word_tokenizer
from mojax.data.readers import (HH_ASSISTANT, ReaderConfig, TokenizedExample, detect_format,
                                read_preferences, select_objective)
from mojax.data.report import DataError, NoUsableDataError

PAIRS = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
         for i in range(6)]


def write_jsonl(path, records, *, gz=False, ascii=True):
    data = "".join(json.dumps(r, ensure_ascii=ascii) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def as_tuples(examples):
    return [(e.prompt, e.responses, e.labels.tolist(), e.dataset_id) for e in examples]


def test_pairs_every_container_gives_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = [(r["prompt"], (r["chosen"], r["rejected"]), [[1.0, 0.0]], 3) for r in PAIRS]
    paths = [write_jsonl(tmp_path / "a.jsonl", PAIRS), write_jsonl(tmp_path / "b.jsonl.gz", PAIRS, gz=True)]
    (tmp_path / "c.json").write_text(json.dumps(PAIRS))
    (tmp_path / "d.json").write_text(json.dumps({"data": PAIRS}))
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "e.parquet")
    paths += [tmp_path / "c.json", tmp_path / "d.json", tmp_path / "e.parquet"]
    for path in paths:
        examples, report = read_preferences(path, ReaderConfig(dataset_id=3))
        assert as_tuples(examples) == expected, path
        assert report.kept == len(PAIRS) and report.num_skipped == 0
    # a named format gives the same as auto-detection
    named, _ = read_preferences(paths[0], ReaderConfig(format="pairs", dataset_id=3))
    assert as_tuples(named) == expected


def test_chat_without_template_uses_plain_rendering(tmp_path):
    rec = {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
           "chosen": [{"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "assistant", "content": "go away"}]}
    (ex,), _ = read_preferences(write_jsonl(tmp_path / "c.jsonl", [rec]))
    assert ex.prompt == "system: be kind\n\nuser: hi\n\nassistant: "
    assert ex.responses == ("hello", "go away")


def test_chat_with_template_and_implicit_prompt(tmp_path):
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "how are you"}]
    rec = {"chosen": conv + [{"role": "assistant", "content": "fine thanks"}],
           "rejected": conv + [{"role": "assistant", "content": "bad"}]}
    (ex,), _ = read_preferences(write_jsonl(tmp_path / "c.jsonl", [rec]), tokenizer=tok)
    assert ex.prompt == "<|user|>hi<|end|><|assistant|>yo<|end|><|user|>how are you<|end|><|assistant|>"
    assert ex.responses == ("fine thanks<|end|>", "bad<|end|>")  # the end-of-turn marker belongs to the response
    # conversations that differ before the last message have no shared prompt
    bad = {"chosen": rec["chosen"], "rejected": [{"role": "user", "content": "other"}] + rec["rejected"][1:]}
    _, rep = read_preferences(write_jsonl(tmp_path / "d.jsonl", [rec, bad]), tokenizer=tok)
    assert rep.skipped == {"prompt_mismatch": 1} and rep.samples["prompt_mismatch"][0][0] == 2


def test_hh_multi_turn_transcripts(tmp_path):
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:"
    recs = [
        {"chosen": prompt + " why did the cat sit", "rejected": prompt + " no"},
        # the rejected response invents a further turn: the split must stay at the shared prompt
        {"chosen": prompt + " sure", "rejected": prompt + " ok\n\nHuman: more\n\nAssistant: fine"},
        {"chosen": "no assistant turn here", "rejected": "nor here"},
    ]
    examples, rep = read_preferences(write_jsonl(tmp_path / "hh.jsonl", recs))
    assert [e.prompt for e in examples] == [prompt, prompt]
    assert examples[0].responses == (" why did the cat sit", " no")
    assert examples[1].responses == (" sure", " ok\n\nHuman: more\n\nAssistant: fine")
    assert rep.skipped == {"malformed_transcript": 1}


PKU_ROW = {"prompt": "p", "response_0": "r0", "response_1": "r1", "is_response_0_safe": True,
           "is_response_1_safe": False}


def test_pku_keeps_both_dimensions_and_orders_chosen_first(tmp_path):
    rows = [dict(PKU_ROW, better_response_id=1, safer_response_id=1),
            dict(PKU_ROW, better_response_id=1, safer_response_id=0),  # more helpful = less safe
            dict(PKU_ROW, better_response_id=0, safer_response_id=1)]
    ex, _ = read_preferences(write_jsonl(tmp_path / "pku.jsonl", rows))
    assert [e.responses for e in ex] == [("r1", "r0"), ("r1", "r0"), ("r0", "r1")]
    assert [e.labels.tolist() for e in ex] == [[[1, 0], [1, 0]], [[1, 0], [0, 1]], [[1, 0], [0, 1]]]
    safer = select_objective(ex, 1)
    assert [e.responses for e in safer] == [("r1", "r0"), ("r0", "r1"), ("r1", "r0")]
    assert all(e.labels.tolist() == [[1, 0]] and e.dataset_id == 1 for e in safer)
    # objective order is a config choice
    ex2, _ = read_preferences(tmp_path / "pku.jsonl", ReaderConfig(pku_objectives=("safer", "better")))
    assert ex2[1].responses == ("r0", "r1") and ex2[1].labels.tolist() == [[1, 0], [0, 1]]


def test_listwise_and_tokenized(tmp_path):
    rows = [{"prompt": "q", "responses": ["a", "b", "c"], "labels": [[1, 0, 2], [0.5, 0.5, 0]]},
            {"prompt": "q", "responses": ["a", "b"], "labels": [3, 1]},
            {"prompt": "q", "responses": ["a", "b"], "labels": [[1, 0, 0]]},  # wrong L
            {"prompt": "q", "responses": ["a", "b"], "labels": [1, float("nan")]}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ex, rep = read_preferences(tmp_path / "l.jsonl")
    assert ex[0].labels.shape == (2, 3) and ex[0].labels[0].tolist() == [1, 0, 2]
    assert ex[1].labels.tolist() == [[3, 1]]
    assert rep.skipped == {"bad_label": 2}
    toks = [{"prompt_ids": [1, 5], "response_ids": [[7, 2], [8, 9, 2]]},
            {"prompt_ids": [1], "response_ids": [[7, 2], [7, 2]]},
            {"prompt_ids": [1], "response_ids": [[7, 2], []]},
            {"prompt_ids": [1, -4], "response_ids": [[7, 2], [3]]}]
    ex, rep = read_preferences(write_jsonl(tmp_path / "t.jsonl", toks))
    assert isinstance(ex[0], TokenizedExample) and ex[0].labels.tolist() == [[1, 0]]
    assert ex[0].response_ids[1].tolist() == [8, 9, 2] and ex[0].length == 5
    assert rep.skipped == {"identical_responses": 1, "empty_response": 1, "bad_token_id": 1}


def test_detect_format():
    assert detect_format({"prompt": "", "chosen": "", "rejected": ""}) == "pairs"
    assert detect_format({"chosen": "", "rejected": ""}) == "hh"
    assert detect_format({"chosen": [], "rejected": []}) == "chat"
    assert detect_format({"prompt": "", "responses": [], "labels": []}) == "listwise"
    assert detect_format(dict(PKU_ROW, better_response_id=0)) == "pku"
    assert detect_format({"prompt_ids": [], "response_ids": []}) == "tokenized"
    assert detect_format({"text": "x"}) is None


def test_unreadable_files_fail_fast(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "junk.jsonl").write_text("not json\n{also not\n")
    with pytest.raises(DataError, match=r"junk.jsonl.*none of 2 records.*line 1: malformed_json"):
        read_preferences(tmp_path / "junk.jsonl")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"x.parquet: cannot read as Parquet"):
        read_preferences(tmp_path / "x.parquet")
    (tmp_path / "x.json").write_text("[{]")
    with pytest.raises(DataError, match=r"x.json: cannot read as JSON"):
        read_preferences(tmp_path / "x.json")
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(NoUsableDataError, match=r"no record is in a supported data format: the first record "
                                                r"\{'text': str\} is none of pairs, chat, .*openai"):
        read_preferences(tmp_path / "odd.jsonl")
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 50)[:30])
    with pytest.raises(DataError, match=r"trunc.jsonl.gz: cannot read"):
        read_preferences(tmp_path / "trunc.jsonl.gz")
    with pytest.raises(DataError, match="unknown data format .csv.; expected .auto. or one of pairs, .*openai"):
        ReaderConfig(format="csv")


CORRUPTIONS = ("malformed_json", "missing_field", "non_utf8", "empty_response", "identical_responses", "bad_type")


def corrupt(rec: dict, kind: str, rng: random.Random) -> bytes:
    if kind == "malformed_json":
        line = json.dumps(rec)
        return line[: rng.randrange(1, len(line) - 1)].encode()
    if kind == "missing_field":
        rec = dict(rec)
        del rec[rng.choice(["prompt", "chosen", "rejected"])]
    elif kind == "non_utf8":
        return json.dumps(rec).encode().replace(b"answer", b"answ\xff\xfer", 1)
    elif kind == "empty_response":
        rec = dict(rec, **{rng.choice(["chosen", "rejected"]): rng.choice(["", "  \n"])})
    elif kind == "identical_responses":
        rec = dict(rec, rejected=rec["chosen"])
    elif kind == "bad_type":
        rec = dict(rec, chosen=rng.choice([7, ["x"], {"a": 1}]))
    return json.dumps(rec).encode()


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_corrupted_lines_are_counted_by_reason_and_valid_records_survive(tmp_path, seed):
    from mojax.data.tokenize import TokenizeConfig, tokenize_examples

    rng = random.Random(seed)
    n = 60
    words = ["a", "b", "c", "the", "cat", "dog"]
    records = []
    for i in range(n):
        long = rng.random() < 0.15  # over-long for the token budget below
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4) + (30 if long else 0)))
        records.append({"prompt": f"q {i}", "chosen": f"good answer {answer}", "rejected": f"bad answer {i}"})
    expected_reasons: dict[str, int] = {}
    valid = []
    lines = []
    for i, rec in enumerate(records):
        if rng.random() < 0.35:
            kind = rng.choice(CORRUPTIONS)
            expected_reasons[kind] = expected_reasons.get(kind, 0) + 1
            lines.append(corrupt(rec, kind, rng))
        else:
            valid.append(rec)
            lines.append(json.dumps(rec).encode())
        if rng.random() < 0.1:
            lines.append(b"   ")  # blank lines are not records
    (tmp_path / "f.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    examples, report = read_preferences(tmp_path / "f.jsonl")
    assert dict(report.skipped) == expected_reasons
    assert report.kept == len(valid) and report.total == n
    assert [(e.prompt, e.responses) for e in examples] == [(r["prompt"], (r["chosen"], r["rejected"]))
                                                           for r in valid]
    # the tokenisation stage counts the over-long ones on the same report
    tok = word_tokenizer()
    too_long = sum(len(r["chosen"].split()) + 1 > 16 for r in valid)
    assert too_long > 0  # the fixture does exercise the length policy
    kept, report = tokenize_examples(examples, tok, TokenizeConfig(max_length=20, max_prompt_length=4,
                                                                   overflow="skip"), report)
    assert report.skipped["too_long_skipped"] == too_long
    assert len(kept) == report.kept == len(valid) - too_long
    assert report.total == n


def test_real_hh_rlhf_files():
    folder = shared_file("hh-rlhf")
    for path in sorted(folder.glob("*.jsonl.gz")):
        examples, report = read_preferences(path)
        assert report.kept >= 0.98 * report.total, report.summary()
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
        assert report.total == len(rows)
        for ex in examples[:300]:
            assert ex.prompt.endswith(HH_ASSISTANT) and ex.prompt.startswith("\n\nHuman:")
            assert ex.responses[0] != ex.responses[1]
        # every kept example reassembles into its original transcripts
        originals = {(r["chosen"], r["rejected"]) for r in rows}
        assert all((e.prompt + e.responses[0], e.prompt + e.responses[1]) in originals for e in examples)


def test_real_pku_saferlhf_sample():
    path = shared_file("pku-saferlhf-sample", "alpaca7b-test-first15.jsonl")
    examples, report = read_preferences(path)
    assert report.kept == 15 and report.num_skipped == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for ex, row in zip(examples, rows):
        better, safer = row["better_response_id"], row["safer_response_id"]
        assert ex.responses[0] == row[f"response_{better}"]
        assert ex.labels[1].tolist() == ([1, 0] if safer == better else [0, 1])
    assert examples[5].labels.tolist() == [[1, 0], [0, 1]]  # row 6 of the file: more helpful = less safe


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(min_size=1, max_size=30).filter(lambda s: s.strip())


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.tuples(st.text(max_size=30), _text, _text), min_size=1, max_size=8),
       gz=st.booleans(), ascii=st.booleans())
def test_any_unicode_text_survives_the_jsonl_roundtrip(rows, gz, ascii):
    import tempfile
    from pathlib import Path

    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]
    with tempfile.TemporaryDirectory() as d:
        path = write_jsonl(Path(d) / ("x.jsonl.gz" if gz else "x.jsonl"), records, gz=gz, ascii=ascii)
        valid = [r for r in records if r["chosen"] != r["rejected"]]
        if not valid:
            with pytest.raises(DataError):
                read_preferences(path)
            return
        ex, rep = read_preferences(path)
    assert [(e.prompt, e.responses) for e in ex] == [(r["prompt"], (r["chosen"], r["rejected"])) for r in valid]
    assert rep.skipped.get("identical_responses", 0) == len(records) - len(valid)


# ----- one bad record is one skipped record (issue 14 §4) -----

def _good(i):
    return json.dumps({"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"})


BAD_LINES = {
    "nested_brackets": ("[" * 200_000, "malformed_json"),  # RecursionError in json.loads before
    "lone_surrogate": (json.dumps({"prompt": "q", "chosen": "a\ud800b", "rejected": "c"}), "non_utf8"),
    "huge_integer": ('{"prompt": "q", "chosen": "a", "rejected": "b", "n": ' + "9" * 5000 + "}", "malformed_json"),
    "not_an_object": ("[1, 2]", "malformed_json"),
    "chosen_is_dict": (json.dumps({"prompt": "q", "chosen": {"a": 1}, "rejected": "b"}), "bad_type"),
    "extra_key": (json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}).replace("}", ', "x": 1}'),
                        None),  # an extra key is fine: kept
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_one_bad_line_is_one_skipped_record_at_its_file_line(tmp_path, case):
    from mojax.data.tokenize import TokenizeConfig, load_tokenized

    bad, reason = BAD_LINES[case]
    lines = [_good(1), "", bad, _good(2)]  # the blank line makes the bad record line 3 of the file
    (tmp_path / "f.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, report = load_tokenized(tmp_path / "f.jsonl", word_tokenizer(),
                                      TokenizeConfig(max_length=32, max_prompt_length=16))
    if reason is None:
        assert report.kept == 3 and report.num_skipped == 0
        return
    assert len(examples) == report.kept == 2
    assert dict(report.skipped) == {reason: 1}
    assert report.samples[reason][0][0] == 3 and report.location == "line"
    assert "line 3" in report.summary()
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")  # details stay printable UTF-8


def test_token_id_beyond_int32_is_one_skipped_record(tmp_path):
    rows = [{"prompt_ids": [1, 5], "response_ids": [[7, 2], [8, 2]]},
            {"prompt_ids": [1, 2**31], "response_ids": [[7, 2], [8, 2]]},  # OverflowError in int32 before
            {"prompt_ids": [1], "response_ids": [[7, 2.5], [8, 2]]},
            {"prompt_ids": [1, 2**31 - 1], "response_ids": [[7, 2], [8, 2]]}]  # the largest int32 is a valid id
    ex, rep = read_preferences(write_jsonl(tmp_path / "t.jsonl", rows))
    assert len(ex) == 2 and ex[1].prompt_ids.tolist() == [1, 2**31 - 1]
    assert rep.skipped == {"bad_token_id": 2} and [loc for loc, _ in rep.samples["bad_token_id"]] == [2, 3]
    assert "2147483648" in rep.samples["bad_token_id"][0][1]


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\t\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n  \n"])
def test_empty_or_blank_file_raises_one_clear_error(tmp_path, content):
    from mojax.data.tokenize import load_tokenized

    (tmp_path / "e.jsonl").write_bytes(content)
    for read in (lambda p: read_preferences(p), lambda p: load_tokenized(p, word_tokenizer())):
        with pytest.raises(NoUsableDataError, match=r"e\.jsonl: no records \(the file is empty or holds only blank"):
            read(tmp_path / "e.jsonl")
    (tmp_path / "e.json").write_bytes(content.rstrip(b"\n \t") + b"[]")
    with pytest.raises(NoUsableDataError, match=r"e\.json: no records"):
        read_preferences(tmp_path / "e.json")


def test_utf8_bom_costs_no_record(tmp_path):
    data = "\n".join(_good(i) for i in range(3)).encode("utf-8")
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + data)
    ex, rep = read_preferences(tmp_path / "b.jsonl")
    assert rep.kept == 3 and rep.num_skipped == 0 and ex[0].prompt == "question 0"
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIRS).encode())
    assert read_preferences(tmp_path / "b.json")[1].kept == len(PAIRS)
    # a BOM anywhere but the start of the file is a malformed line, counted as one
    (tmp_path / "m.jsonl").write_bytes(data + b"\n\xef\xbb\xbf" + _good(9).encode())
    assert read_preferences(tmp_path / "m.jsonl")[1].skipped == {"malformed_json": 1}


def test_json_array_locations_are_record_indices_labelled_as_such(tmp_path):
    recs = [PAIRS[0], dict(PAIRS[1], chosen=7), "not an object", PAIRS[2]]
    (tmp_path / "a.json").write_text(json.dumps(recs, indent=2))  # many lines per record: lines would mislead
    ex, rep = read_preferences(tmp_path / "a.json")
    assert len(ex) == 2 and rep.location == "record"
    assert rep.samples == {"bad_type": [(2, "'chosen' is a int, expected a string (the record fits none of the "
                                            "supported formats)")],
                           "malformed_json": [(3, "record is a str, not an object")]}
    assert "record 2" in rep.summary() and "line" not in rep.summary()
    d = rep.to_dict()
    assert d["location"] == "record" and d["samples"]["bad_type"][0]["record"] == 2
    rep.save(tmp_path / "r.json")
    from mojax.data.report import DataReport

    assert DataReport.load(tmp_path / "r.json").to_dict() == d


# ----- fuzzing: no input crashes the readers -----

_KEYS = ["prompt", "chosen", "rejected", "responses", "labels", "prompt_ids", "response_ids", "response_0",
         "response_1", "better_response_id", "safer_response_id", "conversations", "from", "value", "role",
         "content", "messages", "instruction", "input", "output", "system", "history", "completions", "response",
         "score", "fine-grained_score", "score_chosen", "score_rejected", "preferred_output",
         "non_preferred_output", "type", "text"]
_ROLE_VALUES = st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "observation", "x"])
_scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
            | st.text(max_size=12) | _ROLE_VALUES | st.sampled_from(["a b", "\ud800", "\n\nAssistant: ok", "good"]))


def _jsonish():
    msg = st.fixed_dictionaries({"role": _ROLE_VALUES, "content": _scalars})
    sg = st.fixed_dictionaries({"from": _ROLE_VALUES, "value": _scalars})
    leaf = _scalars | msg | sg
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.sampled_from(_KEYS), kids, max_size=4), max_leaves=12)


def _paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_replace(v, rest, new) if k == head else v) for k, v in value.items()}
    return [(_replace(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def _drop(value, path):
    if len(path) == 1:
        return ({k: v for k, v in value.items() if k != path[0]} if isinstance(value, dict)
                else [v for i, v in enumerate(value) if i != path[0]])
    return _replace(value, path[:1], _drop(value[path[0]], path[1:]))


@st.composite
def _mutated_record(draw):
    """A valid record of some format with up to two random edits deep inside (a leaf replaced, a key dropped)."""
    rec = copy.deepcopy(draw(st.sampled_from(sorted(FORMAT_RECORDS)).map(lambda f: FORMAT_RECORDS[f][0])))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(_paths(rec)[1:]))
        rec = _drop(rec, path) if draw(st.booleans()) else _replace(rec, path, draw(_jsonish()))
    return rec


_records = st.dictionaries(st.sampled_from(_KEYS), _jsonish(), max_size=6) | _mutated_record()


def _tokenizer(template: bool):
    key = "tok_t" if template else "tok"
    if key not in _CACHE:
        _CACHE[key] = word_tokenizer(chat_template=CHAT_TEMPLATE if template else None)
    return _CACHE[key]


_CACHE: dict = {}


def _read_or_clean_error(path, **kw):
    from mojax.data.tokenize import TokenizeConfig, load_tokenized

    try:
        return load_tokenized(path, kw.pop("tokenizer"), TokenizeConfig(max_length=24, max_prompt_length=12), **kw)
    except DataError as e:
        assert "\n" not in str(e)
        return None


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz_random_bytes_never_crash_the_reader(lines):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        path.write_bytes(b"\n".join(lines))
        got = _read_or_clean_error(path, tokenizer=_tokenizer(False))
    if got is not None:
        examples, report = got
        assert len(examples) == report.kept > 0 and report.total <= max(len(lines), 1)


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_records | _mutated_record() | _jsonish(), min_size=1, max_size=6), template=st.booleans(),
       container=st.sampled_from(["jsonl", "json"]), fmt=st.sampled_from(["auto", "auto", "sharegpt", "chat"]))
def test_fuzz_jsonish_records_never_crash_the_reader(records, template, container, fmt):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{container}"
        if container == "json":
            path.write_text(json.dumps(records))
        else:
            path.write_text("\n".join(json.dumps(r) for r in records))
        got = _read_or_clean_error(path, tokenizer=_tokenizer(template), reader=ReaderConfig(format=fmt))
    if got is not None:
        examples, report = got
        assert len(examples) == report.kept > 0 and report.total == len(records)
        for ex in examples:
            assert ex.labels.ndim == 2 and np.all(np.isfinite(ex.labels))
            assert all(len(r) > 0 for r in ex.response_ids)


def test_holdout_split_by_prompt_is_deterministic_and_disjoint():
    from mojax.data.readers import PreferenceExample, holdout_split

    exs = [PreferenceExample(prompt=f"q{i % 10}", responses=(f"a{i}", f"b{i}"), labels=[[1, 0]]) for i in range(40)]
    train, held = holdout_split(exs, 0.2, seed=3)
    held_prompts = {e.prompt for e in held}
    assert len(held_prompts) == 2 and len(held) == 8 and len(train) == 32
    assert not held_prompts & {e.prompt for e in train}
    assert [e.responses for e in train] == [e.responses for e in exs if e.prompt not in held_prompts]  # order kept
    # the same prompts are held out whatever the file order; another seed holds out others
    again, held2 = holdout_split(exs[::-1], 0.2, seed=3)
    assert {e.prompt for e in held2} == held_prompts
    assert any({e.prompt for e in holdout_split(exs, 0.2, seed=s)[1]} != held_prompts for s in range(4, 8))
    assert len(holdout_split(exs[:3], 0.01)[1]) == 1  # at least one prompt is held out
    toks = [TokenizedExample(prompt_ids=[1, i % 3], response_ids=[[5], [6]], labels=[[1, 0]]) for i in range(9)]
    t, h = holdout_split(toks, 0.34)
    assert len(h) == 3 and len({tuple(e.prompt_ids) for e in h}) == 1
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match="held-out fraction"):
            holdout_split(exs, bad)
    with pytest.raises(DataError, match="cannot hold out"):
        holdout_split(exs[:1], 0.5)
