r"""Listwise losses (COS-DPO §2.2): ListNet, listwise DPO, LiPO-λ, and a generic pairwise-over-a-list helper.

The list is the last axis ``L``; any leading axes are batch. ``where`` (bool ``[..., L]``) marks valid items:
masked items behave as if their score were :math:`-\infty` and their label 0, and a list with no valid item
contributes 0 with a finite gradient. ``reduce_fn=jnp.mean`` averages over lists with at least one valid item.
"""

from __future__ import annotations

from collections.abc import Callable

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
    masked_log_softmax,
    masked_softmax,
    reduce_masked,
)

__all__ = [
    "LABEL_NORMS",
    "lipo_lambda_loss",
    "listnet_loss",
    "listwise_dpo_loss",
    "normalize_labels",
    "pairwise_list_loss",
    "ranks",
]


def _l1_norm(labels: Array, where: Array | None) -> Array:
    if where is not None:
        labels = jnp.where(where, labels, 0.0)
    total = jnp.sum(labels, axis=-1, keepdims=True)
    # A list whose labels sum to 0 has no target distribution: it contributes 0 rather than NaN.
    return jnp.where(total > 0, labels / jnp.where(total > 0, total, 1.0), 0.0)


#: Label normalisations φ(ψ) of ListNet (COS-DPO eq. 7): ``softmax`` for dense labels, ``l1`` (ψ / Σψ, labels
#: must be non-negative) for sparse or binary ones.
LABEL_NORMS: dict[str, Callable[[Array, Array | None], Array]] = {
    "softmax": masked_softmax,
    "l1": _l1_norm,
}


def _check_into(caller: str, name: str, value, shape: tuple[int, ...]) -> None:
    # An optional per-item array may broadcast into the loss's shape but never enlarge it.
    vshape = tuple(jnp.shape(value))
    try:
        ok = jnp.broadcast_shapes(vshape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{caller}: {name} of shape {list(vshape)} does not broadcast to the lists' shape "
                         f"{list(shape)}")


def normalize_labels(labels: Array, *, where: Array | None = None, label_norm: str = "softmax") -> Array:
    """Target distribution φ(ψ) over the valid items of each list (``[..., L]``, masked items 0)."""
    if label_norm not in LABEL_NORMS:
        raise ValueError(f"unknown label_norm {label_norm!r}; expected one of {sorted(LABEL_NORMS)}")
    return LABEL_NORMS[label_norm](as_float(labels), where)


def _prepare_lists(scores, labels, where, caller):
    shape = check_same_shape(caller, {"scores": scores, "labels": labels})
    if len(shape) < 1:
        raise ValueError(f"{caller}: listwise losses need at least one (list) axis")
    scores, labels = as_float(scores), as_float(labels)
    scores, labels = jnp.broadcast_to(scores, shape), jnp.broadcast_to(labels, shape)
    where = check_where(where, shape)
    scores, labels = mask_inputs(where, scores, labels)
    list_where = None if where is None else jnp.any(where, axis=-1)
    return scores, labels, where, list_where


