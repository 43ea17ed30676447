"""COS-DPO (docs/methods/cos-dpo.md): scalarisation with the cosine penalty, simplex weights, temperature rescaling, MO-DPO.

The conditioned model itself lives in ``mojax.models``; here are the pure pieces of its objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mojax.losses._base import (
    Array,
    ReduceFn,
    as_float,
    check_positive,
    check_same_shape,
    check_where,
    log_sigmoid,
    mask_inputs,
    reduce_masked,
)
from mojax.losses.pairwise import pair_loss, prepare_pairs, preference_metrics

__all__ = [
    "modpo_loss",
    "normalize_temperatures",
    "rescale_temperature",
    "sample_simplex_weights",
    "scalarized_loss",
]


def scalarized_loss(
    per_objective_losses: Array,
    weights: Array,
    *,
    penalty: float = 0.0,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    eps: float = 1e-12,
    return_metrics: bool = False,
):
    r"""Linear scalarisation with the COS-DPO cosine penalty (eq. 18, after Ruchte & Grabocka 2021).

    .. math:: L(\vec\ell, w) = \sum_k w_k \ell_k - \mu \cos(\vec\ell, w), \qquad
              \cos(\vec\ell, w) = \frac{\vec\ell \cdot w}{\lVert\vec\ell\rVert\,\lVert w\rVert}

    The penalty pulls :math:`\vec\ell` towards the ray of :math:`w`; :math:`\mu = 0` is plain linear
    scalarisation (DPO-LS / W-COS-DPO without penalty). Norms are floored at ``sqrt(eps)`` so a zero loss
    vector has a finite gradient.

    Args:
      per_objective_losses: ``[..., K]``. Pass batch-mean losses ``[K]`` for the paper's form (the cosine of
        means), or per-example losses ``[B, K]`` with per-example weights (reduced afterwards by ``reduce_fn``).
      weights: ``[..., K]`` simplex weights (broadcastable).
      penalty: :math:`\mu \ge 0`.
      where: bool ``[...]`` example mask (over the leading axes, not K).
      reduce_fn: over the leading axes (``None`` → ``[...]``); a ``[K]`` input gives a scalar either way.
      return_metrics: also return ``{"weighted_loss", "cosine"}`` (masked means).

    >>> import jax.numpy as jnp
    >>> print(float(scalarized_loss(jnp.array([2.0, 4.0]), jnp.array([0.25, 0.75]))))
    3.5
    """
    check_positive("penalty", penalty, allow_zero=True)
    shape = check_same_shape("scalarized_loss", {"per_objective_losses": per_objective_losses, "weights": weights})
    losses, weights = as_float(per_objective_losses), as_float(weights)
    if len(shape) < 1:
        raise ValueError("per_objective_losses and weights need a trailing objective axis K")
    losses, weights = jnp.broadcast_to(losses, shape), jnp.broadcast_to(weights, shape)
    where = check_where(where, shape[:-1])
    if where is not None:
        losses, weights = mask_inputs(where[..., None], losses, weights)
    weighted = jnp.sum(weights * losses, axis=-1)
    norm_l = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(losses), axis=-1), eps))
    norm_w = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(weights), axis=-1), eps))
    cosine = jnp.sum(losses * weights, axis=-1) / (norm_l * norm_w)
    loss = reduce_masked(weighted - penalty * cosine, where, reduce_fn)
    if return_metrics:
        metrics = {
            "weighted_loss": reduce_masked(jax.lax.stop_gradient(weighted), where),
            "cosine": reduce_masked(jax.lax.stop_gradient(cosine), where),
        }
        return loss, metrics
    return loss


def sample_simplex_weights(rng: Array, shape, num_objectives: int, *, concentration=1.0) -> Array:
    r"""Preference weights :math:`w \sim \mathrm{Dirichlet}(\alpha \mathbf{1}_K)` (W-COS-DPO eq. 12).

    Args:
      rng: a JAX PRNG key.
      shape: leading shape: ``()`` for one w per step (the paper), ``(B,)`` for one per example.
      num_objectives: K ≥ 1.
      concentration: :math:`\alpha > 0`, scalar or ``[K]`` (α = 1 is uniform on the simplex).

    Returns:
      float32 ``[*shape, K]``, non-negative, summing to 1 along the last axis.
    """
    if not isinstance(num_objectives, int) or num_objectives < 1:
        raise ValueError(f"num_objectives must be a positive int, got {num_objectives!r}")
    check_positive("concentration", concentration)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    alpha = jnp.broadcast_to(jnp.asarray(concentration, jnp.float32), (num_objectives,))
    if num_objectives == 1:
        return jnp.ones(shape + (1,), jnp.float32)
    return jax.random.dirichlet(rng, alpha, shape=shape)


def rescale_temperature(scores: Array, ref_scores: Array, beta_from, beta_to) -> Array:
    r"""COS-DPO Prop. 3.1: turn a model trained at temperature β into the one for β'.

    Every COS-DPO loss depends on θ only through :math:`\beta(f_\theta - f_{ref})`, so if :math:`f_\theta`
    minimises the loss at β then

    .. math:: f' = f_{ref} + \frac{\beta}{\beta'}\,(f_\theta - f_{ref})

    minimises it at β'. Works on sequence scores, LTR scores, or token logits relative to reference logits
    (the sequence log-prob of rescaled logits is not the rescaled sequence log-prob, since the log-normaliser
    also changes; rescale whichever level you sample or rank from).

    Args:
      scores, ref_scores: broadcastable arrays :math:`f_\theta, f_{ref}`.
      beta_from: β used in training (> 0, scalar or broadcastable). beta_to: target β' (> 0).

    >>> print(float(rescale_temperature(3.0, 1.0, 0.5, 1.0)))   # 1 + (0.5/1)(3 - 1)
    2.0
    """
    check_positive("beta_from", beta_from)
    check_positive("beta_to", beta_to)
    scores, ref_scores = as_float(scores), as_float(ref_scores)
    return ref_scores + (beta_from / beta_to) * (scores - ref_scores)


def normalize_temperatures(betas: Array) -> tuple[Array, Array]:
    r"""Split per-objective temperatures :math:`\beta \in \mathbb{R}_+^K` into direction and scale (T-COS-DPO).

    By Prop. 3.1 only :math:`d = \beta / \lVert\beta\rVert_1` needs to be a conditioning input; a model
    trained with temperatures :math:`d` serves :math:`\beta = s\,d` through
    ``rescale_temperature(f_d, f_ref, 1.0, s)`` with :math:`s = \lVert\beta\rVert_1`, since
    :math:`\beta_k (f_{ref} + (f_d - f_{ref})/s - f_{ref}) = d_k (f_d - f_{ref})` for every k.

    Args:
      betas: ``[..., K]`` positive temperatures.

    Returns:
      ``(direction [..., K], scale [...])``.
    """
    check_positive("betas", betas)
    betas = as_float(betas)
    scale = jnp.sum(betas, axis=-1)
    return betas / scale[..., None], scale


def modpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    other_reward_margins: Array,
    weights: Array,
    *,
    beta,
    objective_index: int,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""MO-DPO / MODPO (Zhou et al. 2023): objective k trained against the other objectives' implicit rewards.

    .. math:: \ell = -\log\sigma\Big(\frac{1}{w_k}\big(\beta\,\Delta[\log\pi_\theta - \log\pi_{ref}]
              - w_{-k}^\top \Delta r_{-k}\big)\Big)

    where :math:`\Delta r_{-k} = r_{-k}(x, y_w) - r_{-k}(x, y_l)` are the reward margins of the other K − 1
    objectives (e.g. implicit rewards of single-objective DPO models).

    Args:
      chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[...]`` log-probs on
        objective-k preference pairs.
      other_reward_margins: ``[..., K-1]`` margins of the other objectives, in objective order with k removed.
      weights: ``[..., K]`` simplex weights w (broadcastable); :math:`w_k > 0` required.
      beta: temperature. objective_index: k (static int in ``[0, K)``).
      where, reduce_fn: as in :func:`~mojax.losses.dpo_loss`.
      return_metrics: also return :func:`~mojax.losses.preference_metrics` of the pair.

    >>> import jax.numpy as jnp
    >>> # w = (0.5, 0.5), k = 0, margin h = 1, other margin 0: z = (1/0.5)(1·1 - 0) = 2.
    >>> l = modpo_loss(1.0, 0.0, 0.0, 0.0, jnp.array([0.0]), jnp.array([0.5, 0.5]), beta=1.0, objective_index=0)
    >>> print(f"{float(l):.6f}")
    0.126928
    """
    check_positive("beta", beta)
    weights = as_float(weights)
    other = as_float(other_reward_margins)
    k_total = weights.shape[-1]
    if not isinstance(objective_index, int) or not 0 <= objective_index < k_total:
        raise ValueError(f"objective_index must be an int in [0, {k_total}), got {objective_index!r}")
    if other.shape[-1] != k_total - 1:
        raise ValueError(f"other_reward_margins has {other.shape[-1]} objectives, expected K - 1 = {k_total - 1}")
    w_k = weights[..., objective_index]
    w_rest = jnp.delete(weights, objective_index, axis=-1)
    check_positive("weights[..., objective_index]", w_k)
    other_term = jnp.sum(w_rest * other, axis=-1)
    where, (c, r, rc, rr, wk, ot) = prepare_pairs(
        where, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, w_k, other_term,
        names=("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
               "weights[..., objective_index]", "other_reward_margins (objective axis summed)"),
        caller="modpo_loss",
    )
    # Masked entries had w_k zeroed by prepare_pairs; divide by 1 there to stay finite.
    wk_safe = wk if where is None else jnp.where(where, wk, 1.0)
    z = (beta * ((c - rc) - (r - rr)) - ot) / wk_safe
    loss = pair_loss(lambda x: -log_sigmoid(x), z, where=where, reduce_fn=reduce_fn)
    if return_metrics:
        return loss, preference_metrics(c, r, rc, rr, beta=beta, where=where)
    return loss
