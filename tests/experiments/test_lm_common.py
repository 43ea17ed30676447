"""Tests of the LM experiment infrastructure (experiments/_lm_common.py) on a tiny decoder and the synthetic task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import experiments._lm_common as L
from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.train.objectives import sft_objective

TASK = SyntheticLMConfig()
# The quick presets' model and SFT (experiments/stable_po.py, spo.py), so one SFT fit serves the whole session.
MODEL = L.ModelConfig(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
SFT = L.SFTConfig(steps=30, batch_size=32, learning_rate=1e-2, warmup_steps=3, num_sequences=256)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "lm_experiment_cache"  # shared with the quick experiment runs
    model, info = L.sft_policy(TASK, MODEL, SFT, cache_dir=cache, progress=False)
    return model, info, cache


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_sft_lowers_held_out_nll_and_cache_reuses_it(sft):
    model, info, cache = sft  # fitted here, or by a quick experiment run earlier in this session
    # Untrained: ≈ log V nats/token (uniform over 56 tokens = 4.03); SFT must get clearly below it.
    assert abs(info["nll_before"] - np.log(TASK.vocab_size)) < 0.2
    assert info["nll_after"] < info["nll_before"] - 0.4
    again, info2 = L.sft_policy(TASK, MODEL, SFT, cache_dir=cache, progress=False)
    assert info2["cached"] and info2["key"] == info["key"]
    jax.tree.map(np.testing.assert_array_equal, _params(again), _params(model))
    assert info2["nll_after"] == pytest.approx(info["nll_after"], abs=1e-6)
    # Any SFT field changes the key (no stale reuse).
    assert L.config_key(TASK, MODEL, dataclasses.replace(SFT, steps=61), None) != info["key"]


def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_pair_logps_match_numpy_log_softmax_sums(sft):
    model, _, _ = sft
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


def _numpy_rewards(prompt: np.ndarray, response: np.ndarray, task: SyntheticLMConfig) -> np.ndarray:
    """Independent re-derivation of the synthetic rewards from the task's definitions (float64)."""
    markers = [t for t in prompt if 4 <= t < 4 + task.num_topics]
    topic = markers[0] - 4 if markers else -1
    toks = []
    for t in response:
        if t == synthetic_lm.EOS:
            break
        if t != synthetic_lm.PAD:
            toks.append(int(t))
    n = max(len(toks), 1)
    c, c0 = task.tokens_per_class, task.content_start
    content = [t - c0 for t in toks if t >= c0]
    out = {"class_a": sum((o // c) % 3 == 0 for o in content) / n,
           "class_b": sum((o // c) % 3 == 1 for o in content) / n,
           "topic": sum(o // (3 * c) == topic for o in content) / n,
           "brevity": -len(toks) / task.response_max_len}
    return np.array([out[k] for k in task.objectives])


def test_sample_and_score_agrees_with_numpy_rescoring(sft):
    model, _, _ = sft
    data = L.synthetic_pairs(TASK, dimension=0, num_pairs=40, seed=4)
    responses, rewards = L.sample_and_score(model, data.prompts, TASK, seed=0)
    assert responses.shape == (40, TASK.max_response_length) and rewards.shape == (40, TASK.num_objectives)
    for p, y, r in zip(data.prompts, responses, rewards):
        np.testing.assert_allclose(r, _numpy_rewards(p, y, TASK), atol=1e-6)
        eos = np.flatnonzero(y == synthetic_lm.EOS)
        if eos.size:  # nothing but padding after the first EOS
            assert np.all(y[eos[0] + 1:] == synthetic_lm.PAD)
    # The SFT model imitates the base distribution: most samples end with EOS and stay in the content vocabulary.
    ended = np.mean([(y == synthetic_lm.EOS).any() for y in responses])
    assert ended > 0.8
    # Same seed, same model → identical samples (paired comparisons across policies rely on it).
    again, _ = L.sample_and_score(model, data.prompts, TASK, seed=0)
    np.testing.assert_array_equal(again, responses)


def test_win_rate_of_identical_policies_is_half(sft):
    model, _, _ = sft
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


def test_train_policy_lowers_loss_and_leaves_the_input_model_alone(sft):
    model, _, _ = sft
    before = _params(model)
    corpus = L.sft_corpus(TASK, num_sequences=128, seed=7)
    cfg = L.TrainConfig(steps=12, batch_size=16, learning_rate=1e-2, warmup_steps=0, eval_every=5)
    objective = sft_objective()
    trained, hist = L.train_policy(model, objective, corpus, cfg, progress=False,
                                   eval_fn=lambda m: {"nll": L.token_nll(m, corpus)})
    assert len(hist.metrics["loss"]) == 12 and np.all(np.isfinite(hist.metrics["loss"]))
    steps, nll = hist.eval_series("nll")
    np.testing.assert_array_equal(steps, [0, 5, 10, 12])
    assert nll[-1] < nll[0]  # training on the corpus lowers its NLL
    jax.tree.map(np.testing.assert_array_equal, _params(model), before)  # donation did not touch the input
    assert hist.metrics["finite"] == [1.0] * 12
    # The same objective object again: the jitted step is reused (no new cache entry) and the run is deterministic.
    size = len(L._STEP_CACHE)
    again, hist2 = L.train_policy(model, objective, corpus, cfg, progress=False)
    assert len(L._STEP_CACHE) == size
    jax.tree.map(np.testing.assert_array_equal, _params(again), _params(trained))
    assert hist2.metrics["loss"] == hist.metrics["loss"]


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
            np.testing.assert_allclose(data.rewards[e, n], _numpy_rewards(p, resp, TASK), atol=1e-6)
    # Chosen under R_2 (class_b) tends to have more class-B tokens: BT labels follow the true reward.
    margin = data.rewards[:, 0, 1] - data.rewards[:, 1, 1]
    assert np.mean(margin > 0) > 0.7
    np.testing.assert_allclose(data.true_prob[:, 0], 1 / (1 + np.exp(-margin / TASK.temperature)), atol=1e-5)


def test_front_hypervolume_of_a_staircase():
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    front, hv = L.front_hypervolume(points, [0.0, 0.0])
    assert len(front) == 3
    assert hv == pytest.approx(3 + 2 + 1)  # unit-wide columns of heights 3, 2, 1


def test_load_params_rejects_a_foreign_checkpoint(tmp_path, sft):
    model, _, _ = sft
    path = L.save_params(model, tmp_path / "p.npz")
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    name = next(k for k, v in stored.items() if v.ndim == 2)
    np.savez(tmp_path / "bad_shape.npz", **{**stored, name: stored[name][:-1]})
    with pytest.raises(ValueError, match="shape"):
        L.load_params(model, tmp_path / "bad_shape.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in stored.items() if k != name})
    with pytest.raises(ValueError, match="missing"):
        L.load_params(model, tmp_path / "missing.npz")


SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def test_real_setup_on_pku_sample_remaps_to_a_compact_vocabulary(tmp_path):
    path = SHARED / "pku-saferlhf-sample" / "alpaca7b-test-first15.jsonl"
    if not path.is_file():
        pytest.skip("shared sample data (../shared/data) not present")
    from mojax.models import load_tokenizer

    tok_dir = SHARED / "gpt2-bpe"
    policy, info, train, held = L.real_setup(path, tokenizer_path=tok_dir, model=MODEL,
                                             sft=dataclasses.replace(SFT, steps=0), objective=1, eval_fraction=0.2,
                                             max_length=64, max_prompt_length=32, cache_dir=tmp_path,
                                             progress=False, compact_vocab=True)
    assert len(train) + len(held) == 15 and len(held) == 3
    vocab = info["vocab"]
    assert policy.config.vocab_size == len(vocab) < 5000  # ~1k distinct GPT-2 ids instead of 50,257
    raw, _ = L.real_pairs(path, load_tokenizer(tok_dir), objective=1, max_length=64, max_prompt_length=32)
    raw_train, _ = L.split_pairs(raw, eval_fraction=0.2, seed=0)
    real = train.arrays["attention_mask"].astype(bool)
    np.testing.assert_array_equal(vocab[train.arrays["input_ids"]][real], raw_train.arrays["input_ids"][real])
    assert np.isfinite(info["nll_before"]) and info["nll_before"] == info["nll_after"]  # steps = 0: no SFT
