"""Pairwise preference accuracy and per-dimension win rates (JAX)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["preference_accuracy", "win_rate"]


def _masked_mean(values: jax.Array, where: jax.Array | None, axis) -> jax.Array:
    if where is None:
        return jnp.mean(values, axis=axis)
    weight = jnp.asarray(where, bool)
    weight = jnp.broadcast_to(weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim)), values.shape)
    weight = weight.astype(values.dtype)
    count = jnp.sum(weight, axis=axis)
    return jnp.sum(values * weight, axis=axis) / jnp.where(count > 0, count, 1.0)


def preference_accuracy(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    *,
    where: jax.Array | None = None,
    ties: float = 0.0,
) -> jax.Array:
    """Fraction of pairs whose chosen response out-scores the rejected one.

    .. math:: \\mathrm{acc} = \\frac{1}{N} \\sum_i \\big([r^w_i > r^l_i] + t\\,[r^w_i = r^l_i]\\big)

    with tie credit ``t`` (default 0: a tie is not a correct prediction, i.e. accuracy is ``margin > 0`` as in the
    DPO metrics of docs/methods/dpo-family.md). Rewards may be implicit DPO rewards or reward-model outputs (MORE).

    Args:
      chosen_rewards: ``[...]`` rewards of the preferred responses.
      rejected_rewards: same shape, rewards of the dispreferred responses.
      where: optional boolean mask of the same shape; all masked gives 0.
      ties: credit for exact ties, in [0, 1].

    Returns:
      Scalar accuracy in [0, 1].
    """
    chosen_rewards = jnp.asarray(chosen_rewards)
    rejected_rewards = jnp.asarray(rejected_rewards)
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"reward shapes differ: {chosen_rewards.shape} vs {rejected_rewards.shape}")
    if not 0.0 <= ties <= 1.0:
        raise ValueError(f"ties must lie in [0, 1], got {ties}")
    dtype = jnp.result_type(chosen_rewards.dtype, jnp.float32)
    correct = (chosen_rewards > rejected_rewards).astype(dtype) + ties * (chosen_rewards == rejected_rewards)
    if where is not None:
        where = jnp.broadcast_to(jnp.asarray(where, bool), correct.shape).reshape(-1)
    return _masked_mean(correct.reshape(-1), where, axis=0)


def win_rate(
    scores_a: jax.Array,
    scores_b: jax.Array,
    *,
    ties: float = 0.5,
    where: jax.Array | None = None,
) -> jax.Array:
    """Per-dimension win rate of system A over system B on the same prompts.

    .. math:: \\mathrm{WR}_k = \\frac{1}{N} \\sum_i \\big([s^A_{ik} > s^B_{ik}] + t\\,[s^A_{ik} = s^B_{ik}]\\big)

    where ``s_{ik}`` is the judge's score (e.g. the dimension-k reward model) of the system's response to prompt i
    (SPO evaluation, docs/methods/spo.md). The default tie credit 1/2 makes ``WR(A, B) + WR(B, A) = 1``.

    Args:
      scores_a: ``[N, ...]`` judge scores of A's responses; trailing axes (e.g. K dimensions) are kept.
      scores_b: same shape, for B.
      ties: credit for exact ties, in [0, 1].
      where: optional ``[N]`` (or ``[N, ...]``) boolean mask of prompts to count; all masked gives 0.

    Returns:
      ``[...]`` win rates (scalar for ``[N]`` inputs).
    """
    scores_a = jnp.asarray(scores_a)
    scores_b = jnp.asarray(scores_b)
    if scores_a.shape != scores_b.shape or scores_a.ndim < 1:
        raise ValueError(f"scores must share a shape [N, ...], got {scores_a.shape} and {scores_b.shape}")
    if not 0.0 <= ties <= 1.0:
        raise ValueError(f"ties must lie in [0, 1], got {ties}")
    dtype = jnp.result_type(scores_a.dtype, jnp.float32)
    wins = (scores_a > scores_b).astype(dtype) + ties * (scores_a == scores_b)
    return _masked_mean(wins, where, axis=0)
