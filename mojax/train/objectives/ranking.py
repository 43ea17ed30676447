"""Learning-to-rank objectives (rankers: features [B, L, F], where [B, L], labels [B, K, L])."""

from __future__ import annotations

import jax.numpy as jnp

from mojax import losses as L
from mojax.train.objectives._common import COSDPOSampling, _cos_dpo_core, _count, cached_fn, sample_conditioning
from mojax.train.step import Objective


def _ranker_reference(model, batch, ref_mode):
    if ref_mode == "cached":
        if "ref_scores" not in batch:
            raise ValueError("ranking ref_mode='cached' needs batch['ref_scores'] [B, L]")
        return jnp.asarray(batch["ref_scores"], jnp.float32)
    if ref_mode == "model":  # an AugmentedRanker carries its frozen base
        return model.reference_scores(batch["features"], where=batch["where"])
    raise ValueError(f"ranking ref_mode must be 'cached' or 'model', got {ref_mode!r}")


def _list_where(batch):
    where = jnp.asarray(batch["where"], bool)
    if "example_mask" in batch:
        where = where & jnp.asarray(batch["example_mask"], bool)[:, None]
    return where


@cached_fn
def _listnet_fn(label_norm: str, objective_index: int):
    def fn(model, batch, rng, hp):
        where = _list_where(batch)
        scores = model(batch["features"], where=where)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listnet_loss(scores, labels, where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return fn


def ltr_listnet_objective(*, label_norm: str = "softmax", objective_index: int = 0) -> Objective:
    """ListNet (COS-DPO eq. 7) on a ranker's scores against ``labels[:, objective_index]``. No hyper-parameters."""
    return Objective(fn=_listnet_fn(label_norm, objective_index))


@cached_fn
def _ltr_cos_dpo_fn(sampling: COSDPOSampling, label_norm: str, ref_mode: str):
    def fn(model, batch, rng, hp):
        where = _list_where(batch)
        b = where.shape[0]
        w, direction = sample_conditioning(rng, b, sampling)
        cond = w if direction is None else jnp.concatenate([w, direction], axis=-1)
        scores = model(batch["features"], where=where, cond=cond)
        ref = _ranker_reference(model, batch, ref_mode)
        labels = jnp.asarray(batch["labels"], jnp.float32)
        return _cos_dpo_core(scores, ref, labels, w, direction, where, beta=hp["beta"], penalty=hp["penalty"],
                             label_norm=label_norm, per_example=sampling.per_example)

    return fn


def ltr_cos_dpo_objective(*, sampling: COSDPOSampling = COSDPOSampling(), beta: float = 1.0, penalty: float = 0.0,
                          label_norm: str = "softmax", ref_mode: str = "model") -> Objective:
    """W/T-COS-DPO for rankers: ``model(features, where=, cond=c)`` with ``c = w`` or ``[w, d]`` (the ranker's
    ``cond_dim`` must be K or 2K); per-objective listwise-DPO losses on ``labels`` ``[B, K, L]``, scalarised with the
    cosine penalty. Reference scores from an :class:`mojax.models.AugmentedRanker`'s base (``"model"``) or
    ``batch["ref_scores"]`` (``"cached"``). Hyper-parameters: ``beta``, ``penalty``.
    """
    return Objective(fn=_ltr_cos_dpo_fn(sampling, label_norm, ref_mode), hparams={"beta": beta, "penalty": penalty})


@cached_fn
def _ltr_listwise_fn(label_norm: str, objective_index: int, ref_mode: str, conditioned: bool):
    def fn(model, batch, rng, hp):
        where = _list_where(batch)
        kwargs = {"cond": jnp.broadcast_to(hp["cond"], (where.shape[0], hp["cond"].shape[0]))} if conditioned else {}
        scores = model(batch["features"], where=where, **kwargs)
        ref = _ranker_reference(model, batch, ref_mode)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listwise_dpo_loss(scores, ref, labels, beta=hp["beta"], where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return fn


def ltr_listwise_dpo_objective(*, beta: float = 1.0, label_norm: str = "softmax", objective_index: int = 0,
                               ref_mode: str = "model", cond: tuple[float, ...] | None = None) -> Objective:
    """Listwise DPO for a ranker on one objective (a fixed-w DPO-LS run when ``cond`` fixes a conditioning vector).

    Hyper-parameters: ``beta`` and, when given, ``cond`` (so one compiled step serves every fixed w).
    """
    hparams = {"beta": beta} if cond is None else {"beta": beta, "cond": tuple(float(c) for c in cond)}
    return Objective(fn=_ltr_listwise_fn(label_norm, objective_index, ref_mode, cond is not None), hparams=hparams)
