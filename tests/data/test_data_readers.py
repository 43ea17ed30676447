"""Tests of mojax.data.readers: every schema and container, bad input counted by reason, real files."""

import gzip
import json
import random

import pytest

from data_testlib import CHAT_TEMPLATE, shared_file, word_tokenizer
from mojax.data.readers import (HH_ASSISTANT, ReaderConfig, TokenizedExample, detect_format,
                                read_preferences, select_objective)
from mojax.data.report import DataError

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
    assert rep.skipped == {"identical_responses": 1, "empty_response": 1, "bad_type": 1}


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
    with pytest.raises(DataError, match=r"cannot tell the data format.*\['text'\]"):
        read_preferences(tmp_path / "odd.jsonl")
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 50)[:30])
    with pytest.raises(DataError, match=r"trunc.jsonl.gz: cannot read"):
        read_preferences(tmp_path / "trunc.jsonl.gz")
    with pytest.raises(DataError, match="unknown format"):
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
