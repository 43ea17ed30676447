"""Pairs of the LM experiments (experiments/_lm_data.py): batches, synthetic labelling, concatenation."""

from __future__ import annotations

import numpy as np
import pytest

import experiments._lm_common as L
from mojax.train import DataConfig
from lm_reference import TASK, numpy_rewards



def test_iterate_batches_covers_each_epoch_once():
    data = L.synthetic_pairs(TASK, dimension=1, num_pairs=10, seed=0)
    seen = [b["input_ids"] for b in L.iterate_batches(data, 5, steps=4, seed=0)]
    first_epoch = np.concatenate(seen[:2])
    assert len({x.tobytes() for x in first_epoch}) == 10
    with pytest.raises(ValueError, match="exceeds"):
        next(L.iterate_batches(data, 11, steps=1, seed=0))


def test_synthetic_pairs_reorder_full_rewards_with_the_chosen_response():
    data = L.synthetic_pairs(TASK, dimension=1, num_pairs=300, seed=11)
    assert data.rewards.shape == (300, 2, TASK.num_objectives)
    for e in range(0, 300, 37):
        p = data.prompts[e]
        for n in range(2):
            row = data.arrays["loss_mask"][e, n]
            resp = data.arrays["input_ids"][e, n][row]
            np.testing.assert_allclose(data.rewards[e, n], numpy_rewards(p, resp, TASK), atol=1e-6)
    # Chosen under R_2 (class_b) tends to have more class-B tokens: BT labels follow the true reward.
    margin = data.rewards[:, 0, 1] - data.rewards[:, 1, 1]
    assert np.mean(margin > 0) > 0.7
    np.testing.assert_allclose(data.true_prob[:, 0], 1 / (1 + np.exp(-margin / TASK.temperature)), atol=1e-5)


def test_concat_pairs_pads_and_keeps_every_pair():
    task = TASK
    a = L.synthetic_pairs(task, dimension=0, num_pairs=3, seed=0)
    b = L.pad_width(L.synthetic_pairs(task, dimension=1, num_pairs=2, seed=1), a.width + 8)
    both = L.concat_pairs([a, b])
    assert len(both) == 5 and both.width == a.width + 8
    np.testing.assert_array_equal(both.arrays["input_ids"][:3, :, :a.width], a.arrays["input_ids"])
    assert not both.arrays["attention_mask"][:3, :, a.width:].any()  # the padding is masked
    np.testing.assert_array_equal(both.arrays["input_ids"][3:], b.arrays["input_ids"])
    with pytest.raises(ValueError, match="pad"):
        L.pad_width(b, a.width)


def test_check_real_data_names_the_flag():
    L.check_real_data(DataConfig())  # synthetic: nothing to check
    with pytest.raises(ValueError, match="tokenizer-path"):
        L.check_real_data(DataConfig(data_paths=("a.jsonl",)))
    with pytest.raises(ValueError, match="eval-fraction"):
        L.check_real_data(DataConfig(data_paths=("a.jsonl",), tokenizer_path="tok"))
    with pytest.raises(ValueError, match="at most 1"):
        L.check_real_data(DataConfig(data_paths=("a", "b"), tokenizer_path="tok", eval_fraction=0.2), max_files=1)
    L.check_real_data(DataConfig(data_paths=("a", "b"), tokenizer_path="tok", eval_fraction=0.2), max_files=2)
