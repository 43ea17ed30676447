"""Learning-to-rank objectives: ListNet, listwise DPO, DPO-LS (fixed w), MO-DPO and W/T-COS-DPO for rankers.

A ranker is ``model(features, where=, cond=) -> scores [B, L]``. Ranking batches hold ``features [B, L, F]``,
``where [B, L]`` (valid items), ``labels [B, K, L]`` (one row per objective) and optionally ``example_mask [B]``;
per method also ``ref_scores [B, L]`` (``ref_mode="cached"``), ``weights [B, K]`` (COS-DPO weights drawn on the host,
e.g. by :func:`mojax.simplex.simplex_sampler`) and ``single_diffs [B, K, L]`` (MO-DPO).

Every DPO-type objective trains the correction ``f_θ − f_ref`` (listwise DPO is ListNet on ``β(f_θ − f_ref)``):

- ``ref_mode="model"``: the model is an :class:`mojax.models.AugmentedRanker` ``f = stop_gradient(f_ref) + g_θ``,
  whose correction is exactly ``g_θ = model.delta(...)`` — the frozen base never runs in the step;
- ``ref_mode="cached"``: ``f_θ − batch["ref_scores"]`` (a ranker trained from scratch against cached base scores).

Hyper-parameters that vary across a sweep — β, the cosine penalty μ, the fixed weights w of DPO-LS and MO-DPO — are
the objectives' ``hparams``: traced inputs of the step, so one compiled step serves every weight of a DPO-LS front or
every β of a Prop. 3.1 check. Static choices (label normalisation, reference mode, sampling, objective index) pick
the memoised ``fn``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from mojax import losses as L
from mojax.losses._base import check_positive
from mojax.train.objectives._common import COSDPOSampling, _cos_dpo_core, _count, cached_fn, sample_conditioning
from mojax.train.step import Objective

RANKING_REF_MODES = ("model", "cached")
Batch = Mapping[str, jax.Array]


def _list_where(batch: Batch) -> jax.Array:
    """Valid items ``[B, L]``: ``where`` and, if given, the example mask (a padded example has no valid item)."""
    where = jnp.asarray(batch["where"], bool)
    if "example_mask" in batch:
        where = where & jnp.asarray(batch["example_mask"], bool)[:, None]
    return where


def _check_ref_mode(ref_mode: str) -> None:
    if ref_mode not in RANKING_REF_MODES:
        raise ValueError(f"ranking ref_mode must be one of {RANKING_REF_MODES}, got {ref_mode!r}")


def _check(**values: float) -> None:
    """Reject out-of-range defaults now (inside the step they are traced and the losses cannot check them)."""
    for name, value in values.items():
        check_positive(name, value, allow_zero=name != "beta")


def _weights(weights, num_objectives: int | None = None) -> tuple[float, ...]:
    w = tuple(float(x) for x in weights)
    if len(w) < 1 or (num_objectives is not None and len(w) != num_objectives) or min(w) < 0:
        raise ValueError(f"weights must be a non-negative vector of length K, got {weights}")
    return w


def correction(model, batch: Batch, *, ref_mode: str = "model", cond: jax.Array | None = None,
               where: jax.Array | None = None) -> jax.Array:
    """``f_θ − f_ref`` ``[B, L]`` on the batch's lists (see the module docstring for ``ref_mode``).

    ``cond`` ``[B, C]`` conditions the ranker (COS-DPO's w, or ``[w, d]``); ``where`` defaults to the batch's valid
    items. Padded items score 0.
    """
    _check_ref_mode(ref_mode)
    where = _list_where(batch) if where is None else where
    if ref_mode == "model":
        if not hasattr(model, "delta"):
            raise ValueError("ranking ref_mode='model' needs an AugmentedRanker (a frozen base and a `delta`)")
        return model.delta(batch["features"], where=where, cond=cond)
    if "ref_scores" not in batch:
        raise ValueError("ranking ref_mode='cached' needs batch['ref_scores'] [B, L]")
    scores = model(batch["features"], where=where, cond=cond)
    return jnp.where(where, scores - jnp.asarray(batch["ref_scores"], jnp.float32), 0.0)


def per_objective_dpo(diff: jax.Array, labels: jax.Array, where: jax.Array, beta: jax.Array, *,
                      label_norm: str) -> jax.Array:
    """Listwise DPO of every objective per list ``[B, K]``: ``diff`` ``[B, L]``, ``labels`` ``[B, K, L]``,
    ``beta`` a scalar or ``[B, K]`` (per-objective temperatures); masked lists give 0."""
    beta = jnp.asarray(beta, jnp.float32)
    beta = beta[..., None] if beta.ndim == 2 else beta
    labels = jnp.asarray(labels, jnp.float32)
    return L.listwise_dpo_loss(diff[:, None, :], jnp.zeros((), jnp.float32), labels, beta=beta,
                               where=jnp.broadcast_to(where[:, None, :], labels.shape), label_norm=label_norm,
                               reduce_fn=None)


def _objective_means(per_objective: jax.Array, lists: jax.Array) -> jax.Array:
    count = jnp.maximum(jnp.sum(lists), 1).astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.sum(jnp.where(lists[:, None], per_objective, 0.0), axis=0) / count)


# ----------------------------------------------------------------------------------------------------------------
# ListNet and single-objective listwise DPO.


@cached_fn
def _listnet_fn(label_norm: str, objective_index: int):
    def fn(model, batch, rng, hp):
        del rng, hp
        where = _list_where(batch)
        scores = model(batch["features"], where=where)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listnet_loss(scores, labels, where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return fn


def ltr_listnet_objective(*, label_norm: str = "softmax", objective_index: int = 0) -> Objective:
    """ListNet (COS-DPO eq. 7) on a ranker's scores against ``labels[:, objective_index]`` (a base ranker)."""
    return Objective(fn=_listnet_fn(label_norm, objective_index))


@cached_fn
def _listwise_dpo_fn(label_norm: str, objective_index: int, ref_mode: str, conditioned: bool):
    def fn(model, batch, rng, hp):
        del rng
        where = _list_where(batch)
        cond = jnp.broadcast_to(hp["cond"], (where.shape[0], hp["cond"].shape[0])) if conditioned else None
        diff = correction(model, batch, ref_mode=ref_mode, cond=cond, where=where)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listwise_dpo_loss(diff, jnp.zeros((), jnp.float32), labels, beta=hp["beta"], where=where,
                                   label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return fn


def ltr_listwise_dpo_objective(*, beta: float = 1.0, label_norm: str = "softmax", objective_index: int = 0,
                               ref_mode: str = "model", cond: tuple[float, ...] | None = None) -> Objective:
    """Listwise DPO (ListNet on ``β(f_θ − f_ref)``) on one objective; ``cond`` fixes a conditioning vector.

    Hyper-parameters: ``beta`` and, when given, ``cond`` (so one compiled step serves every fixed conditioning).
    """
    _check(beta=beta)
    _check_ref_mode(ref_mode)
    hparams = {"beta": beta} if cond is None else {"beta": beta, "cond": tuple(float(c) for c in cond)}
    return Objective(fn=_listwise_dpo_fn(label_norm, objective_index, ref_mode, cond is not None), hparams=hparams)


# ----------------------------------------------------------------------------------------------------------------
# Fixed-weight methods: DPO-LS (linear scalarisation) and MO-DPO; w is a traced hyper-parameter.


@cached_fn
def _scalarized_fn(label_norm: str, ref_mode: str):
    def fn(model, batch, rng, hp):
        del rng
        where = _list_where(batch)
        lists = jnp.any(where, axis=-1)
        per_obj = per_objective_dpo(correction(model, batch, ref_mode=ref_mode, where=where), batch["labels"],
                                    where, hp["beta"], label_norm=label_norm)
        if per_obj.shape[-1] != hp["weights"].shape[-1]:
            raise ValueError(f"labels have {per_obj.shape[-1]} objectives, weights {hp['weights'].shape[-1]}")
        loss = L.scalarized_loss(per_obj, hp["weights"], where=lists)
        return loss, {"objective_losses": _objective_means(per_obj, lists), "count": _count(lists)}

    return fn


def ltr_scalarized_dpo_objective(*, weights: tuple[float, ...], beta: float = 1.0, label_norm: str = "softmax",
                                 ref_mode: str = "model") -> Objective:
    """DPO-LS: ``Σ_k w_k ℓ_k`` of the per-objective listwise-DPO losses ``ℓ_k`` on ``labels`` ``[B, K, L]``.

    Hyper-parameters: ``weights`` (w, a K-vector) and ``beta`` — one compiled step serves every weight of a front.
    Metrics: ``objective_losses`` ``[K]``.
    """
    _check(beta=beta)
    _check_ref_mode(ref_mode)
    return Objective(fn=_scalarized_fn(label_norm, ref_mode), hparams={"weights": _weights(weights), "beta": beta})


@cached_fn
def _modpo_fn(label_norm: str, ref_mode: str):
    def fn(model, batch, rng, hp):
        del rng
        where = _list_where(batch)
        w, beta = hp["weights"], hp["beta"]
        k = jnp.argmax(w)
        rewards = beta * jnp.asarray(batch["single_diffs"], jnp.float32)  # [B, K, L]: r_j = β(f_j − f_ref)
        if rewards.shape[1] != w.shape[0]:
            raise ValueError(f"single_diffs have {rewards.shape[1]} models, weights {w.shape[0]}")
        others = jnp.einsum("k,bkl->bl", w, rewards) - w[k] * rewards[:, k]
        scores = (beta * correction(model, batch, ref_mode=ref_mode, where=where) - others) / w[k]
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, k]
        loss = L.listnet_loss(scores, labels, where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return fn


def ltr_modpo_objective(*, weights: tuple[float, ...], beta: float = 1.0, label_norm: str = "softmax",
                        ref_mode: str = "model") -> Objective:
    r"""MO-DPO (Zhou et al. 2023) for lists: with k = argmax w and the single-objective models' implicit rewards
    :math:`r_j = \beta(f_j − f_{ref})` (``batch["single_diffs"]`` = ``f_j − f_ref`` ``[B, K, L]``), ListNet on
    objective k's labels with the scores

    .. math:: s = \frac{1}{w_k}\Big(\beta(f_θ − f_{ref}) − \sum_{j≠k} w_j r_j\Big)

    — the listwise form of :func:`mojax.losses.modpo_loss` (its pairwise margin is this with L = 2). k = argmax w
    keeps 1/w_k ≤ K. Hyper-parameters: ``weights`` (a K-vector) and ``beta``.
    """
    _check(beta=beta)
    _check_ref_mode(ref_mode)
    return Objective(fn=_modpo_fn(label_norm, ref_mode), hparams={"weights": _weights(weights), "beta": beta})


# ----------------------------------------------------------------------------------------------------------------
# W/T-COS-DPO: one model conditioned on w (and the temperature direction d).


@cached_fn
def _cos_dpo_fn(sampling: COSDPOSampling, label_norm: str, ref_mode: str):
    def fn(model, batch, rng, hp):
        where = _list_where(batch)
        b, k = where.shape[0], sampling.num_objectives
        if "weights" in batch:  # drawn on the host: no rejection-sampling loops in the step
            w = jnp.asarray(batch["weights"], jnp.float32)
            direction = jnp.asarray(batch["temperatures"], jnp.float32) if sampling.temperature else None
        else:
            w, direction = sample_conditioning(rng, b, sampling)
        if w.shape != (b, k):
            raise ValueError(f"COS-DPO weights must be [B={b}, K={k}], got {w.shape}")
        cond = w if direction is None else jnp.concatenate([w, direction], axis=-1)
        diff = correction(model, batch, ref_mode=ref_mode, cond=cond, where=where)
        labels = jnp.asarray(batch["labels"], jnp.float32)
        if labels.shape[1] != k:
            raise ValueError(f"labels have {labels.shape[1]} objectives, sampling.num_objectives = {k}")
        return _cos_dpo_core(diff, jnp.zeros_like(diff), labels, w, direction, where, beta=hp["beta"],
                             penalty=hp["penalty"], label_norm=label_norm, per_example=sampling.per_example)

    return fn


def ltr_cos_dpo_objective(*, sampling: COSDPOSampling = COSDPOSampling(), beta: float = 1.0, penalty: float = 0.0,
                          label_norm: str = "softmax", ref_mode: str = "model") -> Objective:
    """W-COS-DPO (eq. 12) / T-COS-DPO (eqs. 15–16) for rankers: the ranker is conditioned on ``c = w`` (or
    ``[w, d]``; its ``cond_dim`` is K or 2K) and minimises ``Σ_k w_k ℓ_k − μ·cos(ℓ⃗, w)`` (eq. 18) of the
    per-objective listwise-DPO losses on ``labels`` ``[B, K, L]``.

    w (and for T-COS-DPO, ``sampling.temperature``, the direction d) is ``batch["weights"]`` ``[B, K]`` (and
    ``batch["temperatures"]``) when the batch has it — drawn on the host, e.g. by :func:`mojax.simplex.simplex_sampler`
    with the same ``per_example`` — else drawn in the step from ``rng`` as ``sampling`` says. T-COS-DPO trains
    objective k at temperature K·β·d_k (served at any β afterwards by Prop. 3.1). ``sampling.per_example`` also
    picks the scalarisation: per list, or of the batch-mean loss vector (one w per step). Hyper-parameters: ``beta``, ``penalty`` (μ). Metrics: ``objective_losses`` ``[K]``,
    ``weighted_loss``, ``cosine``.
    """
    _check(beta=beta, penalty=penalty)
    _check_ref_mode(ref_mode)
    return Objective(fn=_cos_dpo_fn(sampling, label_norm, ref_mode), hparams={"beta": beta, "penalty": penalty})
