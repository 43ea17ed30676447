"""Evaluation of LM policies (experiments/_lm_eval.py) against float64 NumPy re-derivations."""

from __future__ import annotations

import numpy as np
import pytest

import experiments._lm_common as L
from lm_reference import TASK, numpy_rewards
from mojax.data import synthetic_lm



def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_pair_logps_match_numpy_log_softmax_sums(lm_sft):
    model, _, _ = lm_sft
    data = L.synthetic_pairs(TASK, dimension=0, num_pairs=5, seed=3)
    got = L.pair_logps(model, data, batch_size=2)  # chunks of 2 with a repeated filler: order must survive
    ids_all, mask_all = data.arrays["input_ids"], data.arrays["attention_mask"]
    logp_all = _np_log_softmax(model(ids_all, attention_mask=mask_all))  # [E, N, T, V] in one call
    for e in range(len(data)):
        for n in range(2):
            ids, resp = ids_all[e, n], data.arrays["loss_mask"][e, n]
            # Token t of the response is predicted by the logits at t − 1.
            want = sum(logp_all[e, n, t - 1, ids[t]] for t in range(1, len(ids)) if resp[t])
            np.testing.assert_allclose(got[e, n], want, rtol=1e-5, atol=1e-4)
    # Right padding does not change a row's log-prob: the unpadded sequence alone gives the same value.
    row = mask_all[0, 1].astype(bool)
    alone = _np_log_softmax(model(ids_all[0, 1][row][None]))[0]
    ids, resp = ids_all[0, 1][row], data.arrays["loss_mask"][0, 1][row]
    np.testing.assert_allclose(got[0, 1], sum(alone[t - 1, ids[t]] for t in range(1, len(ids)) if resp[t]),
                               rtol=1e-5, atol=1e-4)
    ref = L.with_ref_logps(data, [model, model])
    assert ref.arrays["ref_logps"].shape == (5, 2, 2)
    np.testing.assert_allclose(ref.arrays["ref_logps"][:, 1], got, rtol=1e-5)  # other chunk shape: not bitwise
    batch = ref.batch([0, 2])
    assert batch["ref_logps"].shape == (2, 2, 2)  # [R, B, N]
    assert L.with_ref_logps(data, [model]).batch([0, 2])["ref_logps"].shape == (2, 2)  # R = 1: [B, N]


def test_sample_and_score_agrees_with_numpy_rescoring(lm_sft):
    model, _, _ = lm_sft
    data = L.synthetic_pairs(TASK, dimension=0, num_pairs=40, seed=4)
    responses, rewards = L.sample_and_score(model, data.prompts, TASK, seed=0)
    assert responses.shape == (40, TASK.max_response_length) and rewards.shape == (40, TASK.num_objectives)
    for p, y, r in zip(data.prompts, responses, rewards):
        np.testing.assert_allclose(r, numpy_rewards(p, y, TASK), atol=1e-6)
        eos = np.flatnonzero(y == synthetic_lm.EOS)
        if eos.size:  # nothing but padding after the first EOS
            assert np.all(y[eos[0] + 1:] == synthetic_lm.PAD)
    # The SFT model imitates the base distribution: most samples end with EOS and stay in the content vocabulary.
    ended = np.mean([(y == synthetic_lm.EOS).any() for y in responses])
    assert ended > 0.8
    # Same seed, same model → identical samples (paired comparisons across policies rely on it).
    again, _ = L.sample_and_score(model, data.prompts, TASK, seed=0)
    np.testing.assert_array_equal(again, responses)


def test_win_rate_of_identical_policies_is_half(lm_sft):
    model, _, _ = lm_sft
    data = L.synthetic_pairs(TASK, dimension=0, num_pairs=400, seed=5)
    _, a = L.sample_and_score(model, data.prompts, TASK, seed=1)
    _, b = L.sample_and_score(model, data.prompts, TASK, seed=2)
    np.testing.assert_array_equal(L.win_rates(a, a), 0.5)
    wr = L.win_rates(a, b)
    # Independent samples of one policy: E = 0.5, sd <= 0.5/sqrt(N) = 0.025; 4 sd.
    assert np.all(np.abs(wr - 0.5) < 0.1), wr
    # A hand-checked case: wins, losses and ties.
    np.testing.assert_allclose(L.win_rates(np.array([[1.0, 0.0], [2.0, 1.0]]), np.array([[0.0, 0.0], [3.0, 1.0]])),
                               [0.5, 0.5])
    np.testing.assert_allclose(L.win_rates(np.array([[1.0], [1.0]]), np.array([[0.0], [0.0]])), [1.0])


def test_front_hypervolume_of_a_staircase():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    front, hv = L.front_hypervolume(points, [0.0, 0.0])
    assert len(front) == 3
    assert hv == pytest.approx(3 + 2 + 1)  # unit-wide columns of heights 3, 2, 1
