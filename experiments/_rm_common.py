"""Reward-model pieces of the MORE experiment: mixture-labelled synthetic datasets, one-head reward models and their
rewards, and the evaluation (pairwise accuracy, ECE, calibration against the true preference probability, the
reliability diagram).

The evaluation is host-side NumPy (float64) on held-out reward margins ``r(y_w) − r(y_l)``; the ECE itself is
:func:`mojax.metrics.expected_calibration_error`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from mojax.data import synthetic_lm
from mojax.data.readers import TokenizedExample
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.metrics import expected_calibration_error
from mojax.models import RewardModel

__all__ = [
    "make_reward_model",
    "mixture_names",
    "pair_rewards",
    "pairwise_ece",
    "plot_reliability",
    "reliability_bins",
    "score_predictions",
    "sigmoid",
    "synthetic_datasets",
]


# ----------------------------------------------------------------------------------------------------------------
# Datasets and reward models
# ----------------------------------------------------------------------------------------------------------------


def mixture_names(mixtures: Sequence[Sequence[float]]) -> list[str]:
    """Readable dataset names, e.g. ``"0.5 topic + 0.5 class_a"`` (nonzero weights of :data:`OBJECTIVES`)."""
    return [" + ".join(f"{w:g} {n}" if w != 1 else n for w, n in zip(mix, synthetic_lm.OBJECTIVES) if w)
            for mix in mixtures]


def synthetic_datasets(task: SyntheticLMConfig, mixtures: Sequence[Sequence[float]], *, num_pairs: int, seed: int
                       ) -> tuple[lm.PairData, np.ndarray]:
    """K labelled datasets, concatenated: dataset k = base pairs labelled by Bradley–Terry on ``R^(k) = m_k · R``.

    ``R`` = every true reward of :data:`mojax.data.synthetic_lm.OBJECTIVES` (class_a, class_b, topic, brevity),
    ``m_k = mixtures[k]``; independent prompts per dataset; ``P(y_0 ≻ y_1) = σ((R^(k)(y_0) − R^(k)(y_1))/τ)``.
    Chosen first, ``dataset_id = k``, ``true_prob [E, 1]`` = the BT probability of the chosen response.

    Returns:
      ``(data, true_margin [E])`` with ``true_margin = R^(k)(y_w) − R^(k)(y_l)``.
    """
    full = dataclasses.replace(task, objectives=synthetic_lm.OBJECTIVES)
    examples, true_prob, margins, rewards = [], [], [], []
    for k, mix in enumerate(mixtures):
        pairs = synthetic_lm.make_pairs(full, num_pairs=num_pairs,
                                        seed=int(np.random.default_rng([seed, k]).integers(2**31)))
        r = pairs.rewards.astype(np.float64) @ np.asarray(mix, np.float64)  # [n, 2]
        wins, prob = synthetic_lm.bradley_terry_labels(r[:, 0], r[:, 1], task.temperature,
                                                       np.random.default_rng([seed, k, 1]))
        for i, ex in enumerate(pairs.examples):
            o = [0, 1] if wins[i] else [1, 0]
            examples.append(TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=[ex.response_ids[j] for j in o],
                                             labels=np.array([[1.0, 0.0]], np.float32), dataset_id=k))
            true_prob.append(prob[i] if wins[i] else 1.0 - prob[i])
            margins.append(r[i, o[0]] - r[i, o[1]])
            rewards.append(pairs.rewards[i][o])
    arrays = lm.collate_pairs(examples, width=lm.synthetic_width(task), pad_id=synthetic_lm.PAD)
    data = lm.PairData(arrays=arrays, prompts=[ex.prompt_ids for ex in examples],
                       rewards=np.asarray(rewards, np.float32), true_prob=np.asarray(true_prob)[:, None])
    return data, np.asarray(margins)


def make_reward_model(backbone: nnx.Module, *, seed: int) -> RewardModel:
    """A one-head :class:`RewardModel` on a copy of ``backbone`` (the head: N(0, 0.02²), transformers' init)."""
    return RewardModel(lm.copy_model(backbone), 1, d_model=backbone.config.d_model, rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rewards_jit(graphdef, state, input_ids, attention_mask):
    return nnx.merge(graphdef, state)(input_ids, attention_mask=attention_mask)[..., 0]


def pair_rewards(model: RewardModel, data: lm.PairData, *, batch_size: int = 256) -> np.ndarray:
    """Rewards ``[E, 2]`` of every response of ``data`` (chunks padded by repetition: one compiled shape)."""
    graphdef, state = nnx.split(model)
    n, bs = len(data), min(batch_size, len(data))
    out = []
    for start in range(0, n, bs):
        index = np.arange(start, start + bs) % n
        r = _rewards_jit(graphdef, state, data.arrays["input_ids"][index], data.arrays["attention_mask"][index])
        out.append(np.asarray(r)[: min(bs, n - start)])
    return np.concatenate(out).astype(np.float64)



# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------



def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) in float64 without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def pairwise_ece(prob_chosen: np.ndarray, *, num_bins: int = 10) -> float:
    """Classification-style ECE of pairwise predictions (Guo et al. 2017), via
    :func:`mojax.metrics.expected_calibration_error`.

    .. math:: \\mathrm{ECE} = \\sum_m \\frac{|B_m|}{N}\\,|\\mathrm{acc}(B_m) - \\mathrm{conf}(B_m)|

    with confidence ``c = max(p, 1 − p)`` of the predicted winner and correctness ``[p > ½]`` (``p = ½`` counts as
    half right), ``num_bins`` equal-width bins of ``c`` over [0, 1] (right-closed; bins below ½ stay empty). The
    labelled chosen response is always first here, so the ``p``-vs-label form would compare every bin with 1.

    Args:
      prob_chosen: ``[N]`` predicted ``P(chosen ≻ rejected) = σ(r_w − r_l)``.
    """
    p = np.asarray(prob_chosen, np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"prob_chosen must be a non-empty 1-D array, got shape {p.shape}")
    conf = np.maximum(p, 1.0 - p)
    correct = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
    return float(expected_calibration_error(conf.astype(np.float32), correct.astype(np.float32), num_bins=num_bins))


def reliability_bins(prob_chosen: np.ndarray, true_prob: np.ndarray, *, num_bins: int = 10) -> dict[str, np.ndarray]:
    """Predicted vs true preference probability, both orientations of every pair (so bins cover [0, 1]).

    Returns per bin of the predicted ``p``: ``count``, ``predicted`` (mean p), ``true`` (mean of the true
    ``q = σ(ΔR/τ)``), ``observed`` (frequency of the labelled winner), and ``error`` = Σ |B|/N·|predicted − true|
    (a true-probability ECE: 0 iff the reward model's probabilities equal the labelling process's in every bin).
    """
    p = np.asarray(prob_chosen, np.float64)
    q = np.asarray(true_prob, np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"prob_chosen and true_prob must be equal-length 1-D arrays, got {p.shape}, {q.shape}")
    pp, qq = np.concatenate([p, 1 - p]), np.concatenate([q, 1 - q])
    obs = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    bins = np.clip(np.floor(pp * num_bins).astype(int), 0, num_bins - 1)
    out = {name: np.full(num_bins, np.nan) for name in ("predicted", "true", "observed")}
    out["count"] = np.bincount(bins, minlength=num_bins)
    err = 0.0
    for m in range(num_bins):
        sel = bins == m
        if sel.any():
            out["predicted"][m], out["true"][m], out["observed"][m] = pp[sel].mean(), qq[sel].mean(), obs[sel].mean()
            err += sel.sum() / pp.size * abs(out["predicted"][m] - out["true"][m])
    out["error"] = np.float64(err)
    return out


def score_predictions(margin: np.ndarray, *, ece_bins: Sequence[int], true_prob: np.ndarray | None,
                      true_margin: np.ndarray | None) -> dict[str, float]:
    """Accuracy, ECEs and (given the truth) true-probability calibration of reward margins ``r_w − r_l`` ``[N]``."""
    margin = np.asarray(margin, np.float64)
    p = sigmoid(margin)
    out = {"num_pairs": int(margin.size),
           "accuracy": float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))}
    for m in ece_bins:
        out[f"ece_{m}"] = pairwise_ece(p, num_bins=m)
    if true_prob is not None:
        q = np.asarray(true_prob, np.float64)
        out["true_prob_mae"] = float(np.mean(np.abs(p - q)))
        out["true_prob_ece"] = float(reliability_bins(p, q, num_bins=ece_bins[0])["error"])
    if true_margin is not None:
        strict = true_margin != 0
        out["true_order_accuracy"] = float(np.mean(np.sign(margin[strict]) == np.sign(true_margin[strict])))
    return out



def plot_reliability(path: Path, rewards: dict[str, np.ndarray], true_prob: np.ndarray, *, num_bins: int) -> Path:
    """Reliability diagram per method (``rewards``: display name → held-out rewards ``[E, 2]``): mean true
    probability q and labelled-winner frequency per bin of the predicted p."""
    fig, axes = plt.subplots(1, len(rewards), figsize=(3.6 * len(rewards), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], rewards.items()):
        b = reliability_bins(sigmoid(r[:, 0] - r[:, 1]), true_prob, num_bins=num_bins)
        ok = b["count"] > 0
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        ax.plot(b["predicted"][ok], b["true"][ok], "o-", label="true q = σ(ΔR/τ)")
        ax.plot(b["predicted"][ok], b["observed"][ok], "s:", ms=3, label="observed label freq.")
        ax.set_title(f"{name} (err {float(b['error']):.3f})", fontsize=9)
        ax.set_xlabel("predicted p = σ(Δr)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("probability")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


