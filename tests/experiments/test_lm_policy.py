"""π_0 of the LM experiments (experiments/_lm_policy.py): the SFT cache and real files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import experiments._lm_common as L
from mojax.train import DataConfig
from lm_reference import MODEL, SFT, TASK



SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_sft_lowers_held_out_nll_and_cache_reuses_it(lm_sft):
    model, info, cache = lm_sft  # fitted here, or by a quick experiment run earlier in this session
    # Untrained: ≈ log V nats/token (uniform over 56 tokens = 4.03); SFT must get clearly below it.
    assert abs(info["nll_before"] - np.log(TASK.vocab_size)) < 0.2
    assert info["nll_after"] < info["nll_before"] - 0.4
    again, info2 = L.sft_policy(TASK, MODEL, SFT, cache_dir=cache, progress=False)
    assert info2["cached"] and info2["key"] == info["key"]
    jax.tree.map(np.testing.assert_array_equal, _params(again), _params(model))
    assert info2["nll_after"] == pytest.approx(info["nll_after"], abs=1e-6)
    # Any SFT field changes the key (no stale reuse).
    assert L.config_key(TASK, MODEL, dataclasses.replace(SFT, steps=61), None) != info["key"]


def test_real_policy_on_pku_sample_remaps_to_a_compact_vocabulary(tmp_path):
    path = SHARED / "pku-saferlhf-sample" / "alpaca7b-test-first15.jsonl"
    if not path.is_file():
        pytest.skip("shared sample data (../shared/data) not present")
    from mojax.models import load_tokenizer

    tok_dir = SHARED / "gpt2-bpe"
    data = DataConfig(data_paths=(str(path),), tokenizer_path=str(tok_dir), max_length=64, max_prompt_length=32,
                    eval_fraction=0.2)
    policy, info, [(train, held)] = L.real_policy(data, MODEL, dataclasses.replace(SFT, steps=0), objectives=[1],
                                                  cache_dir=tmp_path, progress=False)
    assert len(train) + len(held) == 15 and len(held) == 3
    vocab = info["vocab"]
    assert policy.config.vocab_size == len(vocab) < 5000  # ~1k distinct GPT-2 ids instead of 50,257
    raw, _ = L.real_pairs(path, load_tokenizer(tok_dir), data, objective=1)
    raw_train, _ = L.split_pairs(raw, eval_fraction=0.2, seed=0)
    real = train.arrays["attention_mask"].astype(bool)
    np.testing.assert_array_equal(vocab[train.arrays["input_ids"]][real], raw_train.arrays["input_ids"][real])
    assert np.isfinite(info["nll_before"]) and info["nll_before"] == info["nll_after"]  # steps = 0: no SFT
    # One file's two label rows as two dimensions (SPO): same split, the label rows differ.
    both = dataclasses.replace(data, data_paths=(str(path), str(path)))
    _, _, splits = L.real_policy(both, MODEL, dataclasses.replace(SFT, steps=0), objectives=[0, 1],
                                 cache_dir=tmp_path, progress=False)
    assert [len(t) for t, _ in splits] == [12, 12]
    assert [p.tolist() for p in splits[0][1].prompts] == [p.tolist() for p in splits[1][1].prompts]
