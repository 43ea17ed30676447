"""Shared pieces of the objectives: masks, policy and reference log-probs, COS-DPO conditioning and its core.

See :mod:`mojax.train.objectives` for the objective contract, the batch layout and the reference modes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mojax import losses as L

REF_MODES = ("cached", "model", "lora")
# Positions per sequence in one LM-head chunk (B·N·CHUNK_SIZE rows). 32: with packing (``compact``) the head's work
# is rounded up to whole chunks, so smaller chunks waste less; B·N·32 rows (512 at 8 pairs) still make GEMMs large
# enough that a smaller chunk was not slower (docs/benchmarks.md).
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


def policy_logps(model: nnx.Module, batch: Batch, *, chunk_size: int | None = CHUNK_SIZE, compact: bool = True,
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

    A packed batch (``segment_index``, :mod:`mojax.data.packing`) goes through
    :func:`mojax.data.packing.packed_sequence_logps` (same ``[B, N]`` result; ``compact`` is implied).
    """
    if "segment_index" in batch:
        if conditioning:
            raise ValueError("conditioning is per pair and cannot be given with a packed batch (rows hold many pairs)")
        from mojax.data.packing import packed_sequence_logps
        return packed_sequence_logps(model, batch, chunk_size=chunk_size, use_lora=use_lora)
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
    head = getattr(model, "output_head", None)  # a Decoder's soft-cap (Gemma 2) goes to the chunked head
    unembedding, softcap = head() if head is not None else (model.unembedding(), None)
    chunk_size = max(chunk_size, -(-MIN_CHUNK_LOGITS // (b * n * unembedding.shape[-1])))
    if compact:
        logps = L.compact_sequence_logps_from_hidden(hidden, unembedding, targets, where=where,
                                                     chunk_rows=b * n * chunk_size, logit_softcap=softcap)
    else:
        logps = L.sequence_logps_from_hidden(hidden, unembedding, targets, where=where, chunk_size=chunk_size,
                                             logit_softcap=softcap)
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
        out = policy_logps(model.reference, batch, chunk_size=chunk_size, compact=compact)
    elif ref_mode == "lora":
        base = getattr(_policy(model), "backbone", _policy(model))  # a ConditionedLM's reference has no prefix
        out = policy_logps(base, batch, chunk_size=chunk_size, compact=compact, use_lora=False)
    else:
        raise ValueError(f"unknown ref_mode {ref_mode!r}; expected one of {REF_MODES}")
    return jax.lax.stop_gradient(out)


def _check_ref_mode(ref_mode: str) -> None:
    if ref_mode not in REF_MODES:
        raise ValueError(f"unknown ref_mode {ref_mode!r}; expected one of {REF_MODES}")


def _pairs(batch: Batch) -> None:
    n = jnp.shape(batch["segment_index" if "segment_index" in batch else "input_ids"])[1]  # packed: [B, N]
    if n != 2:
        raise ValueError(f"a pairwise objective needs N = 2 responses (chosen, rejected), got N = {n}")


def _lengths(batch: Batch) -> jax.Array:
    """Response token counts ``[B, N]`` (the SimPO / CPO ``|y|``)."""
    if "segment_index" in batch:
        from mojax.data.packing import packed_lengths
        return packed_lengths(batch)
    return jnp.sum(jnp.asarray(batch["loss_mask"]), axis=-1).astype(jnp.float32)


class LMInputs(NamedTuple):
    """What every LM objective starts from (:class:`LMOpening`): log-probs, reference, mask, lengths, count."""

    logps: jax.Array  # [B, N] policy log-probs (with gradient)
    ref: jax.Array | None  # [B, N] reference log-probs under stop_gradient, None without a reference
    where: jax.Array  # [B] bool, real examples
    lengths: jax.Array  # [B, N] response token counts
    count: jax.Array  # float32 [], number of real examples

    def mean(self, x: jax.Array) -> jax.Array:
        """Masked mean over the real examples of ``stop_gradient(x)`` ``[B]`` (for metrics)."""
        x = jax.lax.stop_gradient(x)
        return jnp.sum(jnp.where(self.where, x, 0.0)) / jnp.maximum(self.count, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMOpening:
    """The shared opening of the LM objectives, configured once per objective (a hashable static choice).

    Attributes:
      ref_mode: one of :data:`REF_MODES`, or None for objectives without (or with their own table of) references.
      chunk_size, compact: the log-prob path (see :func:`policy_logps`).
      pairs: require N = 2 responses (chosen, rejected).
    """

    ref_mode: str | None = "cached"
    chunk_size: int | None = CHUNK_SIZE
    compact: bool = True
    pairs: bool = False

    def __post_init__(self):
        if self.ref_mode is not None:
            _check_ref_mode(self.ref_mode)
        c = self.chunk_size
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {c!r}")

    def policy(self, model: nnx.Module, batch: Batch, *,
               conditioning: Mapping[str, jax.Array] | None = None) -> jax.Array:
        """Policy log-probs ``[B, N]`` (the policy of an :class:`AnchoredPolicy`)."""
        return policy_logps(_policy(model), batch, chunk_size=self.chunk_size, compact=self.compact,
                            conditioning=conditioning)

    def __call__(self, model: nnx.Module, batch: Batch, *,
                 conditioning: Mapping[str, jax.Array] | None = None) -> LMInputs:
        """Policy and reference log-probs, example mask, lengths and count of one batch."""
        if self.pairs:
            _pairs(batch)
        logps = self.policy(model, batch, conditioning=conditioning)
        ref = None if self.ref_mode is None else reference_logps(model, batch, ref_mode=self.ref_mode,
                                                                 chunk_size=self.chunk_size, compact=self.compact)
        where = example_mask(batch, logps.shape[0])
        return LMInputs(logps=logps, ref=ref, where=where, lengths=_lengths(batch), count=_count(where))


def cached_fn(builder: Callable[..., Callable]) -> Callable[..., Callable]:
    """Memoise an objective's ``fn`` builder on its static arguments, so that factories called again with the same
    static options (and any hyper-parameter values) return the *same* ``fn`` — one compiled step for a sweep.

    Unhashable arguments build a fresh ``fn`` (correct, only not shared).
    """
    cached = functools.lru_cache(maxsize=256)(builder)

    @functools.wraps(builder)
    def get(*args):
        try:
            hash(args)
        except TypeError:
            return builder(*args)
        return cached(*args)

    return get




# ----------------------------------------------------------------------------------------------------------------
# COS-DPO conditioning and its scalarised listwise core (LM and ranking objectives).


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

