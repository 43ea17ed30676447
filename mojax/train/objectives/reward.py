"""Reward-model objectives: Bradley–Terry and MORE (min-norm reweighting of per-dataset losses)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

from mojax import losses as L
from mojax.solvers import ema_update, min_norm_weights
from mojax.train.objectives._common import _count, _pairs, cached_fn, example_mask
from mojax.train.step import Objective


# ----------------------------------------------------------------------------------------------------------------
# Reward models: Bradley–Terry and MORE.


def _rewards(features_or_rewards: jax.Array, head_index: int) -> jax.Array:
    return features_or_rewards[..., head_index]


@cached_fn
def _bt_fn(head_index: int):
    def fn(model, batch, rng, hp):
        _pairs(batch)
        r = _rewards(model(batch["input_ids"], attention_mask=batch["attention_mask"]), head_index)  # [B, 2]
        where = example_mask(batch, r.shape[0])
        loss, metrics = L.bradley_terry_loss(r[:, 0], r[:, 1], where=where, return_metrics=True)
        metrics.pop("confidence")  # per-pair [B]; ECE is computed in evaluation
        return loss, {**metrics, "count": _count(where)}

    return fn


def bradley_terry_objective(*, head_index: int = 0) -> Objective:
    """Reward-model loss ``−log σ(r(x, y_w) − r(x, y_l))`` for a :class:`mojax.models.RewardModel` on pairs."""
    return Objective(fn=_bt_fn(head_index))


MORE_AVERAGING = ("released", "ema", "none")


def more_objective(*, num_datasets: int, averaging: str | None = None, alpha: float = 0.99,
                   ema_decay: float | None = None, normalize: bool = True, head_index: int = 0,
                   head_filter: Any = nnx.PathContains("score")) -> Objective:
    """MORE (docs/methods/more.md): min-norm reweighting of per-dataset Bradley–Terry losses of a reward model.

    Per step: features ``h`` of every response (one backbone forward), per-dataset losses ``L_k`` over the pairs with
    ``batch["dataset_id"] == k``; head-only gradients ``g_k = ∇_head L_k`` on ``stop_gradient(h)``; their running
    average ``m_k`` (``averaging``) and row L2 normalisation; ``λ = min_norm_weights(m)`` held constant
    (stop-gradient); loss ``Σ_k λ_k L_k`` through the whole model.

    Averaging (issue 12: the default follows the released code, dunzeng/MORE ``trainer.py``):

    - ``"released"`` (default): ``m_k ← (1 − α) m_k + α g_k`` with ``α = alpha`` = 0.99 (``--alpha 0.99``), i.e.
      weight 0.99 on the **new** gradient, ``m_k`` starting from the head's initial weights (raveled, every row).
    - ``"ema"``: mojax's earlier averaging ``m_k ← d m_k + (1 − d) g_k`` with ``d = ema_decay`` (default 0.99, weight
      0.99 on the **old** average), a dataset's first gradient initialising its row.
    - ``"none"``: the raw gradients.

    ``averaging=None`` resolves to ``"ema"`` when ``ema_decay`` is given (the pre-issue-12 call ``ema_decay=0.99``
    keeps its meaning) and to ``"released"`` otherwise.

    A dataset absent from a batch has ``L_k = 0`` and no gradient: its EMA row is not updated, and if it has none yet
    its λ is set to 0 and the others renormalised (MORE's batches hold every dataset, so this is only a fallback).

    Args:
      num_datasets: K.
      averaging: ``"released"``, ``"ema"`` or ``"none"`` (see above).
      alpha: ``"released"``: weight of the new gradient (the traced hyper-parameter ``alpha``: a sweep compiles once).
      ema_decay: ``"ema"``: weight of the old average (the traced hyper-parameter ``ema_decay``).
      normalize: L2-normalise the K gradient rows before the QP.
      head_index: which reward head is trained.
      head_filter: ``nnx`` filter selecting the head's parameters inside the model (``RewardModel.score``).

    Metrics: ``lambda`` ``[K]``, ``dataset_losses`` ``[K]``, ``accuracy``.
    """
    if num_datasets < 1:
        raise ValueError(f"num_datasets must be >= 1, got {num_datasets}")
    if averaging is None:
        averaging = "released" if ema_decay is None else "ema"
    if averaging not in MORE_AVERAGING:
        raise ValueError(f"averaging must be one of {MORE_AVERAGING}, got {averaging!r}")
    if averaging != "ema" and ema_decay is not None:
        raise ValueError(f"ema_decay applies to averaging='ema' only, got averaging={averaging!r}")
    rate = {"released": ("alpha", alpha), "ema": ("ema_decay", 0.99 if ema_decay is None else ema_decay)}.get(averaging)
    if rate is not None and not 0.0 <= rate[1] <= 1.0:
        raise ValueError(f"{rate[0]} must be in [0, 1], got {rate[1]}")
    fn, init_extras = _more_fns(num_datasets, averaging, normalize, head_index, head_filter)
    return Objective(fn=fn, hparams={} if rate is None else {rate[0]: rate[1]}, init_extras=init_extras)


@cached_fn
def _more_fns(num_datasets: int, averaging: str, normalize: bool, head_index: int, head_filter: Any):
    k_range = jnp.arange(num_datasets)

    def dataset_losses(rewards, ids, where):
        """``[K]`` per-dataset BT losses, and per-dataset pair counts."""
        masks = (ids[None, :] == k_range[:, None]) & where[None, :]  # [K, B]
        losses = jax.vmap(lambda m: L.bradley_terry_loss(rewards[:, 0], rewards[:, 1], where=m))(masks)
        return losses, jnp.sum(masks, axis=1)

    def head_gradients(model, feats, ids, where):
        """``[K, P_head]`` gradients of each ``L_k`` with respect to the head only, on stop-gradient features."""
        graphdef, head, rest = nnx.split(model, head_filter, ...)

        def losses_of(h):
            m = nnx.merge(graphdef, h, rest)
            rewards = _rewards(m.head(feats), head_index)
            return dataset_losses(rewards, ids, where)[0]

        jac = jax.jacrev(losses_of)(head)  # pytree with leading K on every leaf
        return jax.vmap(lambda tree: ravel_pytree(tree)[0])(jac)

    def fn(model, batch, rng, hp, extras):
        _pairs(batch)
        feats = model.features(batch["input_ids"], attention_mask=batch["attention_mask"])  # [B, 2, D]
        rewards = _rewards(model.head(feats), head_index)
        ids = jnp.asarray(batch["dataset_id"], jnp.int32)
        where = example_mask(batch, rewards.shape[0])
        losses, counts = dataset_losses(rewards, ids, where)
        grads = head_gradients(model, jax.lax.stop_gradient(feats), ids, where)
        present = counts > 0
        if averaging == "none":
            avg, seen = grads, present
        elif averaging == "released":
            # dunzeng/MORE trainer.py: grad_m = (1 - alpha) * grad_m + alpha * grad, for the datasets in the batch.
            updated = ema_update(extras["ema"], grads, decay=1.0 - hp["alpha"])
            avg = jnp.where(present[:, None], updated, extras["ema"])
            seen = extras["seen"] | present
        else:
            updated = ema_update(extras["ema"], grads, decay=hp["ema_decay"])
            fresh = present & ~extras["seen"]  # first gradient of a dataset initialises its average
            avg = jnp.where(fresh[:, None], grads, jnp.where(present[:, None], updated, extras["ema"]))
            seen = extras["seen"] | present
        lam = min_norm_weights(avg, normalize=normalize)
        lam = jnp.where(seen, lam, 0.0)
        lam = jax.lax.stop_gradient(lam / jnp.maximum(jnp.sum(lam), 1e-12))
        loss = jnp.sum(lam * losses)
        valid = _count(where)
        margin = rewards[:, 0] - rewards[:, 1]
        accuracy = jnp.sum(jnp.where(where, margin > 0, False)) / jnp.maximum(valid, 1.0)
        metrics = {"lambda": lam, "dataset_losses": jax.lax.stop_gradient(losses),
                   "accuracy": jax.lax.stop_gradient(accuracy), "count": valid}
        new_extras = extras if averaging == "none" else {"ema": avg, "seen": seen}
        return loss, metrics, new_extras

    def init_extras(model):
        """Averages ``[K, P_head]`` and ``seen`` flags ``[K]``: every row the head's initial weights (``"released"``,
        as ``grad_m`` in the released code; a builder is called for them) or zeros (``"ema"``)."""
        if averaging == "none":
            return {}
        if averaging == "released":
            concrete = model if isinstance(model, nnx.Module) else model()
            _, head, _ = nnx.split(concrete, head_filter, ...)
            if not jax.tree.leaves(head):
                raise ValueError(f"head_filter {head_filter!r} selects no parameter of the model")
            row = ravel_pytree(head)[0].astype(jnp.float32)
            return {"ema": jnp.tile(row[None], (num_datasets, 1)), "seen": jnp.zeros((num_datasets,), bool)}
        abstract = model if isinstance(model, nnx.Module) else nnx.eval_shape(model)
        _, head, _ = nnx.split(abstract, head_filter, ...)
        size = sum(math.prod(x.shape) for x in jax.tree.leaves(head))
        if not size:
            raise ValueError(f"head_filter {head_filter!r} selects no parameter of the model")
        return {"ema": jnp.zeros((num_datasets, size), jnp.float32), "seen": jnp.zeros((num_datasets,), bool)}

    return fn, init_extras
