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
import numpy as np
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
    :func:`mojax.data.packing.packed_sequence_logps` (same ``[B, N]`` result; ``compact`` is implied); a
    shared-prompt batch (``prompt_ids``, :func:`split_shared_prompt`) through :func:`shared_prompt_logps`.
    """
    if "prompt_ids" in batch:
        if conditioning:
            raise ValueError("conditioning cannot be given with a shared-prompt batch")
        return shared_prompt_logps(model, batch, chunk_size=chunk_size, compact=compact, use_lora=use_lora)
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
    return _head_logps(model, hidden, targets, where, chunk_size=chunk_size, compact=compact).reshape(b, n)


def _head_logps(model, hidden, targets, where, *, chunk_size: int, compact: bool) -> jax.Array:
    """Summed log-probs ``[R]`` of ``targets [R, T]`` at ``where`` from final-normed ``hidden [R, T, D]``."""
    rows = hidden.shape[0]
    head = getattr(model, "output_head", None)  # a Decoder's soft-cap (Gemma 2) goes to the chunked head
    unembedding, softcap = head() if head is not None else (model.unembedding(), None)
    chunk_size = max(chunk_size, -(-MIN_CHUNK_LOGITS // (rows * unembedding.shape[-1])))
    if compact:
        return L.compact_sequence_logps_from_hidden(hidden, unembedding, targets, where=where,
                                                    chunk_rows=rows * chunk_size, logit_softcap=softcap)
    return L.sequence_logps_from_hidden(hidden, unembedding, targets, where=where, chunk_size=chunk_size,
                                        logit_softcap=softcap)


# ----------------------------------------------------------------------------------------------------------------
# Shared prompt: the prompt of a pair runs once, its keys/values serve every response (issue 13 §3).


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-int(n) // multiple) * multiple)


def split_shared_prompt(batch: Mapping[str, np.ndarray], *, multiple: int = 16) -> dict[str, np.ndarray]:
    """The shared-prompt layout of a host batch whose N responses of an example share their prompt.

    Input: the ordinary right-padded layout, ``input_ids``/``attention_mask``/``loss_mask`` ``[B, N, T]`` with
    each row ``prompt + response`` (:func:`mojax.data.tokenize.collate`). The prompt of example b is its tokens
    before the first loss token; it must be identical in all N rows (``ValueError`` otherwise).

    Output: ``prompt_ids``, ``prompt_mask`` ``[B, Tp]`` (right-padded) and the responses alone as ``input_ids``,
    ``attention_mask``, ``loss_mask`` ``[B, N, Tr]`` (right-padded), ``Tp`` and ``Tr`` the longest prompt and
    response rounded up to ``multiple`` (few shapes, few compiles); every other entry unchanged. The LM objectives
    then run each prompt once (:func:`shared_prompt_logps`): ``B·Tp + B·N·Tr`` token slots instead of ``B·N·T``.
    """
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]).astype(bool)
    loss = np.asarray(batch["loss_mask"]).astype(bool) & mask
    if ids.ndim != 3:
        raise ValueError(f"input_ids must be [B, N, T], got shape {ids.shape}")
    b, n, t = ids.shape
    real = mask.sum(-1)  # [B, N]; rows are right-padded
    if not (mask == (np.arange(t) < real[..., None])).all():
        raise ValueError("split_shared_prompt needs right-padded rows (attention_mask a prefix of ones)")
    first = np.where(loss.any(-1), loss.argmax(-1), real)  # [B, N] first loss token (or the row's end)
    plen = first.min(-1)  # [B]
    same = (ids == ids[:, :1]) | (np.arange(t) >= plen[:, None, None])
    if not same.all():
        bad = int(np.argmin(same.all((1, 2))))
        raise ValueError(f"example {bad}: its responses do not share the prompt (the tokens before the first loss "
                         "token differ), so the prompt cannot be computed once")
    tp = _bucket(max(int(plen.max()), 1), multiple)
    rlen = real - plen[:, None]
    tr = _bucket(max(int(rlen.max()), 1), multiple)
    prompt_ids = np.zeros((b, tp), ids.dtype)
    prompt_mask = np.zeros((b, tp), np.int32)
    r_ids = np.zeros((b, n, tr), ids.dtype)
    r_mask = np.zeros((b, n, tr), np.int32)
    r_loss = np.zeros((b, n, tr), bool)
    for i in range(b):
        p = int(plen[i])
        prompt_ids[i, :p], prompt_mask[i, :p] = ids[i, 0, :p], 1
        for j in range(n):
            r = int(rlen[i, j])
            r_ids[i, j, :r] = ids[i, j, p:p + r]
            r_mask[i, j, :r] = 1
            r_loss[i, j, :r] = loss[i, j, p:p + r]
    return {**batch, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "input_ids": r_ids,
            "attention_mask": r_mask, "loss_mask": r_loss}


def shared_prompt_logps(model: nnx.Module, batch: Batch, *, chunk_size: int | None = CHUNK_SIZE,
                        compact: bool = True, use_lora: bool = True) -> jax.Array:
    """Summed response log-probs ``[B, N]`` of a shared-prompt batch (:func:`split_shared_prompt`), each prompt
    computed once.

    The prompts ``[B, Tp]`` run through the decoder's KV-cache path (with gradients); their keys/values, repeated
    for the N responses, are the cache the responses ``[B·N, Tr]`` are then appended to: a response token attends
    to the prompt's real tokens and to the earlier tokens of its own response, with positions continuing from the
    prompt's length — the attention and positions of the unshared row ``prompt + response``. The first response
    token is predicted from the prompt's last hidden state. Equal to :func:`policy_logps` on the unsplit batch up
    to float rounding (tested ≤ 1e-5, gradients too). Needs a decoder with ``init_cache`` whose sliding window (if
    any) covers ``Tp + Tr`` slots (the cache's slot distances include the prompt's padding).
    """
    from mojax.models.decoder import KVCache  # the objectives do not import the models at module level

    if not hasattr(model, "init_cache"):
        raise TypeError(f"a shared-prompt batch needs a decoder with a KV cache (init_cache); got "
                        f"{type(model).__name__}")
    prompt, pmask = jnp.asarray(batch["prompt_ids"]), jnp.asarray(batch["prompt_mask"]).astype(bool)
    ids = jnp.asarray(batch["input_ids"])
    if ids.ndim != 3 or prompt.ndim != 2 or prompt.shape[0] != ids.shape[0]:
        raise ValueError(f"a shared-prompt batch needs prompt_ids [B, Tp] and input_ids [B, N, Tr], got "
                         f"{prompt.shape} and {ids.shape}")
    b, n, tr = ids.shape
    tp = prompt.shape[1]
    c = getattr(model, "config", None)
    if c is not None and any(c.sliding_layers) and c.sliding_window < tp + tr:
        raise ValueError(f"shared_prompt: sliding window {c.sliding_window} < {tp + tr} slots; the prompt's padding "
                         "would count towards the window — use the unshared layout")
    hidden_p, cache = model(prompt, attention_mask=pmask, cache=model.init_cache(b, tp), return_hidden=True,
                            use_lora=use_lora)  # [B, Tp, D]
    plen = jnp.sum(pmask, axis=-1, dtype=jnp.int32)  # [B]
    last = jnp.take_along_axis(hidden_p, jnp.maximum(plen - 1, 0)[:, None, None], axis=1)  # [B, 1, D]

    def widen(kv, axis):  # [.., B, Tp, K, h] -> [.., B·N, Tp + Tr, K, h]: each prompt's keys for its N responses
        kv = jnp.repeat(kv, n, axis=axis)
        pad = [(0, 0)] * kv.ndim
        pad[axis + 1] = (0, tr)
        return jnp.pad(kv, pad)

    if isinstance(cache.keys, (tuple, list)):
        keys, values = tuple(widen(k, 0) for k in cache.keys), tuple(widen(v, 0) for v in cache.values)
    else:  # a scanned model's stacked [L, B, S, K, h] cache
        keys, values = widen(cache.keys, 1), widen(cache.values, 1)
    shared = KVCache(keys=keys, values=values,
                     key_mask=jnp.pad(jnp.repeat(pmask, n, axis=0), ((0, 0), (0, tr))),
                     index=jnp.asarray(tp, jnp.int32), lengths=jnp.repeat(plen, n))
    flat = lambda x: jnp.asarray(x).reshape(b * n, tr)  # noqa: E731
    hidden_r, _ = model(flat(ids), attention_mask=flat(batch["attention_mask"]).astype(bool), cache=shared,
                        return_hidden=True, use_lora=use_lora)  # [B·N, Tr, D]
    # Position 0 holds the prompt's last state (it predicts response token 0), then the response's own states.
    hidden = jnp.concatenate([jnp.repeat(last, n, axis=0).astype(hidden_r.dtype), hidden_r], axis=1)
    aligned = jnp.concatenate([jnp.zeros((b * n, 1), ids.dtype), flat(ids)], axis=1)
    loss = jnp.concatenate([jnp.zeros((b * n, 1), bool), flat(batch["loss_mask"]).astype(bool)], axis=1)
    targets, where = L.next_token_targets(aligned, loss)
    # An empty prompt has no state before response token 0: that token is not predicted (as in the unshared row).
    where = where.at[:, 0].set(where[:, 0] & jnp.repeat(plen > 0, n))
    if chunk_size is None:
        unembedding, softcap = model.output_head()
        logits = jnp.dot(hidden, unembedding.astype(hidden.dtype), preferred_element_type=jnp.float32)
        if softcap is not None:
            logits = jnp.tanh(logits / softcap) * softcap
        return L.sequence_logps(logits, targets, where=where).reshape(b, n)
    return _head_logps(model, hidden, targets, where, chunk_size=chunk_size, compact=compact).reshape(b, n)


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
      shared_prompt: require the shared-prompt layout (:func:`split_shared_prompt`: ``prompt_ids`` beside the
        responses), whose prompt is computed once for all N responses (:func:`shared_prompt_logps`) — for the
        policy and a model/LoRA reference alike. A batch in that layout is recognised without the flag too; the flag
        makes a pipeline that forgot to split fail at trace time instead of silently running the prompt N times.
    """

    ref_mode: str | None = "cached"
    chunk_size: int | None = CHUNK_SIZE
    compact: bool = True
    pairs: bool = False
    shared_prompt: bool = False

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
        if self.shared_prompt and "prompt_ids" not in batch:
            raise ValueError("LMOpening(shared_prompt=True) needs a shared-prompt batch (prompt_ids, prompt_mask and "
                             "the responses alone: mojax.train.objectives.split_shared_prompt)")
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