def listnet_loss(
    scores: Array,
    labels: Array,
    *,
    where: Array | None = None,
    label_norm: str = "softmax",
    weights: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    r"""ListNet cross-entropy (Cao et al. 2007; COS-DPO eq. 7).

    .. math:: \ell = -\sum_{i \in where} w_i\, \varphi(\psi)_i \log \mathrm{softmax}_{where}(s)_i

    Args:
      scores: ``[..., L]`` item scores :math:`s`.
      labels: ``[..., L]`` relevance labels :math:`\psi` (broadcastable).
      where: bool ``[..., L]`` valid items.
      label_norm: ``"softmax"`` or ``"l1"`` (:data:`LABEL_NORMS`).
      weights: optional ``[..., L]`` per-item weights on the cross-entropy terms (broadcastable; ``[..., 1]``
        weights whole lists).
      reduce_fn: over lists; ``None`` → ``[...]`` per-list losses (lists with no valid item give 0).

    >>> import jax.numpy as jnp
    >>> print(f"{float(listnet_loss(jnp.zeros(4), jnp.array([1., 0., 0., 0.]), label_norm='l1')):.6f}")  # log 4
    1.386294
    """
    scores, labels, where, list_where = _prepare_lists(scores, labels, where, "listnet_loss")
    target = normalize_labels(labels, where=where, label_norm=label_norm)
    terms = target * masked_log_softmax(scores, where)
    if weights is not None:
        _check_into("listnet_loss", "weights", weights, terms.shape)
        weights = jnp.broadcast_to(as_float(weights), terms.shape)
        terms = terms * (weights if where is None else jnp.where(where, weights, 0.0))
    return reduce_masked(-jnp.sum(terms, axis=-1), list_where, reduce_fn)


def listwise_dpo_loss(
    logps: Array,
    ref_logps: Array,
    labels: Array,
    *,
    beta,
    where: Array | None = None,
    label_norm: str = "softmax",
    weights: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    r"""Listwise DPO (COS-DPO eq. 8): ListNet on the implicit rewards :math:`s = \beta(f_\theta - f_{ref})`.

    With ``label_norm="l1"``, binary labels and L = 2 this is exactly :func:`~mojax.losses.dpo_loss`:
    :math:`-\log\mathrm{softmax}(s)_w = -\log\sigma(s_w - s_l)`.

    Args:
      logps: ``[..., L]`` policy scores :math:`f_\theta` (sequence log-probs for an LLM, scores for LTR).
      ref_logps: ``[..., L]`` reference scores :math:`f_{ref}`.
      labels: ``[..., L]`` labels :math:`\psi`.
      beta: temperature; a scalar, or an array broadcastable to ``[..., L]`` (e.g. ``[..., K, 1]`` to score K
        objectives at their own temperatures, with ``labels`` ``[..., K, L]`` and ``reduce_fn=None``).
      where, label_norm, weights, reduce_fn: as in :func:`listnet_loss`.
    """
    check_positive("beta", beta)
    shape = check_same_shape("listwise_dpo_loss", {"logps": logps, "ref_logps": ref_logps, "labels": labels})
    logps, ref_logps = as_float(logps), as_float(ref_logps)
    w = check_where(where, shape)
    logps, ref_logps = mask_inputs(w, jnp.broadcast_to(logps, shape), jnp.broadcast_to(ref_logps, shape))
    return listnet_loss(
        beta * (logps - ref_logps), labels, where=w, label_norm=label_norm, weights=weights, reduce_fn=reduce_fn
    )


def ranks(scores: Array, *, where: Array | None = None) -> Array:
    """1-based descending rank of each valid item among the valid items of its list (ties: lower index first).

    Masked items get rank ``L + 1``-ish values that callers must ignore. Not differentiable (integer output).

    >>> import jax.numpy as jnp
    >>> ranks(jnp.array([0.5, 2.0, 0.5, -1.0])).tolist()
    [2, 1, 3, 4]
    """
    scores = as_float(scores)
    where = check_where(where, scores.shape)
    s_i, s_j = scores[..., :, None], scores[..., None, :]
    idx = jnp.arange(scores.shape[-1])
    beats = (s_j > s_i) | ((s_j == s_i) & (idx[None, :] < idx[:, None]))  # [..., i, j]: j ranks above i
    if where is not None:
        beats = beats & where[..., None, :]
    return 1 + jnp.sum(beats, axis=-1)


def pairwise_list_loss(
    pair_fn: Callable[[Array], Array],
    scores: Array,
    labels: Array,
    *,
    where: Array | None = None,
    pair_weights: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    r"""Pairwise loss over a list: :math:`\sum_{i,j:\ \psi_i > \psi_j} \Delta_{ij}\, \text{pair\_fn}(s_i - s_j)`.

    The shared helper behind pairwise ranking losses (cf. rax ``compute_pairwise_loss``): the variant is the
    per-pair function, e.g. ``lambda z: -log_sigmoid(z)`` for RankNet.

    Args:
      pair_fn: maps score differences :math:`s_i - s_j` ``[..., L, L]`` to per-pair losses.
      scores, labels, where: ``[..., L]``; only pairs of valid items with :math:`\psi_i > \psi_j` count.
      pair_weights: optional ``[..., L, L]`` weights :math:`\Delta_{ij}`.
      reduce_fn: over lists (``None`` → ``[...]``).
    """
    scores, labels, where, list_where = _prepare_lists(scores, labels, where, "pairwise_list_loss")
    if pair_weights is not None:
        _check_into("pairwise_list_loss", "pair_weights", pair_weights, scores.shape + scores.shape[-1:])
    diffs = scores[..., :, None] - scores[..., None, :]
    valid = labels[..., :, None] > labels[..., None, :]
    if where is not None:
        valid = valid & where[..., :, None] & where[..., None, :]
    per_pair = pair_fn(diffs)
    if pair_weights is not None:
        per_pair = per_pair * pair_weights
    per_list = jnp.sum(jnp.where(valid, per_pair, 0.0), axis=(-2, -1))
    return reduce_masked(per_list, list_where, reduce_fn)


def lipo_lambda_loss(
    scores: Array,
    labels: Array,
    *,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    r"""LiPO-λ (Liu et al. 2024; docs/methods/cos-dpo.md): lambda-weighted pairwise logistic loss.

    .. math::
        \ell = -\sum_{\psi_i > \psi_j} \Delta_{ij} \log\sigma(s_i - s_j), \quad
        \Delta_{ij} = |G_i - G_j| \cdot \left|\frac{1}{D(\tau_i)} - \frac{1}{D(\tau_j)}\right|,

    with gains :math:`G = 2^\psi - 1`, discounts :math:`D(\tau) = \log_2(1 + \tau)` and :math:`\tau` the
    1-based rank of each item under the stop-gradient scores (:func:`ranks`). For a listwise-DPO variant pass
    ``scores = beta * (logps - ref_logps)``.

    Args:
      scores, labels, where: ``[..., L]``. reduce_fn: over lists.

    >>> import jax.numpy as jnp
    >>> # Two items in the right order: Δ = |1 - 0|·|1/log2(2) - 1/log2(3)|, loss = Δ·log(1 + e^{-1}).
    >>> print(f"{float(lipo_lambda_loss(jnp.array([1.0, 0.0]), jnp.array([1.0, 0.0]))):.6f}")
    0.115616
    """
    scores, labels, where, _ = _prepare_lists(scores, labels, where, "lipo_lambda_loss")
    tau = ranks(jax.lax.stop_gradient(scores), where=where).astype(scores.dtype)
    gain = jnp.exp2(labels) - 1.0
    inv_discount = 1.0 / jnp.log2(1.0 + tau)
    delta = jnp.abs(gain[..., :, None] - gain[..., None, :]) * jnp.abs(
        inv_discount[..., :, None] - inv_discount[..., None, :]
    )
    return pairwise_list_loss(
        lambda z: -log_sigmoid(z), scores, labels, where=where, pair_weights=delta, reduce_fn=reduce_fn
    )
