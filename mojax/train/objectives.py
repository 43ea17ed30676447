"""Methods as objectives plugged into the one train step: ``objective(model, batch, rng) -> (loss, metrics)``.

Each factory returns a pure function (or a :class:`~mojax.train.step.StatefulObjective` for MORE) built from the
losses of :mod:`mojax.losses`. Every objective reports ``metrics["count"]`` — the number of examples (tokens for
SFT) its loss averages over — so gradient accumulation is a sum/count average (see :mod:`mojax.train.step`).

Sequence batches (``BUILD_NOTES`` "Batch layout") carry the responses on an explicit axis ``[B, N, T]``; all B·N
responses go through the model in **one** forward (the leading axes flattened), and sequence log-probs come from the
final hidden states and the unembedding matrix by :func:`mojax.losses.compact_sequence_logps_from_hidden` (chunked,
no ``[B·N, T, V]`` logits, and the LM head runs at loss positions only; ``compact=False`` selects
:func:`mojax.losses.sequence_logps_from_hidden`, which chunks every position). A language model here is any module
with ``model(input_ids [M, T], *, attention_mask, return_hidden=True, use_lora=..., **conditioning) -> [M, T, D]``
and ``model.unembedding() -> [D, V]``
(``mojax.models.Decoder``, ``ConditionedLM``).

Reference log-probs, three modes (``ref_mode``):

- ``"cached"`` — ``batch["ref_logps"]`` ``[B, N]`` (or ``[R, B, N]``; the last row is the reference), precomputed
  once by :mod:`mojax.train.ref_cache`;
- ``"model"`` — the model is an :class:`AnchoredPolicy` holding a frozen ``reference`` beside the ``policy``;
  the reference runs in the step under ``stop_gradient`` (train with ``wrt=AnchoredPolicy.trainable``);
- ``"lora"`` — the LoRA base: the same weights with ``use_lora=False`` (for a ``ConditionedLM``, its backbone
  without the prefix), under ``stop_gradient``.

Ranking batches (``features [B, L, F]``, ``where [B, L]``, ``labels [B, K, L]``) go to rankers
``model(features, where=, cond=) -> [B, L]`` through the ``ltr_*`` objectives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

from mojax import losses as L
from mojax.solvers import ema_update, min_norm_weights
from mojax.train.step import StatefulObjective

REF_MODES = ("cached", "model", "lora")
# Positions per sequence in one LM-head chunk (B·N·CHUNK_SIZE rows). 32: with packing (``compact``) the head's work
# is rounded up to whole chunks, so smaller chunks waste less; B·N·32 rows (512 at 8 pairs) still make GEMMs large
# enough that a smaller chunk was not slower (BUILD_NOTES "DPO step vs TRL").
CHUNK_SIZE = 32
# A chunk holds at least this many logits (64 MiB in float32): chunking only bounds memory, and below this size it
# costs a loop, a recomputed GEMM and compile time for nothing — a small vocabulary's head then runs in one piece.
MIN_CHUNK_LOGITS = 2 ** 24
Batch = Mapping[str, jax.Array]


class AnchoredPolicy(nnx.Module):
    """A trainable ``policy`` and a frozen ``reference`` copy in one module (``ref_mode="model"``).

    Train with ``wrt=AnchoredPolicy.trainable`` so the reference's parameters live in the frozen part of the
    ``TrainState`` (sharded like the policy, never updated).
    """

    trainable = nnx.All(nnx.Param, nnx.PathContains("policy"))

    def __init__(self, policy: nnx.Module, reference: nnx.Module):
        self.policy = policy
        self.reference = reference


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces: masks, log-probs, references.


def example_mask(batch: Batch, size: int) -> jax.Array:
    """``batch["example_mask"]`` ``[B]`` (True = real example), or all True."""
    where = batch.get("example_mask")
    return jnp.ones((size,), bool) if where is None else jnp.asarray(where, bool)


def _count(where: jax.Array) -> jax.Array:
    return jnp.sum(where).astype(jnp.float32)


def _policy(model: nnx.Module) -> nnx.Module:
    return model.policy if isinstance(model, AnchoredPolicy) else model


def sequence_logps(model: nnx.Module, batch: Batch, *, chunk_size: int | None = CHUNK_SIZE, compact: bool = True,
                   use_lora: bool = True, conditioning: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """Summed response log-probs ``[B, N]`` of every response in one forward over the flattened ``[B·N, T]``.

    The LM head runs on chunks of ``B·N·chunk_size`` rows, or of :data:`MIN_CHUNK_LOGITS` ``/ V`` rows if that is
    more, so its memory is ``O(max(B·N·chunk_size·V, MIN_CHUNK_LOGITS))`` whichever path.

    Args:
      model: a language model (see the module docstring).
      batch: ``input_ids``, ``attention_mask``, ``loss_mask`` ``[B, N, T]``.
      chunk_size: positions per sequence in one LM-head chunk; ``None`` computes full ``[B·N, T, V]`` logits and
        :func:`mojax.losses.sequence_logps` instead (for small vocabularies and float64 checks).
      compact: pack the loss positions into the chunks and skip the chunks left empty
        (:func:`mojax.losses.compact_sequence_logps_from_hidden`: the head's work follows the response tokens, not
        ``B·N·T``); ``False`` chunks every position per sequence (:func:`mojax.losses.sequence_logps_from_hidden`),
        which is as fast when every position is a loss position and does not depend on ``lax.cond`` skipping work
        (under ``jax.vmap`` over batches it does not).
      use_lora: passed to the model (``False`` = the LoRA base model).
      conditioning: per-example model inputs ``[B, ...]`` (e.g. ``weights``), repeated for each of the N responses.
    """
    ids = jnp.asarray(batch["input_ids"])
    if ids.ndim != 3:
        raise ValueError(f"input_ids must be [B, N, T] (responses on an explicit axis), got shape {ids.shape}")
    b, n, t = ids.shape
    flat = lambda x: jnp.asarray(x).reshape(b * n, t)  # noqa: E731
    cond = {k: jnp.repeat(jnp.asarray(v), n, axis=0) for k, v in (conditioning or {}).items()}
    targets, where = L.next_token_targets(flat(ids), flat(batch["loss_mask"]).astype(bool))
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size is None:  # full [B·N, T, V] logits: for small vocabularies and exact (float64) checks
        logits = model(flat(ids), attention_mask=flat(batch["attention_mask"]), use_lora=use_lora, **cond)
        return L.sequence_logps(logits, targets, where=where).reshape(b, n)
    hidden = model(flat(ids), attention_mask=flat(batch["attention_mask"]), return_hidden=True, use_lora=use_lora,
                   **cond)  # [B·N, T, D]
    unembedding = model.unembedding()
    chunk_size = max(chunk_size, -(-MIN_CHUNK_LOGITS // (b * n * unembedding.shape[-1])))
    if compact:
        logps = L.compact_sequence_logps_from_hidden(hidden, unembedding, targets, where=where,
                                                     chunk_rows=b * n * chunk_size)
    else:
        logps = L.sequence_logps_from_hidden(hidden, unembedding, targets, where=where, chunk_size=chunk_size)
    return logps.reshape(b, n)


def reference_logps(model: nnx.Module, batch: Batch, *, ref_mode: str, chunk_size: int | None = CHUNK_SIZE,
                    compact: bool = True) -> jax.Array:
    """Reference log-probs ``[B, N]`` under ``stop_gradient`` in one of :data:`REF_MODES`."""
    if ref_mode == "cached":
        if "ref_logps" not in batch:
            raise ValueError("ref_mode='cached' needs batch['ref_logps'] (see mojax.train.ref_cache)")
        ref = jnp.asarray(batch["ref_logps"], jnp.float32)
        return ref[-1] if ref.ndim == 3 else ref
    if ref_mode == "model":
        if not isinstance(model, AnchoredPolicy):
            raise TypeError("ref_mode='model' needs the model to be an AnchoredPolicy(policy, reference)")
        out = sequence_logps(model.reference, batch, chunk_size=chunk_size, compact=compact)
    elif ref_mode == "lora":
        base = getattr(_policy(model), "backbone", _policy(model))  # a ConditionedLM's reference has no prefix
        out = sequence_logps(base, batch, chunk_size=chunk_size, compact=compact, use_lora=False)
    else:
        raise ValueError(f"unknown ref_mode {ref_mode!r}; expected one of {REF_MODES}")
    return jax.lax.stop_gradient(out)


def _check_ref_mode(ref_mode: str) -> None:
    if ref_mode not in REF_MODES:
        raise ValueError(f"unknown ref_mode {ref_mode!r}; expected one of {REF_MODES}")


def _pairs(batch: Batch) -> None:
    n = jnp.shape(batch["input_ids"])[1]
    if n != 2:
        raise ValueError(f"a pairwise objective needs N = 2 responses (chosen, rejected), got N = {n}")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class COSDPOSampling:
    """How W/T-COS-DPO draws its conditioning each step.

    Attributes:
      num_objectives: K.
      concentration: Dirichlet concentration α of ``w ~ Dir(α·1_K)`` (1 = uniform on the simplex).
      per_example: one w per example (True) or one per step, shared by the batch (False; the paper's choice).
      temperature: Temperature-COS-DPO: also draw ``β_k ~ LogUniform(beta_min, beta_max)`` per objective and
        condition on its direction ``d = β/‖β‖₁``.
      beta_min, beta_max: the log-uniform range of the sampled temperatures.
    """

    num_objectives: int = 2
    concentration: float = 1.0
    per_example: bool = False
    temperature: bool = False
    beta_min: float = 0.05
    beta_max: float = 1.0


def sample_conditioning(rng: jax.Array, batch_size: int, sampling: COSDPOSampling) -> tuple[jax.Array, jax.Array | None]:
    """Draw ``(w [B, K], d [B, K] or None)`` for one step (``d`` = temperature direction for T-COS-DPO)."""
    k_w, k_b = jax.random.split(rng)
    shape = (batch_size,) if sampling.per_example else ()
    w = L.sample_simplex_weights(k_w, shape, sampling.num_objectives, concentration=sampling.concentration)
    w = jnp.broadcast_to(w, (batch_size, sampling.num_objectives))
    if not sampling.temperature:
        return w, None
    lo, hi = math.log(sampling.beta_min), math.log(sampling.beta_max)
    betas = jnp.exp(jax.random.uniform(k_b, shape + (sampling.num_objectives,), minval=lo, maxval=hi))
    direction, _ = L.normalize_temperatures(betas)
    return w, jnp.broadcast_to(direction, (batch_size, sampling.num_objectives))


def _scalarize(per_objective, w, where, penalty, per_example):
    """Σ_k w_k ℓ_k − μ cos(ℓ⃗, w): per example (then averaged), or on the batch-mean loss vector (per step w)."""
    if per_example:
        return L.scalarized_loss(per_objective, w, penalty=penalty, where=where, return_metrics=True)
    count = jnp.maximum(jnp.sum(where), 1)
    means = jnp.sum(jnp.where(where[:, None], per_objective, 0.0), axis=0) / count  # [K]
    return L.scalarized_loss(means, w[0], penalty=penalty, return_metrics=True)


def _cos_dpo_core(scores, ref_scores, labels, w, direction, items, *, beta, penalty, label_norm, per_example):
    """Scalarised per-objective listwise-DPO losses: ``scores``/``ref_scores``/``items`` ``[B, L]``, ``labels``
    ``[B, K, L]``, ``w``/``direction`` ``[B, K]``. A list with no valid item counts as no example."""
    k = w.shape[-1]
    # T-COS-DPO trains at temperatures K·β·d: only the direction d is an input, the scale is applied afterwards by
    # the linear transformation (Prop. 3.1); K·β makes the uniform direction d = 1/K train at β.
    temps = jnp.full_like(w, beta) if direction is None else beta * k * direction
    per_objective = L.listwise_dpo_loss(scores[:, None, :], ref_scores[:, None, :], labels, beta=temps[..., None],
                                        where=jnp.broadcast_to(items[:, None, :], labels.shape),
                                        label_norm=label_norm, reduce_fn=None)  # [B, K]
    where = jnp.any(items, axis=-1)
    loss, metrics = _scalarize(per_objective, w, where, penalty, per_example)
    count = _count(where)
    obj_means = jnp.sum(jnp.where(where[:, None], per_objective, 0.0), axis=0) / jnp.maximum(count, 1.0)
    return loss, {**metrics, "objective_losses": jax.lax.stop_gradient(obj_means), "count": count}


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
    """SPO round n (METHODS §4) on dimension-n pairs against cached ``batch["ref_logps"]`` ``[n, B, N]`` of π_0..π_{n−1}.

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


def _lengths(batch: Batch) -> jax.Array:
    """Response token counts ``[B, N]`` (the SimPO / CPO ``|y|``)."""
    return jnp.sum(jnp.asarray(batch["loss_mask"]), axis=-1).astype(jnp.float32)


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
    """Stable PO, penalty form: ``L_pref + λ·E[max(0, logπ_ref(y_w) − logπ_θ(y_w))]`` (METHODS §5).

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


# ----------------------------------------------------------------------------------------------------------------
# Reward models: Bradley–Terry and MORE.


def _rewards(features_or_rewards: jax.Array, head_index: int) -> jax.Array:
    return features_or_rewards[..., head_index]


def bradley_terry_objective(*, head_index: int = 0) -> Callable:
    """Reward-model loss ``−log σ(r(x, y_w) − r(x, y_l))`` for a :class:`mojax.models.RewardModel` on pairs."""

    def objective(model, batch, rng):
        del rng
        _pairs(batch)
        r = _rewards(model(batch["input_ids"], attention_mask=batch["attention_mask"]), head_index)  # [B, 2]
        where = example_mask(batch, r.shape[0])
        loss, metrics = L.bradley_terry_loss(r[:, 0], r[:, 1], where=where, return_metrics=True)
        metrics.pop("confidence")  # per-pair [B]; ECE is computed in evaluation
        return loss, {**metrics, "count": _count(where)}

    return objective


def more_objective(*, num_datasets: int, ema_decay: float | None = 0.99, normalize: bool = True,
                   head_index: int = 0, head_filter: Any = nnx.PathContains("score")) -> StatefulObjective:
    """MORE (METHODS §6): min-norm reweighting of per-dataset Bradley–Terry losses of a reward model.

    Per step: features ``h`` of every response (one backbone forward), per-dataset losses ``L_k`` over the pairs with
    ``batch["dataset_id"] == k``; head-only gradients ``g_k = ∇_head L_k`` on ``stop_gradient(h)``; optionally their
    EMA (``ema_decay``, MORE's code: 0.99; the first step takes ``g`` itself) and row L2 normalisation; ``λ =
    min_norm_weights(g)`` held constant (stop-gradient); loss ``Σ_k λ_k L_k`` through the whole model.

    A dataset absent from a batch has ``L_k = 0`` and no gradient: its EMA row is not updated, and if it has none yet
    its λ is set to 0 and the others renormalised (MORE's batches hold every dataset, so this is only a fallback).

    Args:
      num_datasets: K.
      ema_decay: EMA weight of the old average, or None for the raw gradients.
      normalize: L2-normalise the K gradient rows before the QP.
      head_index: which reward head is trained.
      head_filter: ``nnx`` filter selecting the head's parameters inside the model (``RewardModel.score``).

    Metrics: ``lambda`` ``[K]``, ``dataset_losses`` ``[K]``, ``accuracy``.
    """
    if num_datasets < 1:
        raise ValueError(f"num_datasets must be >= 1, got {num_datasets}")
    if ema_decay is not None and not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must be in [0, 1] or None, got {ema_decay}")
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

    def fn(model, batch, rng, extras):
        del rng
        _pairs(batch)
        feats = model.features(batch["input_ids"], attention_mask=batch["attention_mask"])  # [B, 2, D]
        rewards = _rewards(model.head(feats), head_index)
        ids = jnp.asarray(batch["dataset_id"], jnp.int32)
        where = example_mask(batch, rewards.shape[0])
        losses, counts = dataset_losses(rewards, ids, where)
        grads = head_gradients(model, jax.lax.stop_gradient(feats), ids, where)
        present = counts > 0
        if ema_decay is None:
            avg, seen = grads, present
        else:
            updated = ema_update(extras["ema"], grads, decay=ema_decay)
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
        new_extras = extras if ema_decay is None else {"ema": avg, "seen": seen}
        return loss, metrics, new_extras

    def init_extras(model):
        """Zero EMA ``[K, P_head]`` and ``seen`` flags ``[K]`` (the head's size from an abstract evaluation)."""
        if ema_decay is None:
            return {}
        abstract = model if isinstance(model, nnx.Module) else nnx.eval_shape(model)
        _, head, _ = nnx.split(abstract, head_filter, ...)
        size = sum(math.prod(x.shape) for x in jax.tree.leaves(head))
        if not size:
            raise ValueError(f"head_filter {head_filter!r} selects no parameter of the model")
        return {"ema": jnp.zeros((num_datasets, size), jnp.float32), "seen": jnp.zeros((num_datasets,), bool)}

    return StatefulObjective(fn=fn, init_extras=init_extras)


# ----------------------------------------------------------------------------------------------------------------
# Learning to rank (rankers: features [B, L, F], where [B, L], labels [B, K, L]).


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


def ltr_listnet_objective(*, label_norm: str = "softmax", objective_index: int = 0) -> Callable:
    """ListNet (COS-DPO eq. 7) on a ranker's scores against ``labels[:, objective_index]``."""

    def objective(model, batch, rng):
        del rng
        where = _list_where(batch)
        scores = model(batch["features"], where=where)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listnet_loss(scores, labels, where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return objective


def ltr_cos_dpo_objective(*, sampling: COSDPOSampling = COSDPOSampling(), beta: float = 1.0, penalty: float = 0.0,
                          label_norm: str = "softmax", ref_mode: str = "model") -> Callable:
    """W/T-COS-DPO for rankers: ``model(features, where=, cond=c)`` with ``c = w`` or ``[w, d]`` (the ranker's
    ``cond_dim`` must be K or 2K); per-objective listwise-DPO losses on ``labels`` ``[B, K, L]``, scalarised with the
    cosine penalty. Reference scores from an :class:`mojax.models.AugmentedRanker`'s base (``"model"``) or
    ``batch["ref_scores"]`` (``"cached"``).
    """

    def objective(model, batch, rng):
        where = _list_where(batch)
        b = where.shape[0]
        w, direction = sample_conditioning(rng, b, sampling)
        cond = w if direction is None else jnp.concatenate([w, direction], axis=-1)
        scores = model(batch["features"], where=where, cond=cond)
        ref = _ranker_reference(model, batch, ref_mode)
        labels = jnp.asarray(batch["labels"], jnp.float32)
        return _cos_dpo_core(scores, ref, labels, w, direction, where, beta=beta, penalty=penalty,
                             label_norm=label_norm, per_example=sampling.per_example)

    return objective


def ltr_listwise_dpo_objective(*, beta: float = 1.0, label_norm: str = "softmax", objective_index: int = 0,
                               ref_mode: str = "model", cond: tuple[float, ...] | None = None) -> Callable:
    """Listwise DPO for a ranker on one objective (a fixed-w DPO-LS run when ``cond`` fixes a conditioning vector)."""

    def objective(model, batch, rng):
        del rng
        where = _list_where(batch)
        kwargs = {} if cond is None else {"cond": jnp.broadcast_to(jnp.asarray(cond, jnp.float32),
                                                                    (where.shape[0], len(cond)))}
        scores = model(batch["features"], where=where, **kwargs)
        ref = _ranker_reference(model, batch, ref_mode)
        labels = jnp.asarray(batch["labels"], jnp.float32)[:, objective_index]
        loss = L.listwise_dpo_loss(scores, ref, labels, beta=beta, where=where, label_norm=label_norm)
        return loss, {"count": _count(jnp.any(where, axis=-1))}

    return objective
