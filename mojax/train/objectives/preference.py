"""LM preference objectives: DPO family, listwise DPO, COS-DPO, MO-DPO, SPO, Stable PO (penalty, bilevel, value gap),
SFT.

Each factory returns an :class:`~mojax.train.Objective`: the hyper-parameters that vary across a sweep or a method's
rounds (β, label smoothing, α, λ, γ, w, μ, η) are its ``hparams`` — traced inputs of the step — and the static
choices (loss type, label norm, reference mode, log-prob path) pick the ``fn``. The ``fn`` builders are memoised on
the static choices (:func:`~mojax.train.objectives._common.cached_fn`), so rebuilding an objective with other
hyper-parameter values reuses the compiled step. Every ``fn`` starts from the shared :class:`LMOpening`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mojax import losses as L
from mojax.losses._base import check_positive
from mojax.train.objectives._common import (CHUNK_SIZE, COSDPOSampling, LMInputs, LMOpening, _cos_dpo_core, cached_fn,
                                            sample_conditioning)
from mojax.train.step import Objective

HParams = Mapping[str, jax.Array]
# A per-pair preference loss: (opening outputs, hyper-parameters) -> unreduced losses [B] (masked entries 0).
PairLoss = Callable[[LMInputs, HParams, jax.Array], jax.Array]


def _opening(ref_mode, chunk_size, compact, pairs=True) -> LMOpening:
    return LMOpening(ref_mode=ref_mode, chunk_size=chunk_size, compact=compact, pairs=pairs)


# ----------------------------------------------------------------------------------------------------------------
# Per-pair preference losses (the upper-level choices of Stable PO), each with the hyper-parameters it reads.


def dpo_pairs(x: LMInputs, hp: HParams, logps: jax.Array) -> jax.Array:
    """DPO per pair on ``logps`` ``[B, 2]`` against ``x.ref`` (hparams ``beta``, ``label_smoothing``)."""
    return L.dpo_loss(logps[:, 0], logps[:, 1], x.ref[:, 0], x.ref[:, 1], beta=hp["beta"],
                      label_smoothing=hp.get("label_smoothing", 0.0), where=x.where, reduce_fn=None)


def simpo_pairs(x: LMInputs, hp: HParams, logps: jax.Array) -> jax.Array:
    """SimPO per pair (hparams ``beta``, ``gamma``, ``label_smoothing``)."""
    return L.simpo_loss(logps[:, 0], logps[:, 1], x.lengths[:, 0], x.lengths[:, 1], beta=hp["beta"],
                        gamma=hp["gamma"], label_smoothing=hp.get("label_smoothing", 0.0), where=x.where,
                        reduce_fn=None)


def cpo_pairs(x: LMInputs, hp: HParams, logps: jax.Array) -> jax.Array:
    """CPO per pair (hparams ``beta``, ``nll_weight``)."""
    return L.cpo_loss(logps[:, 0], logps[:, 1], beta=hp["beta"], nll_weight=hp["nll_weight"],
                      chosen_lengths=x.lengths[:, 0], where=x.where, reduce_fn=None)


# name -> (per-pair loss, the hyper-parameters it reads besides beta)
PAIR_LOSSES: dict[str, tuple[PairLoss, tuple[str, ...]]] = {
    "dpo": (dpo_pairs, ("label_smoothing",)),
    "simpo": (simpo_pairs, ("gamma", "label_smoothing")),
    "cpo": (cpo_pairs, ("nll_weight",)),
}


def _pair_loss(pref: str) -> tuple[PairLoss, tuple[str, ...]]:
    if pref not in PAIR_LOSSES:
        raise ValueError(f"unknown preference loss {pref!r}; expected one of {sorted(PAIR_LOSSES)}")
    return PAIR_LOSSES[pref]


def _pick(names: tuple[str, ...], **values: float) -> dict[str, float]:
    return {k: values[k] for k in names}


def _check(**values: float) -> None:
    """Reject out-of-range defaults now (inside the step they are traced and the losses cannot check them)."""
    for name, value in values.items():
        check_positive(name, value, allow_zero=name != "beta")


# ----------------------------------------------------------------------------------------------------------------
# Pairwise and listwise preference objectives.


@cached_fn
def _dpo_fn(loss_type: str, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        loss, metrics = L.dpo_loss(x.logps[:, 0], x.logps[:, 1], x.ref[:, 0], x.ref[:, 1], beta=hp["beta"],
                                   label_smoothing=hp["label_smoothing"], loss_type=loss_type, where=x.where,
                                   return_metrics=True)
        return loss, {**metrics, "count": x.count}

    return fn


def dpo_objective(*, beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
                  ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """DPO / conservative DPO / hinge / IPO on pairs (response 0 chosen, 1 rejected); :func:`mojax.losses.dpo_loss`.

    Hyper-parameters: ``beta``, ``label_smoothing``. Metrics: the DPO loss's implicit rewards, margins, accuracy,
    chosen/rejected log-probs.
    """
    _check(beta=beta)
    return Objective(fn=_dpo_fn(loss_type, _opening(ref_mode, chunk_size, compact)),
                     hparams={"beta": beta, "label_smoothing": label_smoothing})


@cached_fn
def _listwise_fn(label_norm: str, objective_index: int, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        items = jnp.broadcast_to(x.where[:, None], x.logps.shape)
        loss = L.listwise_dpo_loss(x.logps, x.ref, labels, beta=hp["beta"], where=items, label_norm=label_norm)
        return loss, {"chosen_logps": x.mean(x.logps[:, 0]), "count": x.count}

    return fn


def listwise_dpo_objective(*, beta: float = 0.1, label_norm: str = "softmax", objective_index: int = 0,
                           ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                           compact: bool = True) -> Objective:
    """Listwise DPO (COS-DPO eq. 8) on N responses with labels ``batch["labels"][:, objective_index]`` ``[B, N]``.

    Hyper-parameters: ``beta``.
    """
    _check(beta=beta)
    return Objective(fn=_listwise_fn(label_norm, objective_index, _opening(ref_mode, chunk_size, compact, False)),
                     hparams={"beta": beta})


@cached_fn
def _cos_dpo_fn(sampling: COSDPOSampling, label_norm: str, opening: LMOpening):
    def fn(model, batch, rng, hp):
        b = jnp.shape(batch["input_ids"])[0]
        w, direction = sample_conditioning(rng, b, sampling)
        cond = {"weights": w} if direction is None else {"weights": w, "temperatures": direction}
        x = opening(model, batch, conditioning=cond)
        labels = jnp.asarray(batch["labels"], jnp.float32)
        if labels.shape[1] != sampling.num_objectives:
            raise ValueError(f"labels have {labels.shape[1]} objectives, sampling.num_objectives = "
                             f"{sampling.num_objectives}")
        items = jnp.broadcast_to(x.where[:, None], x.logps.shape)
        return _cos_dpo_core(x.logps, x.ref, labels, w, direction, items, beta=hp["beta"], penalty=hp["penalty"],
                             label_norm=label_norm, per_example=sampling.per_example)

    return fn


def cos_dpo_objective(*, sampling: COSDPOSampling = COSDPOSampling(), beta: float = 0.1, penalty: float = 0.0,
                      label_norm: str = "l1", ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                      compact: bool = True) -> Objective:
    """W-COS-DPO (eq. 12) / T-COS-DPO (eqs. 15–16) for a :class:`mojax.models.ConditionedLM` on ``[B, N, T]`` lists.

    Each step draws w (and the temperature direction d) from ``rng``, conditions the model on it
    (``weights=w``, ``temperatures=d``), computes per-objective listwise-DPO losses ``ℓ_k`` from
    ``batch["labels"]`` ``[B, K, N]`` (with binary labels, N = 2 and ``label_norm="l1"`` each ``ℓ_k`` is DPO), and
    minimises ``Σ_k w_k ℓ_k − μ·cos(ℓ⃗, w)`` (eq. 18). Hyper-parameters: ``beta``, ``penalty`` (μ). Metrics:
    ``objective_losses`` ``[K]``, ``weighted_loss``, ``cosine``.
    """
    _check(beta=beta, penalty=penalty)
    return Objective(fn=_cos_dpo_fn(sampling, label_norm, _opening(ref_mode, chunk_size, compact, False)),
                     hparams={"beta": beta, "penalty": penalty})


@cached_fn
def _scalarized_dpo_fn(label_norm: str, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        labels = jnp.asarray(batch["labels"], jnp.float32)  # [B, K, N]
        if labels.shape[1] != hp["weights"].shape[0]:
            raise ValueError(f"labels have {labels.shape[1]} objectives, weights {hp['weights'].shape[0]}")
        w = jnp.broadcast_to(hp["weights"], labels.shape[:2])
        items = jnp.broadcast_to(x.where[:, None], x.logps.shape)
        return _cos_dpo_core(x.logps, x.ref, labels, w, None, items, beta=hp["beta"], penalty=0.0,
                             label_norm=label_norm, per_example=True)

    return fn


def scalarized_dpo_objective(*, weights: tuple[float, ...], beta: float = 0.1, label_norm: str = "l1",
                             ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                             compact: bool = True) -> Objective:
    """DPO-LS (linear scalarisation): ``mean_b Σ_k w_k ℓ_k`` for a plain policy at one fixed weight vector w.

    ``ℓ_k`` is the listwise-DPO loss of objective k's labels ``batch["labels"]`` ``[B, K, N]`` (binary labels on
    pairs with ``label_norm="l1"``: exactly DPO) — the loss :func:`cos_dpo_objective` scalarises, so the two differ
    only in how w is chosen. Hyper-parameters: ``beta``, ``weights`` (w: one compiled step serves a whole weight
    sweep). Metrics: ``objective_losses`` ``[K]``, ``weighted_loss``.
    """
    w = tuple(float(v) for v in np.ravel(np.asarray(weights, np.float64)))
    if np.ndim(weights) != 1 or len(w) < 1:
        raise ValueError(f"weights must be a [K] vector, got {weights}")
    _check(beta=beta)
    return Objective(fn=_scalarized_dpo_fn(label_norm, _opening(ref_mode, chunk_size, compact, False)),
                     hparams={"beta": beta, "weights": w})


@cached_fn
def _modpo_fn(objective_index: int, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        w = hp["weights"]
        table = jnp.asarray(batch["ref_logps"], jnp.float32)
        if table.ndim != 3 or table.shape[0] != w.shape[0]:
            raise ValueError(f"modpo needs ref_logps [K={w.shape[0]}, B, N] (reference + K−1 other models), got "
                             f"{table.shape}")
        ref = table[0]
        margins = (table[1:, :, 0] - ref[None, :, 0]) - (table[1:, :, 1] - ref[None, :, 1])  # [K-1, B]
        loss, metrics = L.modpo_loss(x.logps[:, 0], x.logps[:, 1], ref[:, 0], ref[:, 1], hp["beta"] * margins.T, w,
                                     beta=hp["beta"], objective_index=objective_index, where=x.where,
                                     return_metrics=True)
        return loss, {**metrics, "count": x.count}

    return fn


def modpo_objective(*, beta: float = 0.1, weights: tuple[float, ...], objective_index: int = 0,
                    chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """MO-DPO (Zhou et al. 2023) for a weight vector w on objective-k pairs.

    ``batch["ref_logps"]`` ``[K, B, N]``: row 0 the reference π_ref, rows 1..K−1 the other objectives'
    single-objective DPO models, whose implicit rewards ``β·Δ[logπ_j − logπ_ref]`` give the margins ``Δr_{−k}``.
    Hyper-parameters: ``beta``, ``weights`` (the vector w: one compiled step serves every w).
    """
    w = tuple(float(v) for v in np.ravel(np.asarray(weights, np.float64)))
    if np.ndim(weights) != 1 or len(w) < 2 or not 0 <= objective_index < len(w):
        raise ValueError(f"weights must be a [K >= 2] vector and objective_index in [0, K), got {weights} and "
                         f"{objective_index}")
    _check(beta=beta)
    return Objective(fn=_modpo_fn(objective_index, _opening(None, chunk_size, compact)),
                     hparams={"beta": beta, "weights": w})


@cached_fn
def _spo_fn(opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        prev = jnp.asarray(batch["ref_logps"], jnp.float32)
        prev = prev[None] if prev.ndim == 2 else prev
        loss, metrics = L.spo_loss(x.logps[:, 0], x.logps[:, 1], prev[:, :, 0], prev[:, :, 1], beta=hp["beta"],
                                   alpha=hp["alpha"], where=x.where, return_metrics=True)
        metrics = {k: v for k, v in metrics.items() if k != "phi"}  # per-pair ϕ [B]: keep the mean only
        return loss, {**metrics, "count": x.count}

    return fn


def spo_objective(*, beta: float = 0.1, alpha: float | tuple[float, ...] = 0.0,
                  chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """SPO round n (docs/methods/spo.md) on dimension-n pairs against cached ``batch["ref_logps"]`` ``[n, B, N]`` of π_0..π_{n−1}.

    Hyper-parameters: ``beta``, ``alpha`` (a scalar, or a vector of n − 1 multipliers). Metrics: ``phi_mean`` (mean
    gradient weight ϕ) and the preference metrics against π_{n−1}.
    """
    alpha = tuple(float(a) for a in alpha) if isinstance(alpha, (tuple, list)) else alpha
    _check(beta=beta, alpha=alpha)
    return Objective(fn=_spo_fn(_opening(None, chunk_size, compact)), hparams={"beta": beta, "alpha": alpha})


# ----------------------------------------------------------------------------------------------------------------
# Stable PO: penalty and one-step bilevel forms.


@cached_fn
def _stable_po_fn(pair_loss: PairLoss, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        per_pair = pair_loss(x, hp, x.logps)
        loss, metrics = L.stable_po_loss(per_pair, x.logps[:, 0], x.ref[:, 0], penalty=hp["penalty"], where=x.where,
                                         return_metrics=True)
        return loss, {**metrics, "chosen_logps": x.mean(x.logps[:, 0]), "rejected_logps": x.mean(x.logps[:, 1]),
                      "count": x.count}

    return fn


def stable_po_objective(*, beta: float = 0.1, penalty: float = 1.0, pref: str = "dpo", gamma: float = 0.0,
                        nll_weight: float = 1.0, label_smoothing: float = 0.0, ref_mode: str = "cached",
                        chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """Stable PO, penalty form: ``L_pref + λ·E[max(0, logπ_ref(y_w) − logπ_θ(y_w))]`` (docs/methods/stable-po.md).

    ``pref`` picks the per-pair upper-level loss of :data:`PAIR_LOSSES` (DPO, SimPO or CPO); the reference is
    needed for the hinge in every case. Hyper-parameters: ``beta``, ``penalty`` (λ) and the ones ``pref`` reads
    (``label_smoothing``; ``gamma``, ``label_smoothing``; ``nll_weight``). Metrics: ``preference_loss``, ``hinge``,
    ``hinge_active``, ``chosen_logps``, ``rejected_logps``.
    """
    pair_loss, names = _pair_loss(pref)
    _check(beta=beta, penalty=penalty)
    hparams = {"beta": beta, "penalty": penalty, **_pick(names, gamma=gamma, nll_weight=nll_weight,
                                                         label_smoothing=label_smoothing)}
    return Objective(fn=_stable_po_fn(pair_loss, _opening(ref_mode, chunk_size, compact)), hparams=hparams)


@cached_fn
def _bilevel_fn(pair_loss: PairLoss, first_order: bool, wrt: Any, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x0 = opening(model, batch)  # reference (at θ, under stop_gradient), mask, lengths; logps only for metrics
        graphdef, params, rest = nnx.split(model, wrt, ...)

        def logps_at(p):
            return opening.policy(nnx.merge(graphdef, p, rest), batch)

        def sft(p, _):
            return L.sft_loss_from_logps(logps_at(p)[:, 0], x0.lengths[:, 0], where=x0.where)

        def pref_and_hinge(p, _):
            # λ·hinge is added here rather than through bilevel_objective's penalty=, which branches on its value in
            # Python and so cannot take a traced λ.
            logps = logps_at(p)
            pref = L.reduce_masked(pair_loss(x0, hp, logps), x0.where)
            return pref + hp["penalty"] * L.likelihood_hinge(logps[:, 0], x0.ref[:, 0], where=x0.where)

        f = L.bilevel_objective(sft, pref_and_hinge, inner_lr=hp["inner_lr"], penalty=0.0, first_order=first_order)
        loss = f(params, None)
        return loss, {"chosen_logps": x0.mean(x0.logps[:, 0]), "rejected_logps": x0.mean(x0.logps[:, 1]),
                      "count": x0.count}

    return fn


def bilevel_stable_po_objective(*, beta: float = 0.1, penalty: float = 1.0, inner_lr: float = 1e-2,
                                pref: str = "dpo", gamma: float = 0.0, nll_weight: float = 1.0,
                                first_order: bool = False, wrt: Any = nnx.Param, ref_mode: str = "cached",
                                chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """Stable PO, one-step bilevel form: ``θ⁺ = θ − η∇L_SFT(θ)``, ``L = L_pref(θ⁺) + λ·hinge(θ⁺)``.

    Built on :func:`mojax.losses.bilevel_objective`: the objective splits the model into the trainable variables
    (``wrt`` — pass the same filter as to ``create_train_state``) and the rest, so the step's gradient flows through
    the inner SFT step (a Hessian-vector product; ``first_order=True`` drops it). ``L_SFT`` is the token-normalised
    NLL of the chosen responses. Reference log-probs are computed once, at θ, under ``stop_gradient``.
    Hyper-parameters: ``beta``, ``penalty`` (λ), ``inner_lr`` (η) and the ones ``pref`` reads (no label smoothing).
    """
    pair_loss, names = _pair_loss(pref)
    _check(beta=beta, penalty=penalty, inner_lr=inner_lr)
    hparams = {"beta": beta, "penalty": penalty, "inner_lr": inner_lr,
               **_pick(tuple(n for n in names if n != "label_smoothing"), gamma=gamma, nll_weight=nll_weight)}
    return Objective(fn=_bilevel_fn(pair_loss, first_order, wrt, _opening(ref_mode, chunk_size, compact)),
                     hparams=hparams)


def _chosen_only(batch: Any) -> dict[str, Any]:
    """The batch with only response 0 (the chosen one) on the response axis: the lower level never needs y_l."""
    return {k: (v[:, :1] if k in ("input_ids", "attention_mask", "loss_mask") else v) for k, v in batch.items()}


@cached_fn
def _value_gap_fn(pair_loss: PairLoss, inner_steps: int, first_order: bool, wrt: Any, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        pref = L.reduce_masked(pair_loss(x, hp, x.logps), x.where)
        graphdef, params, rest = nnx.split(model, wrt, ...)
        chosen = _chosen_only(batch)

        def sft(p):
            logps = opening.policy(nnx.merge(graphdef, p, rest), chosen)[:, 0]
            return L.sft_loss_from_logps(logps, x.lengths[:, 0], where=x.where)

        here = L.sft_loss_from_logps(x.logps[:, 0], x.lengths[:, 0], where=x.where)
        inner = params
        for _ in range(inner_steps):  # static count: unrolled
            g = jax.grad(sft)(inner)
            g = jax.lax.stop_gradient(g) if first_order else g
            inner = jax.tree.map(lambda p, d: p - hp["inner_lr"] * d, inner, g)
        gap = here - sft(inner)
        return pref + hp["penalty"] * gap, {"preference_loss": pref, "value_gap": gap, "sft_loss": here,
                                            "chosen_logps": x.mean(x.logps[:, 0]),
                                            "rejected_logps": x.mean(x.logps[:, 1]), "count": x.count}

    return fn


def value_gap_stable_po_objective(*, beta: float = 0.1, penalty: float = 1.0, inner_lr: float = 1e-2,
                                  inner_steps: int = 1, pref: str = "dpo", gamma: float = 0.0,
                                  nll_weight: float = 1.0, label_smoothing: float = 0.0, first_order: bool = False,
                                  wrt: Any = nnx.Param, ref_mode: str = "cached", chunk_size: int | None = CHUNK_SIZE,
                                  compact: bool = True) -> Objective:
    """Stable PO, value-gap penalty (penalty-based bilevel solvers): ``L_pref(θ) + λ·(L_SFT(θ) − L_SFT(θ⁺))``.

    The lower-level constraint "θ minimises L_SFT" is written as ``L_SFT(θ) − min L_SFT ≤ 0`` and the minimum is
    approximated by ``θ⁺``, θ after ``inner_steps`` (static) gradient steps ``θ ← θ − η∇L_SFT(θ)`` on the batch's
    chosen responses. The gap is ≥ 0 while the inner steps decrease L_SFT (η small enough) and ≈ η‖∇L_SFT(θ)‖² for
    one small step, so the penalty pushes θ towards SFT stationarity rather than above a fixed likelihood floor
    (the hinge of :func:`stable_po_objective`). The gradient flows through the inner steps (Hessian-vector
    products); ``first_order=True`` stops it through the inner gradients, leaving ``∇L_SFT(θ) − ∇L_SFT(θ⁺)``.
    ``L_SFT`` is the token-normalised NLL of the chosen responses; ``pref`` as in :func:`stable_po_objective`
    (the reference is read only by the preference term). Pass the same ``wrt`` as to the train state.
    Hyper-parameters: ``beta``, ``penalty`` (λ), ``inner_lr`` (η) and the ones ``pref`` reads. Metrics:
    ``preference_loss``, ``value_gap``, ``sft_loss``, ``chosen_logps``, ``rejected_logps``.
    """
    pair_loss, names = _pair_loss(pref)
    if not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be a positive int, got {inner_steps!r}")
    _check(beta=beta, penalty=penalty, inner_lr=inner_lr)
    hparams = {"beta": beta, "penalty": penalty, "inner_lr": inner_lr,
               **_pick(names, gamma=gamma, nll_weight=nll_weight, label_smoothing=label_smoothing)}
    opening = _opening(ref_mode, chunk_size, compact)
    return Objective(fn=_value_gap_fn(pair_loss, inner_steps, first_order, wrt, opening), hparams=hparams)


@cached_fn
def _sft_fn(response_index: int, opening: LMOpening):
    def fn(model, batch, rng, hp):
        x = opening(model, batch)
        tokens = x.lengths[:, response_index]
        loss = L.sft_loss_from_logps(x.logps[:, response_index], tokens, where=x.where)
        return loss, {"nll": loss, "count": jnp.sum(jnp.where(x.where, tokens, 0.0))}

    return fn


def sft_objective(*, response_index: int = 0, chunk_size: int | None = CHUNK_SIZE, compact: bool = True) -> Objective:
    """Token-level NLL of response ``response_index`` (the chosen one), normalised by the token count.

    ``count`` is the number of response tokens, so accumulation gives exactly the big-batch token average.
    No hyper-parameters.
    """
    return Objective(fn=_sft_fn(response_index, _opening(None, chunk_size, compact, False)))


__all__ = ["PAIR_LOSSES", "bilevel_stable_po_objective", "cos_dpo_objective", "cpo_pairs", "dpo_objective",
           "dpo_pairs", "listwise_dpo_objective", "modpo_objective", "scalarized_dpo_objective", "sft_objective",
           "simpo_pairs", "spo_objective", "stable_po_objective", "value_gap_stable_po_objective"]
