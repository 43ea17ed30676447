"""A synthetic multi-objective language task with known, conflicting ground-truth rewards.

Experiments use it by default: small enough for a laptop CPU, and the true rewards are known, so a trained policy's
reward vector, a reward model's calibration and a Pareto front can be measured exactly.

Vocabulary (``V = 4 + T + 3·T·C`` for T topics and C tokens per class; 56 with the defaults):
``PAD = 0, BOS = 1, EOS = 2, SEP = 3``, topic markers ``4 … 3+T``, then content tokens in blocks: token
``c0 + t·3C + cls·C + j`` (``c0 = 4 + T``) has topic ``t`` and class ``cls`` ∈ {0: A, 1: B, 2: neutral}.

Prompts: ``[BOS, marker_t, x_1 … x_m, SEP]`` with topic ``t ~ U{0..T−1}``, ``m ~ U{prompt_min_len..prompt_max_len}``
content tokens drawn like response tokens.

Base (SFT) response distribution, a topic-conditioned unigram mixture: length ``n = response_min_len + G`` with
``G ~ Geometric(stop_prob)`` (number of continues), capped at ``response_max_len``; each token independently: topic =
the prompt's with probability ``on_topic_prob``, else uniform over all T topics; class ~ ``class_probs``; index
``j ~ U{0..C−1}``; then EOS.

Ground-truth rewards of a response ``y`` (its tokens before the first EOS, padding excluded; ``n`` = their number,
``[·]`` = count, ``n ∨ 1`` avoids 0/0 for an empty response whose rewards are then 0):

- ``class_a``:  R = [class(y_i) = A] / (n ∨ 1)
- ``class_b``:  R = [class(y_i) = B] / (n ∨ 1)   — competes with ``class_a`` for the same positions (they sum to
  ≤ 1), so the two conflict: under the base distribution corr = −sqrt(pA·pB / ((1−pA)(1−pB))) at fixed n.
- ``topic``:    R = [topic(y_i) = prompt topic] / (n ∨ 1)  (the prompt topic is its marker token; 0 without one)
- ``brevity``:  R = −n / response_max_len

Preferences: for responses y, y' and objective k, ``P(y ≻ y') = σ((R_k(y) − R_k(y'))/temperature)``
(Bradley–Terry); labels are Bernoulli draws, so they are noisy and the true probability is known per pair.
Everything is a pure function of ``(config, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mojax.data.readers import TokenizedExample

__all__ = ["SyntheticLMConfig", "SyntheticPairs", "OBJECTIVES", "true_rewards", "sample_prompts",
           "sample_responses", "bradley_terry_labels", "make_pairs", "make_sft_corpus", "make_lists",
           "make_dimension_pairs", "make_mixture"]

OBJECTIVES = ("class_a", "class_b", "topic", "brevity")
PAD, BOS, EOS, SEP = 0, 1, 2, 3


@dataclass(frozen=True, kw_only=True)
class SyntheticLMConfig:
    """The synthetic language task (module docstring for the exact definitions).

    Attributes:
      num_topics: T.
      tokens_per_class: C content tokens per (topic, class).
      prompt_min_len: fewest content tokens in a prompt.
      prompt_max_len: most content tokens in a prompt.
      response_min_len: shortest response (EOS not counted).
      response_max_len: longest response (EOS not counted).
      stop_prob: per-token probability of stopping once ``response_min_len`` tokens are out.
      on_topic_prob: probability a token follows the prompt's topic.
      class_probs: probabilities of classes A, B, neutral.
      objectives: the K reward functions, from :data:`OBJECTIVES`, in objective order.
      temperature: Bradley–Terry temperature (smaller = less label noise).
      list_label_noise: std of Gaussian noise added to list labels (0 = exact rewards).
    """

    num_topics: int = 4
    tokens_per_class: int = 4
    prompt_min_len: int = 2
    prompt_max_len: int = 6
    response_min_len: int = 2
    response_max_len: int = 16
    stop_prob: float = 0.15
    on_topic_prob: float = 0.7
    class_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    objectives: tuple[str, ...] = ("class_a", "class_b", "topic")
    temperature: float = 0.1
    list_label_noise: float = 0.0

    def __post_init__(self):
        if self.num_topics < 1 or self.tokens_per_class < 1:
            raise ValueError("num_topics and tokens_per_class must be positive")
        if not 1 <= self.prompt_min_len <= self.prompt_max_len:
            raise ValueError("need 1 <= prompt_min_len <= prompt_max_len")
        if not 1 <= self.response_min_len <= self.response_max_len:
            raise ValueError("need 1 <= response_min_len <= response_max_len")
        if not 0 < self.stop_prob <= 1 or not 0 <= self.on_topic_prob <= 1:
            raise ValueError("need 0 < stop_prob <= 1 and 0 <= on_topic_prob <= 1")
        p = np.asarray(self.class_probs, dtype=np.float64)
        if p.shape != (3,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"class_probs must be 3 non-negative numbers summing to 1, got {self.class_probs}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives:
            raise ValueError(f"unknown objectives {bad}; choose from {OBJECTIVES}")
        if self.temperature <= 0 or self.list_label_noise < 0:
            raise ValueError("temperature must be positive and list_label_noise non-negative")

    @property
    def content_start(self) -> int:
        """Id of the first content token."""
        return 4 + self.num_topics

    @property
    def vocab_size(self) -> int:
        """V."""
        return self.content_start + 3 * self.num_topics * self.tokens_per_class

    @property
    def num_objectives(self) -> int:
        """K."""
        return len(self.objectives)

    @property
    def max_prompt_length(self) -> int:
        """Longest prompt in tokens (BOS, marker, content, SEP)."""
        return self.prompt_max_len + 3

    @property
    def max_response_length(self) -> int:
        """Longest response in tokens, EOS included."""
        return self.response_max_len + 1


def _xp(x: Any):
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return np
    import jax.numpy as jnp  # jax arrays and tracers: stay in JAX so the function works under jit
    return jnp


def true_rewards(prompt_ids: Any, response_ids: Any, config: SyntheticLMConfig) -> Any:
    """Ground-truth rewards ``[..., K]`` of responses ``[..., Tr]`` to prompts ``[..., Tp]`` (any padding side).

    NumPy in, NumPy out; JAX in (also traced), JAX out. Response tokens after the first EOS and PAD tokens are
    ignored; non-content tokens (BOS, SEP, markers) count towards the length but to no class or topic.
    """
    xp = _xp(response_ids)
    prompt_ids = xp.asarray(prompt_ids)
    response_ids = xp.asarray(response_ids)
    t, c, c0 = config.num_topics, config.tokens_per_class, config.content_start
    markers = xp.arange(4, 4 + t)
    marker_counts = (prompt_ids[..., :, None] == markers).sum(axis=-2)  # [..., T]
    topic = xp.where(marker_counts.max(axis=-1) > 0, xp.argmax(marker_counts, axis=-1), -1)  # [...]
    after_eos = xp.cumsum(response_ids == EOS, axis=-1) > 0
    valid = ~after_eos & (response_ids != PAD)  # [..., Tr]
    n = valid.sum(axis=-1)
    denom = xp.maximum(n, 1).astype(xp.float32)
    content = valid & (response_ids >= c0)
    offset = response_ids - c0
    tok_topic = offset // (3 * c)
    tok_class = (offset // c) % 3
    out = []
    for name in config.objectives:
        if name == "class_a":
            r = (content & (tok_class == 0)).sum(axis=-1) / denom
        elif name == "class_b":
            r = (content & (tok_class == 1)).sum(axis=-1) / denom
        elif name == "topic":
            r = (content & (tok_topic == topic[..., None])).sum(axis=-1) / denom
        else:  # brevity
            r = -n.astype(xp.float32) / config.response_max_len
        out.append(r.astype(xp.float32))
    return xp.stack(out, axis=-1)


def _content_tokens(rng: np.random.Generator, config: SyntheticLMConfig, topics: np.ndarray, length: int
                    ) -> np.ndarray:
    """[n, length] content tokens following ``topics [n]`` with probability on_topic_prob."""
    n = len(topics)
    on = rng.random((n, length)) < config.on_topic_prob
    tok_topic = np.where(on, topics[:, None], rng.integers(0, config.num_topics, (n, length)))
    cls = rng.choice(3, size=(n, length), p=np.asarray(config.class_probs))
    j = rng.integers(0, config.tokens_per_class, (n, length))
    c = config.tokens_per_class
    return (config.content_start + tok_topic * 3 * c + cls * c + j).astype(np.int32)


def sample_prompts(config: SyntheticLMConfig, rng: np.random.Generator, num: int
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """``num`` prompts (int32 arrays ``[BOS, marker, content…, SEP]``) and their topics ``[num]``."""
    topics = rng.integers(0, config.num_topics, num)
    lengths = rng.integers(config.prompt_min_len, config.prompt_max_len + 1, num)
    body = _content_tokens(rng, config, topics, config.prompt_max_len)
    prompts = [np.concatenate([[BOS, 4 + topics[i]], body[i, :lengths[i]], [SEP]]).astype(np.int32)
               for i in range(num)]
    return prompts, topics


def sample_responses(config: SyntheticLMConfig, rng: np.random.Generator, topics: np.ndarray
                     ) -> list[np.ndarray]:
    """One base-distribution response per topic in ``topics [n]``: int32 arrays ending with EOS."""
    n = len(topics)
    extra = rng.geometric(config.stop_prob, n) - 1  # continues before stopping
    lengths = np.minimum(config.response_min_len + extra, config.response_max_len)
    body = _content_tokens(rng, config, np.asarray(topics), config.response_max_len)
    return [np.concatenate([body[i, :lengths[i]], [EOS]]).astype(np.int32) for i in range(n)]


def bradley_terry_labels(rewards_0: np.ndarray, rewards_1: np.ndarray, temperature: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bradley–Terry draws: ``p = σ((R0 − R1)/temperature)`` and ``y ~ Bernoulli(p)`` (y = 1: response 0 wins).

    Returns ``(y bool, p float64)`` of the rewards' shape.
    """
    z = (np.asarray(rewards_0, np.float64) - np.asarray(rewards_1, np.float64)) / temperature
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow
    return rng.random(p.shape) < p, p


