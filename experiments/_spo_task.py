"""SPO's synthetic task: helpful-vs-harmless structure with slack, on the tokens of :mod:`mojax.data.synthetic_lm`.

The prompts, responses and base (SFT) distribution are the shared synthetic task's (so π_0 is the same cached SFT
decoder as in the other LM experiments); only the two rewards are new. A prompt is **risky** when its topic marker
is one of ``risky_topics`` (half the prompts by default), else **benign**. Of the ``C`` class-A tokens of each topic,
the first ``harmful_tokens`` (index ``j < h``) are *harmful* on risky prompts; the others are *safe*.

Rewards of a response ``y`` to a prompt of topic ``t`` (``n`` = tokens before EOS, ``[·]`` = count, ``n ∨ 1``):

- dimension 1, ``helpful``:  ``R_1 = [class A] / (n ∨ 1)`` on every prompt (the shared task's ``class_a``);
- dimension 2, ``harmless``: ``R_2 = R_1`` on a benign prompt (the dimensions agree), and
  ``R_2 = 1 − [class A with j < h] / (n ∨ 1)`` on a risky prompt.

Both are exact functions of the tokens (:func:`true_rewards`). On risky prompts the two conflict *in the data*: a
base response with more class-A tokens mostly has more harmful ones (correlation ≈ −0.8 at the defaults, measured
by :func:`base_correlations`), so dimension-2 labels there mostly oppose dimension-1 labels; on benign prompts the
labels follow the same reward. They do **not** sum to a constant, and both can be maximised at once:

**Attainable front.** Every reward lies in [0, 1], and the ideal point (1, 1) is attainable (only class-A tokens
on benign prompts, only *safe* class-A tokens on risky ones), so the attainable front is that single point and a
method's distance from it is slack it left. With ``harmful_tokens = tokens_per_class`` there is no safe class-A
token: on risky prompts ``R_1 + R_2 = 1`` exactly, and the front becomes the segment from ``(1, 1 − ρ)`` to
``(1 − ρ, 1)`` (ρ = share of risky prompts), i.e. the old no-slack task restricted to the risky prompts.

Pairs (:func:`make_pairs`) are two base responses to one prompt labelled by Bradley–Terry on one dimension's true
reward (the shared task's temperature), chosen first; ``PairData.rewards [E, 2, 2]`` keeps both dimensions' true
rewards of both responses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from experiments._lm_data import PairData, collate_pairs, synthetic_width
from mojax.data import synthetic_lm
from mojax.data.readers import TokenizedExample
from mojax.data.synthetic_lm import SyntheticLMConfig

__all__ = ["COMPOSITION", "DIMENSIONS", "HHTask", "base_correlations", "composition", "make_pairs", "make_prompts",
           "prompt_topics", "true_rewards"]

DIMENSIONS = ("helpful", "harmless")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HHTask:
    """Which prompts are risky and which class-A tokens are harmful on them (module docstring)."""

    risky_topics: tuple[int, ...] = (0, 1)
    """Topics whose prompts are risky (the others are benign)."""
    harmful_tokens: int = 3
    """Class-A tokens (index ``j < harmful_tokens`` of each topic's ``tokens_per_class``) that are harmful on risky
    prompts; ``tokens_per_class`` leaves no safe class-A token (full conflict on risky prompts, no slack there)."""

    def check(self, base: SyntheticLMConfig) -> None:
        """Raise ``ValueError`` unless this task fits ``base``'s vocabulary."""
        if not self.risky_topics or len(set(self.risky_topics)) != len(self.risky_topics) or not all(
                0 <= t < base.num_topics for t in self.risky_topics):
            raise ValueError(f"risky_topics must be distinct topics in [0, {base.num_topics}), got {self.risky_topics}")
        if not 1 <= self.harmful_tokens <= base.tokens_per_class:
            raise ValueError(f"harmful_tokens must be in [1, {base.tokens_per_class}], got {self.harmful_tokens}")


def prompt_topics(prompts: Sequence[np.ndarray]) -> np.ndarray:
    """Topic of each prompt ``[BOS, marker, ..., SEP]`` from its marker token → ``[N]`` int."""
    return np.asarray([int(p[1]) - 4 for p in prompts], np.int64)


def true_rewards(topics: np.ndarray, responses: np.ndarray, base: SyntheticLMConfig, task: HHTask) -> np.ndarray:
    """``[N, 2]`` float64 (helpful, harmless) of responses ``[N, Tr]`` (EOS/PAD-terminated) to prompts of ``topics``."""
    responses = np.asarray(responses)
    valid = (np.cumsum(responses == synthetic_lm.EOS, axis=-1) == 0) & (responses != synthetic_lm.PAD)
    denom = np.maximum(valid.sum(-1), 1).astype(np.float64)
    offset = responses - base.content_start
    c = base.tokens_per_class
    class_a = valid & (responses >= base.content_start) & ((offset // c) % 3 == 0)
    helpful = class_a.sum(-1) / denom
    harmful = (class_a & (offset % c < task.harmful_tokens)).sum(-1) / denom
    risky = np.isin(np.asarray(topics), task.risky_topics)
    return np.stack([helpful, np.where(risky, 1.0 - harmful, helpful)], axis=-1)


def _pad(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(seqs), length), synthetic_lm.PAD, np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def make_prompts(base: SyntheticLMConfig, *, num: int, seed: int) -> list[np.ndarray]:
    """``num`` held-out prompts of the shared task's distribution (about ``len(risky_topics) / T`` of them risky)."""
    prompts, _ = synthetic_lm.sample_prompts(base, np.random.default_rng(seed), num)
    return prompts


def make_pairs(base: SyntheticLMConfig, task: HHTask, *, dimension: int, num_pairs: int, seed: int) -> PairData:
    """``num_pairs`` base-response pairs labelled by Bradley–Terry on ``DIMENSIONS[dimension]``, chosen first.

    ``labels [E, 1, 2] = [1, 0]``, ``dataset_id = dimension``, ``rewards [E, 2 (chosen, rejected), 2 (dimensions)]``,
    ``true_prob [E, 1]`` (the probability that the chosen response wins under the labelling dimension).
    """
    if dimension not in (0, 1):
        raise ValueError(f"dimension must be 0 (helpful) or 1 (harmless), got {dimension}")
    rng = np.random.default_rng(seed)
    prompts, topics = synthetic_lm.sample_prompts(base, rng, num_pairs)
    a = synthetic_lm.sample_responses(base, rng, topics)
    b = synthetic_lm.sample_responses(base, rng, topics)
    for i in range(num_pairs):  # an identical pair carries no preference: redraw
        while np.array_equal(a[i], b[i]):
            b[i] = synthetic_lm.sample_responses(base, rng, topics[i:i + 1])[0]
    ra = true_rewards(topics, _pad(a, base.max_response_length), base, task)
    rb = true_rewards(topics, _pad(b, base.max_response_length), base, task)
    first_a, prob = synthetic_lm.bradley_terry_labels(ra[:, dimension], rb[:, dimension], base.temperature, rng)
    examples = [TokenizedExample(prompt_ids=prompts[i], response_ids=[a[i], b[i]] if first_a[i] else [b[i], a[i]],
                                 labels=np.array([[1.0, 0.0]], np.float32), dataset_id=dimension)
                for i in range(num_pairs)]
    rewards = np.where(first_a[:, None, None], np.stack([ra, rb], 1), np.stack([rb, ra], 1))
    true_prob = np.where(first_a, prob, 1.0 - prob)[:, None]
    return PairData(arrays=collate_pairs(examples, width=synthetic_width(base), pad_id=synthetic_lm.PAD),
                    prompts=prompts, rewards=rewards.astype(np.float32), true_prob=true_prob)


def base_correlations(base: SyntheticLMConfig, task: HHTask, *, num: int = 4096, seed: int = 0) -> dict[str, float]:
    """Correlation of the two rewards under the base distribution on benign and risky prompts, and the share of
    risky prompts (what the docs quote as the task's conflict)."""
    rng = np.random.default_rng(seed)
    prompts, topics = synthetic_lm.sample_prompts(base, rng, num)
    r = true_rewards(topics, _pad(synthetic_lm.sample_responses(base, rng, topics), base.max_response_length), base,
                     task)
    risky = np.isin(topics, task.risky_topics)
    corr = lambda m: float(np.corrcoef(r[m, 0], r[m, 1])[0, 1])  # noqa: E731
    return {"benign": corr(~risky), "risky": corr(risky), "risky_share": float(risky.mean()),
            "mean_helpful": float(r[:, 0].mean()), "mean_harmless": float(r[:, 1].mean())}


COMPOSITION = ("harmful A", "safe A", "B", "neutral", "other", "length")


def composition(topics: np.ndarray, responses: np.ndarray, base: SyntheticLMConfig, task: HHTask
                ) -> dict[str, dict[str, float]]:
    """What sampled responses are made of, on benign and on risky prompts: the mean share of tokens (before EOS) that
    are class A with ``j < harmful_tokens`` ("harmful A", harmful only on risky prompts), other class A ("safe A"),
    class B, neutral, non-content ("other": BOS/SEP/markers), and the mean length (what moves the rewards)."""
    responses = np.asarray(responses)
    valid = (np.cumsum(responses == synthetic_lm.EOS, axis=-1) == 0) & (responses != synthetic_lm.PAD)
    n = valid.sum(-1)
    denom = np.maximum(n, 1).astype(np.float64)
    offset = responses - base.content_start
    c = base.tokens_per_class
    content = valid & (responses >= base.content_start)
    cls = (offset // c) % 3
    share = {"harmful A": content & (cls == 0) & (offset % c < task.harmful_tokens),
             "safe A": content & (cls == 0) & (offset % c >= task.harmful_tokens),
             "B": content & (cls == 1), "neutral": content & (cls == 2), "other": valid & ~content}
    risky = np.isin(np.asarray(topics), task.risky_topics)
    out = {}
    for part, mask in (("benign", ~risky), ("risky", risky)):
        row = {k: float((v.sum(-1) / denom)[mask].mean()) if mask.any() else float("nan") for k, v in share.items()}
        row["length"] = float(n[mask].mean()) if mask.any() else float("nan")
        out[part] = row
    return out
