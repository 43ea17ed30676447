"""Tests of mojax.data.synthetic_lm against loop re-derivations and the sampling distributions' closed forms."""

import numpy as np
import pytest

from mojax.data.synthetic_lm import (BOS, EOS, PAD, SEP, SyntheticLMConfig, bradley_terry_labels,
                                     make_dimension_pairs, make_lists, make_mixture, make_pairs, make_sft_corpus,
                                     sample_prompts, sample_responses, true_rewards)

CFG = SyntheticLMConfig(objectives=("class_a", "class_b", "topic", "brevity"))


def reference_rewards(prompt, response, cfg):
    """Token-by-token re-derivation of the documented reward functions."""
    c0, c = cfg.content_start, cfg.tokens_per_class
    markers = [tok - 4 for tok in prompt if 4 <= tok < 4 + cfg.num_topics]
    topic = max(set(markers), key=lambda t: (markers.count(t), -t)) if markers else -1
    tokens = []
    for tok in response:
        if tok == EOS:
            break
        if tok != PAD:
            tokens.append(int(tok))
    n = len(tokens)
    content = [t - c0 for t in tokens if t >= c0]
    a = sum((t // c) % 3 == 0 for t in content)
    b = sum((t // c) % 3 == 1 for t in content)
    on = sum(t // (3 * c) == topic for t in content)
    vals = {"class_a": a / max(n, 1), "class_b": b / max(n, 1), "topic": on / max(n, 1),
            "brevity": -n / cfg.response_max_len}
    return [vals[o] for o in cfg.objectives]


def test_vocabulary_layout():
    assert (PAD, BOS, EOS, SEP) == (0, 1, 2, 3)
    assert CFG.content_start == 8 and CFG.vocab_size == 8 + 3 * 4 * 4
    prompts, topics = sample_prompts(CFG, np.random.default_rng(0), 50)
    for p, t in zip(prompts, topics):
        assert p[0] == BOS and p[1] == 4 + t and p[-1] == SEP
        assert CFG.prompt_min_len <= len(p) - 3 <= CFG.prompt_max_len
        assert np.all(p[2:-1] >= CFG.content_start) and np.all(p < CFG.vocab_size)


def test_true_rewards_match_reference_on_arbitrary_token_sequences():
    rng = np.random.default_rng(1)
    n = 300
    prompts = rng.integers(0, CFG.vocab_size, (n, 7))
    prompts[:, 1] = rng.integers(4, 8, n)
    prompts[:, [0, 2, 3, 4, 5, 6]] = np.where(prompts[:, [0, 2, 3, 4, 5, 6]] < 8, 0,
                                              prompts[:, [0, 2, 3, 4, 5, 6]])  # one marker per prompt...
    prompts[:20, 1] = PAD  # ...or none
    responses = rng.integers(0, CFG.vocab_size, (n, 12))  # EOS, PAD, BOS, markers anywhere
    responses[:30] = PAD  # empty responses
    got = true_rewards(prompts, responses, CFG)
    want = np.array([reference_rewards(p.tolist(), r.tolist(), CFG) for p, r in zip(prompts, responses)])
    assert got.shape == (n, 4) and isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.all(got[:30] == 0) and np.all(got[:20, 2] == 0)


def test_true_rewards_in_jax_under_jit_match_numpy():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    prompts = rng.integers(0, CFG.vocab_size, (3, 5, 8))  # arbitrary leading axes
    responses = rng.integers(0, CFG.vocab_size, (3, 5, 10))
    out = jax.jit(lambda p, r: true_rewards(p, r, CFG))(jnp.asarray(prompts), jnp.asarray(responses))
    np.testing.assert_allclose(np.asarray(out), true_rewards(prompts, responses, CFG), rtol=1e-6)


def test_base_distribution_moments():
    cfg = SyntheticLMConfig()
    rng = np.random.default_rng(3)
    topics = rng.integers(0, cfg.num_topics, 8000)
    resp = sample_responses(cfg, rng, topics)
    lengths = np.array([len(r) - 1 for r in resp])
    assert all(r[-1] == EOS and EOS not in r[:-1] for r in resp[:200])
    # E[min(min_len + G, max_len)], G ~ Geometric(stop_prob) − 1 on {0, 1, …}
    g = np.arange(200)
    pg = cfg.stop_prob * (1 - cfg.stop_prob) ** g
    mean = np.sum(pg * np.minimum(cfg.response_min_len + g, cfg.response_max_len))
    sd = np.sqrt(np.sum(pg * np.minimum(cfg.response_min_len + g, cfg.response_max_len) ** 2) - mean ** 2)
    assert abs(lengths.mean() - mean) < 5 * sd / np.sqrt(len(lengths))
    # every token is on the prompt's topic with probability on_topic_prob + (1 − on_topic_prob)/T
    prompts = np.zeros((len(topics), 3), np.int32)
    prompts[:, 1] = 4 + topics
    body = np.full((len(resp), cfg.max_response_length), PAD)
    for i, r in enumerate(resp):
        body[i, :len(r)] = r
    cfg3 = SyntheticLMConfig(objectives=("topic",))
    on = (true_rewards(prompts, body, cfg3)[:, 0] * lengths).sum() / lengths.sum()
    q = cfg.on_topic_prob + (1 - cfg.on_topic_prob) / cfg.num_topics
    assert abs(on - q) < 5 * np.sqrt(q * (1 - q) / lengths.sum())


def test_class_objectives_conflict():
    pairs = make_pairs(SyntheticLMConfig(), num_pairs=3000, seed=4)
    r = pairs.rewards.reshape(-1, 3)
    corr = np.corrcoef(r.T)
    # class fractions of a multinomial: corr = −sqrt(pA pB / ((1 − pA)(1 − pB))) = −0.5 for equal class probs
    n = len(r)
    assert abs(corr[0, 1] + 0.5) < 5 * (1 - 0.25) / np.sqrt(n)
    assert corr[0, 1] < -0.4


def z_score(wins, probs):
    return (wins - probs).sum() / np.sqrt((probs * (1 - probs)).sum())


def test_bradley_terry_label_frequencies_match_probabilities():
    rng = np.random.default_rng(5)
    r0, r1 = rng.random(40000), rng.random(40000)
    wins, p = bradley_terry_labels(r0, r1, 0.2, rng)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(r0 - r1) / 0.2)), rtol=1e-12)
    assert abs(z_score(wins, p)) < 4.5
    edges = np.linspace(0, 1, 11)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (p >= lo) & (p < hi)
        if m.sum() > 100:
            se = np.sqrt((p[m] * (1 - p[m])).mean() / m.sum())
            assert abs(wins[m].mean() - p[m].mean()) < 4.5 * se + 1e-9


def test_pairs_labels_probabilities_and_rewards_are_consistent():
    cfg = SyntheticLMConfig(temperature=0.2)
    pairs = make_pairs(cfg, num_pairs=4000, seed=6)
    labels = np.stack([e.labels for e in pairs.examples])  # [n, K, 2]
    assert np.all(labels[:, 0] == [1, 0])  # chosen first under objective 0
    assert np.all(labels.sum(-1) == 1)
    d = pairs.rewards[:, 0] - pairs.rewards[:, 1]  # [n, K]
    np.testing.assert_allclose(pairs.true_prob, 1 / (1 + np.exp(-d / cfg.temperature)), rtol=1e-5)
    for e, r in zip(pairs.examples[:50], pairs.rewards[:50]):
        for n in range(2):
            np.testing.assert_allclose(true_rewards(e.prompt_ids, e.response_ids[n], cfg), r[n], rtol=1e-6)
        assert not np.array_equal(e.response_ids[0], e.response_ids[1])
    # objectives k ≥ 1 are drawn independently of the ordering: their label frequencies match the true probabilities
    for k in (1, 2):
        assert abs(z_score(labels[:, k, 0], pairs.true_prob[:, k])) < 4.5
    # the chosen response wins objective 0 at least as often as the BT probability says it should have
    assert pairs.true_prob[:, 0].mean() > 0.5


def test_pure_function_of_seed():
    a = make_pairs(SyntheticLMConfig(), num_pairs=20, seed=7)
    b = make_pairs(SyntheticLMConfig(), num_pairs=20, seed=7)
    c = make_pairs(SyntheticLMConfig(), num_pairs=20, seed=8)
    same = all(np.array_equal(x.prompt_ids, y.prompt_ids) and np.array_equal(x.labels, y.labels) and
               all(np.array_equal(u, v) for u, v in zip(x.response_ids, y.response_ids))
               for x, y in zip(a.examples, b.examples))
    assert same and not np.array_equal(a.rewards, c.rewards)


def test_dimension_pairs_and_mixture():
    cfg = SyntheticLMConfig()
    dims = make_dimension_pairs(cfg, num_pairs=200, seed=0)
    assert len(dims) == 3
    for k, d in enumerate(dims):
        assert all(e.dataset_id == k and e.labels.tolist() == [[1, 0]] for e in d.examples)
        np.testing.assert_allclose(d.true_prob[:, 0],
                                   1 / (1 + np.exp(-(d.rewards[:, 0, 0] - d.rewards[:, 1, 0]) / cfg.temperature)),
                                   rtol=1e-5)
        # pairs labelled by R_k put the higher-R_k response first far more often than not
        assert (d.rewards[:, 0, 0] > d.rewards[:, 1, 0]).mean() > 0.7
    mix = make_mixture(cfg, num_pairs_per_dataset=(30, 10, 20), seed=1)
    ids = [e.dataset_id for e in mix.examples]
    assert ids == [0] * 30 + [1] * 10 + [2] * 20 and mix.rewards.shape == (60, 2, 1)
    with pytest.raises(ValueError, match="dataset sizes"):
        make_mixture(cfg, num_pairs_per_dataset=(1, 2), seed=0)


def test_sft_corpus_and_lists():
    cfg = SyntheticLMConfig(list_label_noise=0.0)
    sft = make_sft_corpus(cfg, num_examples=30, seed=0)
    for e in sft:
        assert len(e.response_ids) == 1 and e.labels.shape == (3, 1)
        np.testing.assert_allclose(e.labels[:, 0], true_rewards(e.prompt_ids, e.response_ids[0], cfg), rtol=1e-6)
    lists, rewards = make_lists(cfg, num_lists=20, list_size=5, seed=0)
    assert rewards.shape == (20, 3, 5) and all(len(e.response_ids) == 5 for e in lists)
    for e, r in zip(lists, rewards):
        np.testing.assert_array_equal(e.labels, r)
        for n in range(5):
            np.testing.assert_allclose(true_rewards(e.prompt_ids, e.response_ids[n], cfg), r[:, n], rtol=1e-6)
    noisy, rewards2 = make_lists(SyntheticLMConfig(list_label_noise=0.3), num_lists=200, list_size=5, seed=0)
    resid = np.stack([e.labels for e in noisy]) - rewards2
    assert abs(resid.std() - 0.3) < 0.02


def test_config_validation():
    with pytest.raises(ValueError, match="unknown objectives"):
        SyntheticLMConfig(objectives=("class_c",))
    with pytest.raises(ValueError, match="class_probs"):
        SyntheticLMConfig(class_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        SyntheticLMConfig(temperature=0.0)
