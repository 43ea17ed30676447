"""Tests of mojax.data.formats: every schema from a small fixture record, auto-detection, chat rendering and its
fallback warning, and mixed bad lines counted by reason."""

import json
import logging

import pytest

from data_testlib import CHAT_TEMPLATE, FORMAT_RECORDS, word_tokenizer
from mojax.data.formats import FORMATS, detect_format
from mojax.data.readers import ReaderConfig, TokenizedExample, read_preferences
from mojax.data.report import NoUsableDataError


def write(path, records, *, array=False):
    if array:
        path.write_text(json.dumps(records, indent=1))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_format_has_a_fixture():
    assert set(FORMAT_RECORDS) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FORMAT_RECORDS))
def test_fixture_record_is_detected_and_read(tmp_path, fmt):
    record, prompt, responses = FORMAT_RECORDS[fmt]
    assert detect_format(record) == fmt
    path = write(tmp_path / "f.jsonl", [record])
    (auto,), rep = read_preferences(path)
    (named,), _ = read_preferences(path, ReaderConfig(format=fmt))
    assert rep.kept == 1 and rep.num_skipped == 0
    if fmt == "tokenized":
        assert isinstance(auto, TokenizedExample) and auto.prompt_ids.tolist() == [3, 10]
        return
    assert (auto.prompt, auto.responses) == (named.prompt, named.responses)
    assert auto.prompt == prompt and auto.location == 1
    if responses is not None:
        assert auto.responses == responses
    if fmt == "listwise":
        assert auto.labels.tolist() == [[2, 0, 1]]
    else:
        assert auto.labels.tolist() == [[1, 0]] or fmt == "pku"


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca", "openai", "ultrafeedback", "chat"])
def test_chat_formats_use_the_tokenizer_template(tmp_path, fmt):
    tok = word_tokenizer(chat_template=CHAT_TEMPLATE)
    (ex,), _ = read_preferences(write(tmp_path / "f.jsonl", [FORMAT_RECORDS[fmt][0]]), tokenizer=tok)
    user = "how are you\nthe cat" if fmt == "alpaca" else "how are you"
    assert ex.prompt == f"<|user|>{user}<|end|><|assistant|>"
    assert ex.responses[0] == "fine thanks<|end|>"


