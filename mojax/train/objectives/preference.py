"""LM preference objectives: DPO family, listwise DPO, COS-DPO, MO-DPO, SPO, Stable PO (penalty and bilevel), SFT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mojax import losses as L
from mojax.train.objectives._common import (CHUNK_SIZE, COSDPOSampling, _check_ref_mode, _cos_dpo_core, _count,
                                            _lengths, _pairs, _policy, example_mask, reference_logps,
                                            sample_conditioning, sequence_logps)


# ----------------------------------------------------------------------------------------------------------------
# Pairwise and listwise preference objectives.


def dpo_objective(*, beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
                  ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                  compact: bool = True) -> Callable:
    """DPO / conservative DPO / hinge / IPO on pairs (response 0 chosen, 1 rejected); :func:`mojax.losses.dpo_loss`.

    Metrics: the DPO loss's implicit rewards, margins, accuracy, chosen/rejected log-probs.
    """
    _check_ref_mode(ref_mode)

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)
        ref = reference_logps(model, batch, ref_mode=ref_mode, chunk_size=chunk_size, compact=compact)
        where = example_mask(batch, logps.shape[0])
        loss, metrics = L.dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta,
                                   label_smoothing=label_smoothing, loss_type=loss_type, where=where,
                                   return_metrics=True)
        return loss, {**metrics, "count": _count(where)}

    return objective


def listwise_dpo_objective(*, beta: float = 0.1, label_norm: str = "softmax", objective_index: int = 0,
                           ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                           compact: bool = True) -> Callable:
    """Listwise DPO (COS-DPO eq. 8) on N responses with labels ``batch["labels"][:, objective_index]`` ``[B, N]``."""
    _check_ref_mode(ref_mode)

    def objective(model, batch, rng):
        del rng
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)
        ref = reference_logps(model, batch, ref_mode=ref_mode, chunk_size=chunk_size, compact=compact)
        where = example_mask(batch, logps.shape[0])
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        items = jnp.broadcast_to(where[:, None], logps.shape)
        loss = L.listwise_dpo_loss(logps, ref, labels, beta=beta, where=items, label_norm=label_norm)
        return loss, {"chosen_logps": jnp.sum(jnp.where(where, logps[:, 0], 0.0)) / jnp.maximum(_count(where), 1.0),
                      "count": _count(where)}

    return objective



def cos_dpo_objective(*, sampling: COSDPOSampling = COSDPOSampling(), beta: float = 0.1, penalty: float = 0.0,
                      label_norm: str = "l1", ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                      compact: bool = True) -> Callable:
    """W-COS-DPO (eq. 12) / T-COS-DPO (eqs. 15–16) for a :class:`mojax.models.ConditionedLM` on ``[B, N, T]`` lists.

    Each step draws w (and the temperature direction d) from ``rng``, conditions the model on it
    (``weights=w``, ``temperatures=d``), computes per-objective listwise-DPO losses ``ℓ_k`` from
    ``batch["labels"]`` ``[B, K, N]`` (with binary labels, N = 2 and ``label_norm="l1"`` each ``ℓ_k`` is DPO), and
    minimises ``Σ_k w_k ℓ_k − μ·cos(ℓ⃗, w)`` (``penalty`` = μ, eq. 18). Metrics: ``objective_losses`` ``[K]``,
    ``weighted_loss``, ``cosine``.
    """
    _check_ref_mode(ref_mode)

    def objective(model, batch, rng):
        b = jnp.shape(batch["input_ids"])[0]
        w, direction = sample_conditioning(rng, b, sampling)
        cond = {"weights": w} if direction is None else {"weights": w, "temperatures": direction}
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact, conditioning=cond)
        ref = reference_logps(model, batch, ref_mode=ref_mode, chunk_size=chunk_size, compact=compact)
        labels = jnp.asarray(batch["labels"], jnp.float32)
        if labels.shape[1] != sampling.num_objectives:
            raise ValueError(f"labels have {labels.shape[1]} objectives, sampling.num_objectives = "
                             f"{sampling.num_objectives}")
        items = jnp.broadcast_to(example_mask(batch, b)[:, None], logps.shape)
        return _cos_dpo_core(logps, ref, labels, w, direction, items, beta=beta, penalty=penalty,
                             label_norm=label_norm, per_example=sampling.per_example)

    return objective


def modpo_objective(*, beta: float = 0.1, weights: tuple[float, ...], objective_index: int = 0,
                    chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Callable:
    """MO-DPO (Zhou et al. 2023) for one fixed weight vector w on objective-k pairs.

    ``batch["ref_logps"]`` ``[K, B, N]``: row 0 the reference π_ref, rows 1..K−1 the other objectives'
    single-objective DPO models, whose implicit rewards ``β·Δ[logπ_j − logπ_ref]`` give the margins ``Δr_{−k}``.
    """
    w = jnp.asarray(weights, jnp.float32)
    if w.ndim != 1 or w.shape[0] < 2 or not 0 <= objective_index < w.shape[0]:
        raise ValueError(f"weights must be a [K >= 2] vector and objective_index in [0, K), got {weights} and "
                         f"{objective_index}")

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)
        table = jnp.asarray(batch["ref_logps"], jnp.float32)
        if table.ndim != 3 or table.shape[0] != w.shape[0]:
            raise ValueError(f"modpo needs ref_logps [K={w.shape[0]}, B, N] (reference + K−1 other models), got "
                             f"{table.shape}")
        ref = table[0]
        others = beta * ((table[1:, :, 0] - ref[None, :, 0]) - (table[1:, :, 1] - ref[None, :, 1]))  # [K-1, B]
        where = example_mask(batch, logps.shape[0])
        loss, metrics = L.modpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], others.T, w, beta=beta,
                                     objective_index=objective_index, where=where, return_metrics=True)
        return loss, {**metrics, "count": _count(where)}

    return objective


def spo_objective(*, beta: float = 0.1, alpha: float | tuple[float, ...] = 0.0,
                  chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Callable:
    """SPO round n (docs/methods/spo.md) on dimension-n pairs against cached ``batch["ref_logps"]`` ``[n, B, N]`` of π_0..π_{n−1}.

    Metrics: ``phi_mean`` (mean gradient weight ϕ) and the preference metrics against π_{n−1}.
    """
    alpha_arr = jnp.asarray(alpha, jnp.float32)

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)
        prev = jnp.asarray(batch["ref_logps"], jnp.float32)
        if prev.ndim == 2:
            prev = prev[None]
        where = example_mask(batch, logps.shape[0])
        loss, metrics = L.spo_loss(logps[:, 0], logps[:, 1], prev[:, :, 0], prev[:, :, 1], beta=beta,
                                   alpha=alpha_arr, where=where, return_phi=True)
        metrics = {k: v for k, v in metrics.items() if k != "phi"}  # per-pair ϕ [B]: keep the mean only
        return loss, {**metrics, "count": _count(where)}

    return objective


# ----------------------------------------------------------------------------------------------------------------
# Stable PO: penalty and one-step bilevel forms.

def _pref_losses(pref: str, logps, ref, lengths, where, *, beta, gamma, nll_weight, label_smoothing):
    """Per-pair preference losses ``[B]`` for ``pref`` in {"dpo", "simpo", "cpo"} (unreduced)."""
    c, r = logps[:, 0], logps[:, 1]
    if pref == "dpo":
        return L.dpo_loss(c, r, ref[:, 0], ref[:, 1], beta=beta, label_smoothing=label_smoothing, where=where,
                          reduce_fn=None)
    if pref == "simpo":
        return L.simpo_loss(c, r, lengths[:, 0], lengths[:, 1], beta=beta, gamma=gamma,
                            label_smoothing=label_smoothing, where=where, reduce_fn=None)
    if pref == "cpo":
        return L.cpo_loss(c, r, beta=beta, nll_weight=nll_weight, chosen_lengths=lengths[:, 0], where=where,
                          reduce_fn=None)
    raise ValueError(f"unknown preference loss {pref!r}; expected 'dpo', 'simpo' or 'cpo'")


def stable_po_objective(*, beta: float = 0.1, penalty: float = 1.0, pref: str = "dpo", gamma: float = 0.0,
                        nll_weight: float = 1.0, label_smoothing: float = 0.0, ref_mode: str = "cached",
                        chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Callable:
    """Stable PO, penalty form: ``L_pref + λ·E[max(0, logπ_ref(y_w) − logπ_θ(y_w))]`` (docs/methods/stable-po.md).

    ``pref`` picks DPO, SimPO or CPO as the upper-level loss; the reference is needed for the hinge in every case.
    Metrics: ``preference_loss``, ``hinge``, ``hinge_active``, ``chosen_logps``, ``rejected_logps``.
    """
    _check_ref_mode(ref_mode)
    _pref_losses(pref, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), None, beta=beta, gamma=gamma,
                 nll_weight=nll_weight, label_smoothing=label_smoothing)  # validate the options now

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)
        ref = reference_logps(model, batch, ref_mode=ref_mode, chunk_size=chunk_size, compact=compact)
        where = example_mask(batch, logps.shape[0])
        per_pair = _pref_losses(pref, logps, ref, _lengths(batch), where, beta=beta, gamma=gamma,
                                nll_weight=nll_weight, label_smoothing=label_smoothing)
        loss, metrics = L.stable_po_loss(per_pair, logps[:, 0], ref[:, 0], penalty=penalty, where=where,
                                         return_metrics=True)
        count = _count(where)
        mean = lambda x: jnp.sum(jnp.where(where, jax.lax.stop_gradient(x), 0.0)) / jnp.maximum(count, 1.0)  # noqa
        return loss, {**metrics, "chosen_logps": mean(logps[:, 0]), "rejected_logps": mean(logps[:, 1]),
                      "count": count}

    return objective


def bilevel_stable_po_objective(*, beta: float = 0.1, penalty: float = 1.0, inner_lr: float = 1e-2,
                                pref: str = "dpo", gamma: float = 0.0, nll_weight: float = 1.0,
                                first_order: bool = False, wrt: Any = nnx.Param, ref_mode: str = "cached",
                                chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Callable:
    """Stable PO, one-step bilevel form: ``θ⁺ = θ − η∇L_SFT(θ)``, ``L = L_pref(θ⁺) + λ·hinge(θ⁺)``.

    Built on :func:`mojax.losses.bilevel_objective`: the objective splits the model into the trainable variables
    (``wrt`` — pass the same filter as to ``create_train_state``) and the rest, so the step's gradient flows through
    the inner SFT step (a Hessian-vector product; ``first_order=True`` drops it). ``L_SFT`` is the token-normalised
    NLL of the chosen responses. Reference log-probs are computed once, at θ, under ``stop_gradient``.
    """
    _check_ref_mode(ref_mode)

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        ref = reference_logps(model, batch, ref_mode=ref_mode, chunk_size=chunk_size, compact=compact)
        where = example_mask(batch, ref.shape[0])
        lengths = _lengths(batch)
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def logps_at(p):
            return sequence_logps(_policy(nnx.merge(graphdef, p, rest)), batch, chunk_size=chunk_size,
                                  compact=compact)

        def sft(p, _):
            return L.sft_loss_from_logps(logps_at(p)[:, 0], lengths[:, 0], where=where)

        def pref_loss(p, _):
            per_pair = _pref_losses(pref, logps_at(p), ref, lengths, where, beta=beta, gamma=gamma,
                                    nll_weight=nll_weight, label_smoothing=0.0)
            return L.reduce_masked(per_pair, where)

        def hinge(p, _):
            return L.likelihood_hinge(logps_at(p)[:, 0], ref[:, 0], where=where)

        f = L.bilevel_objective(sft, pref_loss, inner_lr=inner_lr, penalty=penalty, hinge_fn=hinge,
                                first_order=first_order)
        loss = f(params, None)
        count = _count(where)
        logps = jax.lax.stop_gradient(logps_at(params))
        mean = lambda x: jnp.sum(jnp.where(where, x, 0.0)) / jnp.maximum(count, 1.0)  # noqa: E731
        return loss, {"chosen_logps": mean(logps[:, 0]), "rejected_logps": mean(logps[:, 1]), "count": count}

    return objective


def sft_objective(*, response_index: int = 0, chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Callable:
    """Token-level NLL of response ``response_index`` (the chosen one), normalised by the token count.

    ``count`` is the number of response tokens, so accumulation gives exactly the big-batch token average.
    """

    def objective(model, batch, rng):
        del rng
        logps = sequence_logps(_policy(model), batch, chunk_size=chunk_size, compact=compact)[:, response_index]
        where = example_mask(batch, logps.shape[0])
        tokens = _lengths(batch)[:, response_index]
        loss, metrics = L.sft_loss_from_logps(logps, tokens, where=where, return_metrics=True)
        return loss, {"nll": loss, "count": jnp.sum(jnp.where(where, tokens, 0.0))}

    return objective