def _pad_stack(seqs: list[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(seqs), length), PAD, dtype=np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def _distinct_pairs(config: SyntheticLMConfig, rng: np.random.Generator, topics: np.ndarray
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    a = sample_responses(config, rng, topics)
    b = sample_responses(config, rng, topics)
    for i in range(len(topics)):  # identical pairs carry no preference: redraw (rare with the defaults)
        while np.array_equal(a[i], b[i]):
            b[i] = sample_responses(config, rng, topics[i:i + 1])[0]
    return a, b


@dataclass(frozen=True, kw_only=True, eq=False)
class SyntheticPairs:
    """Labelled synthetic preference pairs.

    Attributes:
      examples: :class:`TokenizedExample` pairs, labels ``[K, 2]`` (response 0 is the one preferred under
        objective 0: chosen first), ``dataset_id`` set.
      rewards: float32 ``[n, 2, K]`` true rewards of response 0 and 1.
      true_prob: float64 ``[n, K]`` Bradley–Terry probability that response 0 beats response 1 under each objective.
      topics: int ``[n]`` prompt topics.
    """

    examples: list[TokenizedExample]
    rewards: np.ndarray
    true_prob: np.ndarray
    topics: np.ndarray

    def select(self, k: int, *, dataset_id: int | None = None) -> "SyntheticPairs":
        """Pairs labelled by objective ``k`` only (K = 1), reordered so its preferred response comes first."""
        exs, rew, prob = [], [], []
        for ex, r, p in zip(self.examples, self.rewards, self.true_prob):
            swap = ex.labels[k, 1] > ex.labels[k, 0]
            o = [1, 0] if swap else [0, 1]
            exs.append(TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=[ex.response_ids[i] for i in o],
                                        labels=[[1.0, 0.0]], dataset_id=k if dataset_id is None else dataset_id))
            rew.append(r[o][:, k:k + 1])
            prob.append([1.0 - p[k] if swap else p[k]])
        return SyntheticPairs(examples=exs, rewards=np.asarray(rew, np.float32), true_prob=np.asarray(prob),
                              topics=self.topics)


def make_pairs(config: SyntheticLMConfig, *, num_pairs: int, seed: int, dataset_id: int = 0) -> SyntheticPairs:
    """``num_pairs`` prompts with two base-distribution responses, labelled by Bradley–Terry on every objective.

    Labels row k is ``[1, 0]`` if response 0 won the draw for objective k, else ``[0, 1]``; the responses are
    ordered so objective 0's winner is first. The draws of different objectives are independent given the rewards.
    """
    rng = np.random.default_rng(seed)
    prompts, topics = sample_prompts(config, rng, num_pairs)
    a, b = _distinct_pairs(config, rng, topics)
    p_arr = _pad_stack(prompts, config.max_prompt_length)
    ra = true_rewards(p_arr, _pad_stack(a, config.max_response_length), config)
    rb = true_rewards(p_arr, _pad_stack(b, config.max_response_length), config)
    wins, prob = bradley_terry_labels(ra, rb, config.temperature, rng)  # [n, K]
    examples, rewards, probs = [], [], []
    for i in range(num_pairs):
        first_a = bool(wins[i, 0])
        resp = (a[i], b[i]) if first_a else (b[i], a[i])
        w = wins[i] if first_a else ~wins[i]  # did the first response win, per objective
        labels = np.stack([w, ~w], axis=-1).astype(np.float32)  # [K, 2]
        examples.append(TokenizedExample(prompt_ids=prompts[i], response_ids=resp, labels=labels,
                                         dataset_id=dataset_id))
        rewards.append(np.stack([ra[i], rb[i]]) if first_a else np.stack([rb[i], ra[i]]))
        probs.append(prob[i] if first_a else 1.0 - prob[i])
    return SyntheticPairs(examples=examples, rewards=np.asarray(rewards, np.float32), true_prob=np.asarray(probs),
                          topics=topics)


def make_dimension_pairs(config: SyntheticLMConfig, *, num_pairs: int, seed: int) -> list[SyntheticPairs]:
    """One pair set per objective k (independent prompts), labelled by ``R_k`` only (K = 1), ``dataset_id = k``.

    The per-dimension data of SPO's sequential rounds.
    """
    return [make_pairs(config, num_pairs=num_pairs, seed=int(np.random.default_rng([seed, k]).integers(2**31)))
            .select(k, dataset_id=k) for k in range(config.num_objectives)]


def make_mixture(config: SyntheticLMConfig, *, num_pairs_per_dataset: int | tuple[int, ...], seed: int
                 ) -> SyntheticPairs:
    """MORE's multi-dataset mixture: dataset k = pairs labelled by ``R_k`` (K = 1 labels), ``dataset_id = k``.

    ``num_pairs_per_dataset`` may differ per dataset (a tuple of K counts). Returned concatenated in dataset order
    (the pipeline shuffles).
    """
    counts = (num_pairs_per_dataset,) * config.num_objectives if isinstance(num_pairs_per_dataset, int) \
        else tuple(num_pairs_per_dataset)
    if len(counts) != config.num_objectives:
        raise ValueError(f"need {config.num_objectives} dataset sizes, got {len(counts)}")
    parts = [make_pairs(config, num_pairs=n, seed=int(np.random.default_rng([seed, k]).integers(2**31)))
             .select(k, dataset_id=k) for k, n in enumerate(counts)]
    return SyntheticPairs(examples=[e for p in parts for e in p.examples],
                          rewards=np.concatenate([p.rewards for p in parts]),
                          true_prob=np.concatenate([p.true_prob for p in parts]),
                          topics=np.concatenate([p.topics for p in parts]))


def make_sft_corpus(config: SyntheticLMConfig, *, num_examples: int, seed: int) -> list[TokenizedExample]:
    """Unlabelled base-distribution data: one response per prompt (N = 1); labels ``[K, 1]`` hold its true rewards."""
    rng = np.random.default_rng(seed)
    prompts, topics = sample_prompts(config, rng, num_examples)
    responses = sample_responses(config, rng, topics)
    r = true_rewards(_pad_stack(prompts, config.max_prompt_length),
                     _pad_stack(responses, config.max_response_length), config)
    return [TokenizedExample(prompt_ids=p, response_ids=[y], labels=r[i][:, None])
            for i, (p, y) in enumerate(zip(prompts, responses))]


def make_lists(config: SyntheticLMConfig, *, num_lists: int, list_size: int, seed: int
               ) -> tuple[list[TokenizedExample], np.ndarray]:
    """Listwise data: ``list_size`` base responses per prompt, labels ``[K, L]`` = true rewards (+ optional noise).

    Returns ``(examples, rewards [num_lists, K, L])`` with the noiseless rewards.
    """
    if list_size < 2:
        raise ValueError("list_size must be at least 2")
    rng = np.random.default_rng(seed)
    prompts, topics = sample_prompts(config, rng, num_lists)
    resp = [sample_responses(config, rng, topics) for _ in range(list_size)]  # [L][n]
    p_arr = _pad_stack(prompts, config.max_prompt_length)
    rewards = np.stack([true_rewards(p_arr, _pad_stack(r, config.max_response_length), config) for r in resp],
                       axis=-1)  # [n, K, L]
    noisy = rewards + config.list_label_noise * rng.standard_normal(rewards.shape) if config.list_label_noise \
        else rewards
    examples = [TokenizedExample(prompt_ids=prompts[i], response_ids=[resp[l][i] for l in range(list_size)],
                                 labels=noisy[i]) for i in range(num_lists)]
    return examples, rewards.astype(np.float32)