def test_sharegpt_llama_factory_variants(tmp_path):
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}, {"from": "human", "value": "how are you"}]
    recs = [
        # multi-turn, a system prompt, chosen / rejected as one message dict each (LLaMA-Factory's dpo_en_demo)
        {"conversations": conv, "system": "be kind", "chosen": {"from": "gpt", "value": "fine"},
         "rejected": {"from": "gpt", "value": "bad"}},
        # chosen / rejected as message lists, and ShareGPT's other speaker tags
        {"conversations": [{"from": "user", "value": "q"}], "chosen": [{"from": "assistant", "value": "a"}],
         "rejected": [{"from": "model", "value": "b"}]},
        # SFT: conversations only, trained on the last assistant turn
        {"conversations": conv + [{"from": "gpt", "value": "fine"}]},
        {"conversations": conv, "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "alien", "value": "y"}},
        {"conversations": conv},  # SFT without a final assistant turn
    ]
    path = write(tmp_path / "sg.json", recs, array=True)  # LLaMA-Factory ships JSON arrays
    ex, rep = read_preferences(path)
    assert ex[0].prompt == "system: be kind\n\nuser: hi\n\nassistant: yo\n\nuser: how are you\n\nassistant: "
    assert ex[0].responses == ("fine", "bad")
    assert ex[1].prompt == "user: q\n\nassistant: " and ex[1].responses == ("a", "b")
    assert ex[2].responses == ("fine",) and ex[2].labels.tolist() == [[1.0]]  # N = 1
    assert ex[2].prompt == ex[0].prompt[len("system: be kind\n\n"):]
    assert rep.location == "record" and rep.skipped == {"bad_type": 1, "missing_field": 1}
    assert rep.samples["bad_type"][0][0] == 4 and "'alien'" in rep.samples["bad_type"][0][1]
    assert rep.samples["missing_field"][0] == (5, "'conversations' does not end with an assistant message to train on")


def test_sharegpt_record_read_as_pairs_says_what_it_looks_like(tmp_path):
    path = write(tmp_path / "f.jsonl", [FORMAT_RECORDS["pairs"][0], FORMAT_RECORDS["sharegpt"][0]])
    _, rep = read_preferences(path, ReaderConfig(format="pairs"))
    assert rep.samples["missing_field"] == [(2, "missing 'prompt' (the record looks like format 'sharegpt', not "
                                                "'pairs')")]


def test_alpaca_input_history_system_and_sft(tmp_path):
    recs = [{"instruction": "sum", "input": "", "chosen": "two", "rejected": "three"},
            {"instruction": "sum", "input": "1 1", "system": "be exact", "history": [["hi", "yo"]],
             "chosen": "two", "rejected": "three"},
            {"instruction": "sum", "input": "1 1", "output": "two"},
            {"instruction": "sum", "input": 7, "chosen": "two", "rejected": "three"},
            {"instruction": "sum", "history": "no", "chosen": "two", "rejected": "three"}]
    ex, rep = read_preferences(write(tmp_path / "a.jsonl", recs))
    assert ex[0].prompt == "user: sum\n\nassistant: "  # an empty input adds nothing
    assert ex[1].prompt == "system: be exact\n\nuser: hi\n\nassistant: yo\n\nuser: sum\n1 1\n\nassistant: "
    assert ex[2].responses == ("two",) and ex[2].labels.tolist() == [[1.0]]
    assert rep.skipped == {"bad_type": 2} and [loc for loc, _ in rep.samples["bad_type"]] == [4, 5]


def test_ultrafeedback_completions_best_against_a_seeded_worse_one(tmp_path):
    rec, _, _ = FORMAT_RECORDS["ultrafeedback"]
    path = write(tmp_path / "u.jsonl", [rec] * 40)
    ex, _ = read_preferences(path)
    assert {e.responses[0] for e in ex} == {"fine thanks"}  # the best by fine-grained score
    rejected = [e.responses[1] for e in ex]
    assert set(rejected) == {"bad", "no"}  # a random worse one (both occur over 40 records)...
    assert rejected == [e.responses[1] for e in read_preferences(path)[0]]  # ...the same in every read
    other = [e.responses[1] for e in read_preferences(path, ReaderConfig(seed=1))[0]]
    assert other != rejected and set(other) == {"bad", "no"}


def test_ultrafeedback_scores_and_ties(tmp_path):
    raw = {"instruction": "q", "completions": [
        {"response": "a", "overall_score": "7", "annotations": {}},  # raw files hold some scores as strings
        {"response": "b", "overall_score": 3}]}
    tie = {"prompt": "q", "completions": [{"text": "a", "score": 1}, {"text": "b", "score": 1}]}
    h4 = {"prompt": "q", "prompt_id": "x",
          "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
          "messages": [], "score_chosen": 8.0, "score_rejected": 5.5}
    recs = [raw, tie, h4, dict(h4, score_rejected=8.0), dict(h4, score_chosen=2.0), dict(h4, score_chosen="x"),
            {"instruction": "q", "completions": [{"response": "a", "overall_score": 3}]}]
    ex, rep = read_preferences(write(tmp_path / "u.jsonl", recs))
    assert ex[0].responses == ("a", "b")
    # HuggingFaceH4/ultrafeedback_binarized repeats the prompt inside chosen / rejected: it is taken off
    assert ex[1].prompt == "user: q\n\nassistant: " and ex[1].responses == ("good", "bad")
    assert rep.skipped == {"tied_scores": 2, "bad_label": 2, "missing_field": 1}
    assert [loc for loc, _ in rep.samples["tied_scores"]] == [2, 4]


def test_openai_messages_sft_and_preference(tmp_path):
    sft = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": [{"type": "text", "text": "hel"}, {"type": "text",
                                                                                             "text": "lo"}]}]}
    pref = FORMAT_RECORDS["openai"][0]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a cat"}]}
    ex, rep = read_preferences(write(tmp_path / "o.jsonl", [sft, image]))
    assert ex[0].prompt == "system: be brief\n\nuser: hi\n\nassistant: " and ex[0].responses == ("hello",)
    assert rep.skipped == {"bad_type": 1}
    ex, _ = read_preferences(write(tmp_path / "p.jsonl", [pref]))
    assert ex[0].responses == ("fine thanks", "bad")


