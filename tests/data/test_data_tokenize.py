"""Tests of mojax.data.tokenize: length policy, EOS/BOS, bucketing, collate layout."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_testlib import gpt2_tokenizer, shared_file, word_tokenizer
from mojax.data.readers import PreferenceExample, TokenizedExample
from mojax.data.report import DataReport
from mojax.data.tokenize import TokenizeConfig, bucket_length, collate, tokenize_examples, truncate_examples


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 512), max_length=st.integers(2, 512), multiple=st.integers(1, 100), mode=st.sampled_from(
    ["pow2", "multiple", "max"]))
def test_bucket_length_properties(n, max_length, multiple, mode):
    if n > max_length:
        with pytest.raises(ValueError):
            bucket_length(n, TokenizeConfig(max_length=max_length, max_prompt_length=1))
        return
    cfg = TokenizeConfig(max_length=max_length, max_prompt_length=1, bucket=mode, bucket_multiple=multiple,
                         min_bucket=1)
    t = bucket_length(n, cfg)
    assert n <= t <= cfg.max_length
    if t < cfg.max_length:
        if mode == "pow2":
            assert t & (t - 1) == 0 and t // 2 < n  # the smallest power of two that fits
        elif mode == "multiple":
            assert t % multiple == 0 and t - multiple < n


def test_bucket_examples():
    cfg = TokenizeConfig(max_length=512, max_prompt_length=128)
    assert [bucket_length(n, cfg) for n in (1, 16, 17, 100, 257, 512)] == [16, 16, 32, 128, 512, 512]
    cfg = TokenizeConfig(max_length=200, max_prompt_length=64, bucket="multiple", bucket_multiple=64)
    assert [bucket_length(n, cfg) for n in (1, 64, 65, 190, 193)] == [64, 64, 128, 192, 200]


def ex(prompt, *responses):
    return TokenizedExample(prompt_ids=prompt, response_ids=responses, labels=[[1.0] + [0.0] * (len(responses) - 1)])


def test_truncation_policy_left_prompt_right_response():
    cfg = TokenizeConfig(max_length=10, max_prompt_length=4)
    prompt = [1, 10, 11, 12, 13, 14]  # BOS + 5 tokens
    long_resp = [20, 21, 22, 23, 24, 25, 26, 2]
    rep = DataReport(kept=3)
    out = truncate_examples([ex([1, 5], [6, 2], [7, 8, 2]), ex(prompt, long_resp, [30, 2]),
                             ex([1, 5, 6], list(range(40, 48)), [9, 2])], cfg, rep, bos_id=1)
    assert out[0].prompt_ids.tolist() == [1, 5]  # fits: unchanged
    assert out[1].prompt_ids.tolist() == [1, 12, 13, 14]  # left cut, BOS kept
    assert out[1].response_ids[0].tolist() == [20, 21, 22, 23, 24, 25]  # right cut: EOS gone
    assert out[1].response_ids[1].tolist() == [30, 2]
    assert out[2].prompt_ids.tolist() == [1, 5, 6] and out[2].response_ids[0].tolist() == list(range(40, 47))
    assert all(o.length <= cfg.max_length for o in out)
    assert rep.altered == {"too_long_truncated": 2} and rep.kept == 3
    skip = TokenizeConfig(max_length=10, max_prompt_length=4, overflow="skip")
    rep = DataReport(kept=3)
    out = truncate_examples([ex([1, 5], [6, 2]), ex(prompt, [3, 2]), ex([1], list(range(40, 50)))], skip, rep)
    assert len(out) == 1 and rep.skipped == {"too_long_skipped": 2} and rep.kept == 1


def test_tokenize_examples_adds_bos_eos_and_keeps_boundary():
    tok = word_tokenizer(bos=True)
    examples = [PreferenceExample(prompt="hello world", responses=("good", "bad dog"), labels=[[1, 0]],
                                  dataset_id=2)]
    out, rep = tokenize_examples(examples, tok, TokenizeConfig(max_length=16, max_prompt_length=8))
    vocab = tok.get_vocab()
    (t,) = out
    assert t.prompt_ids.tolist() == [vocab["<bos>"], vocab["hello"], vocab["world"]]
    assert t.response_ids[0].tolist() == [vocab["good"], vocab["<eos>"]]
    assert t.response_ids[1].tolist() == [vocab["bad"], vocab["dog"], vocab["<eos>"]]
    assert t.dataset_id == 2 and rep.kept == 1
    out, _ = tokenize_examples(examples, tok, TokenizeConfig(max_length=16, max_prompt_length=8, add_bos=False))
    assert out[0].prompt_ids[0] == vocab["hello"]
    with pytest.raises(ValueError, match="bos_token_id"):
        tokenize_examples(examples, word_tokenizer(), TokenizeConfig(add_bos=True))


def test_collate_layout_and_padding_examples():
    cfg = TokenizeConfig(max_length=64, max_prompt_length=8, pad_id=0, min_bucket=8)
    e1 = TokenizedExample(prompt_ids=[1, 5, 6], response_ids=[[7, 2], [8, 9, 10, 2]], labels=[[1, 0], [0, 1]],
                          dataset_id=1)
    e2 = TokenizedExample(prompt_ids=[1, 4], response_ids=[[11, 12, 13, 14, 15, 16, 2], [3, 2]],
                          labels=[[1, 0], [1, 0]])
    b = collate([e1, e2], cfg, batch_size=3)
    assert b["input_ids"].shape == (3, 2, 16) and b["input_ids"].dtype == np.int32  # longest row 9 → bucket 16
    assert b["attention_mask"].dtype == np.int32 and b["loss_mask"].dtype == bool
    assert b["labels"].shape == (3, 2, 2) and b["labels"].dtype == np.float32
    assert b["example_mask"].tolist() == [True, True, False] and b["dataset_id"].tolist() == [1, 0, 1]
    # rows reassemble into prompt + response; the loss mask covers exactly the response tokens
    for i, e in enumerate([e1, e2]):
        for n, r in enumerate(e.response_ids):
            row = b["input_ids"][i, n][b["attention_mask"][i, n] == 1]
            assert row.tolist() == e.prompt_ids.tolist() + r.tolist()
            assert b["input_ids"][i, n][b["loss_mask"][i, n]].tolist() == r.tolist()
            assert np.flatnonzero(b["loss_mask"][i, n]).min() == len(e.prompt_ids)
            assert np.all(b["input_ids"][i, n][b["attention_mask"][i, n] == 0] == 0)
    np.testing.assert_array_equal(b["input_ids"][2], b["input_ids"][0])  # filler = copy of the first example
    assert not np.any(b["loss_mask"] & (b["attention_mask"] == 0))
    with pytest.raises(ValueError, match="same N responses"):
        collate([e1, ex([1], [2], [3], [4])], cfg)
    with pytest.raises(ValueError, match="exceeds max_length"):
        collate([ex([1] * 70, [2])], cfg)


def test_real_gpt2_tokenizer_on_hh():
    from mojax.data.readers import read_preferences

    tok = gpt2_tokenizer()
    # known GPT-2 ids (OpenAI's BPE): "Hello" 15496, " world" 995, EOS 50256
    assert tok("Hello world, how are you?", add_special_tokens=False)["input_ids"] == [15496, 995, 11, 703, 389,
                                                                                      345, 30]
    assert tok.eos_token_id == 50256
    examples, _ = read_preferences(shared_file("hh-rlhf", "helpful-base-test-part1.jsonl.gz"))
    cfg = TokenizeConfig(max_length=256, max_prompt_length=192, add_bos=False)
    report = DataReport(kept=64)
    out, report = tokenize_examples(examples[:64], tok, cfg, report)
    assert len(out) == 64 and report.kept == 64 and report.num_skipped == 0
    def fits(e):
        p = len(tok(e.prompt)["input_ids"])
        return p <= 192 and p + max(len(tok(r)["input_ids"]) for r in e.responses) + 1 <= 256

    assert report.altered["too_long_truncated"] == sum(not fits(e) for e in examples[:64])
    batch = collate(out, cfg)
    checked = 0
    for i, e in enumerate(examples[:64]):
        if not fits(e):
            assert out[i].length <= 256 and len(out[i].prompt_ids) <= 192
            continue
        for n in range(2):
            row = batch["input_ids"][i, n][batch["attention_mask"][i, n] == 1]
            assert tok.decode(row) == e.prompt + e.responses[n] + "<|endoftext|>"
            assert tok.decode(batch["input_ids"][i, n][batch["loss_mask"][i, n]]) == e.responses[n] + "<|endoftext|>"
        checked += 1
    assert checked > 40


def test_load_tokenized_one_report_for_both_stages(tmp_path):
    import json

    from mojax.data.report import DataError
    from mojax.data.tokenize import load_tokenized

    rows = [{"prompt": "hello", "chosen": "good", "rejected": "bad"},
            {"prompt": "hello", "chosen": "a b c d e f g h i j k l", "rejected": "bad"},
            {"prompt": "hello", "chosen": "", "rejected": "bad"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TokenizeConfig(max_length=8, max_prompt_length=4, overflow="skip")
    out, rep = load_tokenized(tmp_path / "p.jsonl", word_tokenizer(), cfg)
    assert len(out) == 1 and rep.kept == 1
    assert rep.skipped == {"too_long_skipped": 1, "empty_response": 1} and rep.total == 3
    toks = [{"prompt_ids": [1, 5], "response_ids": [[7, 2], [8] * 20]}]
    (tmp_path / "t.jsonl").write_text(json.dumps(toks[0]))
    out, rep = load_tokenized(tmp_path / "t.jsonl", None, TokenizeConfig(max_length=8, max_prompt_length=4))
    assert out[0].response_ids[1].tolist() == [8] * 6 and rep.altered == {"too_long_truncated": 1}
    with pytest.raises(DataError, match="none of 1 records"):
        load_tokenized(tmp_path / "t.jsonl", None, TokenizeConfig(max_length=8, max_prompt_length=4,
                                                                    overflow="skip"))


@settings(max_examples=60, deadline=None)
@given(prompt_len=st.integers(0, 40), resp_lens=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       max_length=st.integers(4, 48), prompt_frac=st.floats(0.05, 0.95), bos=st.booleans())
def test_truncation_invariants(prompt_len, resp_lens, max_length, prompt_frac, bos):
    max_prompt = min(max_length - 1, max(1, int(prompt_frac * max_length)))
    cfg = TokenizeConfig(max_length=max_length, max_prompt_length=max_prompt)
    prompt = ([1] if bos else []) + list(range(100, 100 + prompt_len))
    responses = [list(range(1000 * (n + 1), 1000 * (n + 1) + k)) for n, k in enumerate(resp_lens)]
    e = TokenizedExample(prompt_ids=prompt, response_ids=responses, labels=[[1.0] * len(responses)])
    rep = DataReport(kept=1)
    (out,) = truncate_examples([e], cfg, rep, bos_id=1)
    p = out.prompt_ids.tolist()
    assert out.length <= max_length and len(p) <= max_prompt
    needs_cut = len(prompt) > max_prompt or len(prompt) + max(resp_lens) > max_length
    assert rep.altered.get("too_long_truncated", 0) == int(needs_cut)
    if bos and prompt_len + 1 > max_prompt:
        assert p[0] == 1 and prompt[len(prompt) - (len(p) - 1):] == p[1:]  # BOS + the prompt's end
    else:
        assert prompt[len(prompt) - len(p):] == p  # a suffix of the prompt
    for r, o in zip(responses, out.response_ids):
        assert o.tolist() == r[:len(o)] and len(o) == min(len(r), max_length - len(p))  # a prefix, as long as fits


@pytest.mark.parametrize("overflow,reason", [("truncate", "too_long_truncated"), ("skip", "too_long_skipped")])
def test_truncation_is_reported_at_the_file_line_not_the_kept_index(tmp_path, overflow, reason):
    import json

    from mojax.data.tokenize import load_tokenized

    short = json.dumps({"prompt": "hello", "chosen": "good", "rejected": "bad"})
    long = json.dumps({"prompt": "hello", "chosen": "a b c d e f g h i j k l", "rejected": "bad"})
    # line 7 is the 4th kept example: the report must say line 7 (it said "line 4" before)
    lines = [short, "{broken", short, "", "[1]", short, long]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out, rep = load_tokenized(tmp_path / "p.jsonl", word_tokenizer(),
                              TokenizeConfig(max_length=8, max_prompt_length=4, overflow=overflow))
    loc = rep.samples[reason][0][0]
    assert loc == 7 and "line 7" in rep.summary()
    assert [e.location for e in out] == ([1, 3, 6, 7] if overflow == "truncate" else [1, 3, 6])


class _PickyTokenizer:
    """A tokenizer stand-in that refuses any batch holding the word 'boom' (as fast tokenizers refuse a lone
    surrogate with a TypeError) and encodes each word as its length."""

    eos_token_id = 2
    bos_token_id = None

    def __call__(self, texts, add_special_tokens=False):
        if any("boom" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return {"input_ids": [[3 + len(w) for w in t.split()] for t in texts]}


def test_a_text_the_tokenizer_refuses_costs_one_example():
    examples = [PreferenceExample(prompt=f"q {i}", responses=("good one", "boom" if i == 1 else "bad"),
                                  labels=[[1, 0]], location=10 + i) for i in range(3)]
    report = DataReport(kept=3)
    out, report = tokenize_examples(examples, _PickyTokenizer(), TokenizeConfig(max_length=16, max_prompt_length=8),
                                    report)
    assert [e.location for e in out] == [10, 12] and report.kept == 2
    assert report.skipped == {"tokenizer_error": 1} and report.samples["tokenizer_error"][0][0] == 11
    assert out[0].response_ids[0].tolist() == [7, 6, 2]  # the slow path encodes like the batched one


def test_load_tokenized_files_one_dataset_id_and_report_per_file(tmp_path):
    import json

    from mojax.data.readers import ReaderConfig
    from mojax.data.report import NoUsableDataError
    from mojax.data.tokenize import load_tokenized_files

    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "hello", "chosen": "good", "rejected": "bad"}) + "\n{x\n")
    sharegpt = {"conversations": [{"from": "human", "value": "how are you"}], "chosen": {"from": "gpt", "value": "fine"},
                "rejected": {"from": "gpt", "value": "bad"}}
    (tmp_path / "b.json").write_text(json.dumps([sharegpt, sharegpt]))
    cfg = TokenizeConfig(max_length=32, max_prompt_length=16)
    out, reports = load_tokenized_files([tmp_path / "a.jsonl", tmp_path / "b.json"], word_tokenizer(), cfg,
                                        ReaderConfig(dataset_id=5))
    assert [e.dataset_id for e in out] == [5, 6, 6]  # each file detected on its own
    assert [r.kept for r in reports] == [1, 2] and reports[0].skipped == {"malformed_json": 1}
    assert [r.location for r in reports] == ["line", "record"]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(NoUsableDataError, match=r"empty\.jsonl: no records"):
        load_tokenized_files([tmp_path / "a.jsonl", tmp_path / "empty.jsonl"], word_tokenizer(), cfg)