def test_unsupported_shape_says_which_formats_exist(tmp_path):
    # chosen / rejected as message dicts without a conversation: the shape of no supported format
    rec = {"question": "q", "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}
    assert detect_format(rec) is None
    with pytest.raises(NoUsableDataError) as err:
        read_preferences(write(tmp_path / "x.json", [rec, rec], array=True))
    msg = str(err.value)
    assert "no record is in a supported data format" in msg and "'chosen': dict" in msg
    assert all(f in msg for f in FORMATS) and "is a dict, expected a string" not in msg and "\n" not in msg


def test_mixed_bad_lines_in_a_sharegpt_file(tmp_path):
    good = FORMAT_RECORDS["sharegpt"][0]
    lines = [json.dumps({"something": "else"}),  # before the format is known: read with it once it is
             json.dumps(good), "{not json", "", json.dumps(dict(good, chosen={"from": "gpt", "value": " "})),
             json.dumps(dict(good, rejected=good["chosen"])), json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}),
             json.dumps(dict(good, conversations=[{"from": "human", "value": 3}])), json.dumps(good)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    ex, rep = read_preferences(tmp_path / "m.jsonl")
    assert [e.location for e in ex] == [2, 9] and rep.total == 8
    assert rep.skipped == {"missing_field": 2, "malformed_json": 1, "empty_response": 1, "identical_responses": 1,
                           "bad_type": 1}
    assert [loc for loc, _ in rep.samples["missing_field"]] == [1, 7]
    assert "looks like format 'pairs', not 'sharegpt'" in rep.samples["missing_field"][1][1]
    assert rep.samples["empty_response"][0][0] == 5 and rep.samples["bad_type"][0][0] == 8


def test_plain_fallback_is_announced_once_per_file(tmp_path, caplog):
    path = write(tmp_path / "c.jsonl", [FORMAT_RECORDS["sharegpt"][0]] * 3)
    with caplog.at_level(logging.WARNING, logger="mojax.data"):
        read_preferences(path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mojax.data"]
    assert len(warnings) == 1 and "no tokenizer given" in warnings[0] and "'role: content'" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mojax.data"):
        read_preferences(path, tokenizer=word_tokenizer())  # a tokenizer without a template: said too
        read_preferences(path, tokenizer=word_tokenizer(chat_template=CHAT_TEMPLATE))  # with one: nothing to say
        read_preferences(write(tmp_path / "p.jsonl", [FORMAT_RECORDS["pairs"][0]]))  # plain text: nothing either
    warnings = [r.getMessage() for r in caplog.records if r.name == "mojax.data"]
    assert len(warnings) == 1 and "the tokenizer has no chat template" in warnings[0]


def test_sft_records_tokenize_and_collate(tmp_path):
    from mojax.data.tokenize import TokenizeConfig, collate, load_tokenized

    sft = {"messages": [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]}
    out, rep = load_tokenized(write(tmp_path / "s.jsonl", [sft, sft]), word_tokenizer(chat_template=CHAT_TEMPLATE),
                              TokenizeConfig(max_length=32, max_prompt_length=16))
    batch = collate(out, TokenizeConfig(max_length=32, max_prompt_length=16))
    assert batch["input_ids"].shape[:2] == (2, 1) and batch["labels"].shape == (2, 1, 1)
    assert batch["loss_mask"][0, 0].sum() == len(out[0].response_ids[0]) > 0
