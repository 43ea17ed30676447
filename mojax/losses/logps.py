"""Sequence log-probabilities from logits, or from hidden states without ever building ``[B, T, V]`` logits.

Alignment convention: ``logits[..., t, :]`` scores ``targets[..., t]``. A causal LM's logits at position t
predict token t+1, so callers holding the batch layout (``input_ids``, ``loss_mask`` with ``loss_mask[t]``
True for response tokens) first call :func:`next_token_targets`, which shifts targets and mask left by one
and pads the end, so the logits never need slicing (a slice of ``[B, T, V]`` would be a copy).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mojax.losses._base import Array, as_float, check_where

__all__ = [
    "compact_sequence_logps_from_hidden",
    "next_token_targets",
    "sequence_logps",
    "sequence_logps_from_hidden",
    "sft_loss",
    "sft_loss_from_logps",
    "token_counts",
    "token_logps",
]


def next_token_targets(input_ids: Array, loss_mask: Array) -> tuple[Array, Array]:
    """Shift ``input_ids`` and ``loss_mask`` ``[..., T]`` left by one so position t holds token t+1.

    Returns ``(targets, where)`` of shape ``[..., T]``: ``targets[t] = input_ids[t+1]``,
    ``where[t] = loss_mask[t+1]``; the last position is padding (target 0, where False). Use with logits
    ``[..., T, V]`` straight from a causal LM.

    >>> import jax.numpy as jnp
    >>> t, w = next_token_targets(jnp.array([5, 6, 7]), jnp.array([False, True, True]))
    >>> t.tolist(), w.tolist()
    ([6, 7, 0], [True, True, False])
    """
    loss_mask = jnp.asarray(loss_mask)
    if loss_mask.dtype != jnp.bool_:
        raise TypeError(f"loss_mask must be boolean, got {loss_mask.dtype}")
    if input_ids.shape != loss_mask.shape:
        raise ValueError(f"input_ids {input_ids.shape} and loss_mask {loss_mask.shape} differ in shape")
    pad_ids = jnp.zeros(input_ids.shape[:-1] + (1,), input_ids.dtype)
    pad_mask = jnp.zeros(loss_mask.shape[:-1] + (1,), jnp.bool_)
    targets = jnp.concatenate([input_ids[..., 1:], pad_ids], axis=-1)
    where = jnp.concatenate([loss_mask[..., 1:], pad_mask], axis=-1)
    return targets, where


def token_counts(where: Array) -> Array:
    """Number of valid tokens per sequence, ``sum(where, -1)`` as float32 (the SimPO length ``|y|``)."""
    return jnp.sum(jnp.asarray(where), axis=-1).astype(jnp.float32)


def _check_targets(targets: Array, where: Array, lead_t: tuple[int, ...]) -> tuple[Array, Array]:
    if targets.shape != lead_t:
        raise ValueError(f"targets have shape {targets.shape}, expected {lead_t} (logits/hidden minus last axis)")
    where = check_where(where, lead_t)
    # Padding targets may be -100 or any id; replace them so the gather stays in range.
    return jnp.where(where, targets, 0).astype(jnp.int32), where


def _token_logps_from_logits(logits: Array, targets: Array) -> Array:
    # log_softmax(x)[y] = x[y] - logsumexp(x), in float32 even for bf16 logits.
    logits = as_float(logits)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_logps(logits: Array, targets: Array, *, where: Array) -> Array:
    r"""Per-token log-probabilities :math:`\log\mathrm{softmax}(\text{logits}_t)[y_t]`, 0 where masked.

    Args:
      logits: ``[..., T, V]`` (any float dtype; computed in float32 or wider).
      targets: int ``[..., T]``, aligned with ``logits`` (see :func:`next_token_targets`).
      where: bool ``[..., T]``, True for tokens that count.

    Returns:
      ``[..., T]`` float32 log-probs.
    """
    targets, where = _check_targets(jnp.asarray(targets), where, logits.shape[:-1])
    return jnp.where(where, _token_logps_from_logits(logits, targets), 0.0)


def sequence_logps(logits: Array, targets: Array, *, where: Array) -> Array:
    r"""Summed response log-probability :math:`\log\pi(y|x) = \sum_t m_t \log\mathrm{softmax}(z_t)[y_t]`.

    Args:
      logits: ``[..., T, V]``; log-softmax runs in float32 even for bf16 logits.
      targets: int ``[..., T]`` aligned with ``logits`` (see :func:`next_token_targets`).
      where: bool ``[..., T]``; masked tokens (prompt, padding) contribute 0.

    Returns:
      ``[...]`` float32 sequence log-probs (the input to every preference loss; ``logp`` in docs/methods/dpo-family.md).

    >>> import jax.numpy as jnp
    >>> logits = jnp.zeros((2, 4))            # uniform over V = 4
    >>> print(f"{float(sequence_logps(logits, jnp.array([1, 2]), where=jnp.array([True, True]))):.4f}")
    -2.7726
    """
    return jnp.sum(token_logps(logits, targets, where=where), axis=-1)


def _softcap(logits: Array, cap: float | None) -> Array:
    """``cap · tanh(logits / cap)`` (Gemma 2's final-logit soft-cap); the logits unchanged for ``cap=None``."""
    if cap is None:
        return logits
    if not cap > 0:
        raise ValueError(f"logit_softcap must be positive or None, got {cap}")
    return jnp.tanh(logits / cap) * cap


def sequence_logps_from_hidden(
    hidden: Array,
    unembedding: Array,
    targets: Array,
    *,
    where: Array,
    chunk_size: int = 128,
    logit_softcap: float | None = None,
) -> Array:
    r""":func:`sequence_logps` of ``logits = hidden @ unembedding`` without materialising ``[..., T, V]``.

    The token axis is cut into chunks of ``chunk_size``; a ``jax.lax.scan`` computes one chunk's logits
    ``[..., C, V]`` in float32, reduces them to summed log-probs and drops them. The chunk body is wrapped in
    ``jax.checkpoint`` so the backward pass recomputes each chunk's logits instead of storing them: peak
    memory is :math:`O(B \cdot C \cdot V)` forward and backward, against :math:`O(B \cdot T \cdot V)` for the
    naive path. Values and gradients equal the naive ones up to float32 summation order.

    Args:
      hidden: ``[..., T, D]`` final hidden states (after the final norm).
      unembedding: ``[D, V]`` output projection (for tied embeddings pass ``embedding.T``).
      targets: int ``[..., T]`` aligned with ``hidden`` (see :func:`next_token_targets`).
      where: bool ``[..., T]``.
      chunk_size: tokens per chunk; T is zero-padded up to a multiple of it. With ``chunk_size >= T`` there is one
        chunk: no loop and no recompute.
      logit_softcap: the logits are ``cap · tanh(hidden @ unembedding / cap)`` (Gemma 2's final soft-cap), applied
        in float32 to each chunk's logits; ``None`` for plain logits.

    Returns:
      ``[...]`` float32 sequence log-probs.
    """
    hidden = jnp.asarray(hidden)
    unembedding = jnp.asarray(unembedding)
    if hidden.ndim < 2 or unembedding.ndim != 2 or hidden.shape[-1] != unembedding.shape[0]:
        raise ValueError(f"need hidden [..., T, D] and unembedding [D, V]; got {hidden.shape} and {unembedding.shape}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    *lead, t_len, d = hidden.shape
    lead = tuple(lead)
    targets, where = _check_targets(jnp.asarray(targets), where, lead + (t_len,))

    chunk = min(chunk_size, t_len)
    out_dtype = jnp.promote_types(jnp.promote_types(hidden.dtype, unembedding.dtype), jnp.float32)
    if chunk == t_len:  # one chunk: no loop, no recompute (the bound is the same: these logits are one chunk's)
        logits = _softcap(jnp.einsum("...TD,DV->...TV", hidden, unembedding, preferred_element_type=jnp.float32),
                          logit_softcap)
        tok = jnp.where(where, _token_logps_from_logits(logits, targets), 0.0)
        return jnp.sum(tok.astype(out_dtype), axis=-1)
    n_chunks = -(-t_len // chunk)
    pad = n_chunks * chunk - t_len
    if pad:
        widths = [(0, 0)] * len(lead) + [(0, pad)]
        hidden = jnp.pad(hidden, widths + [(0, 0)])
        targets = jnp.pad(targets, widths)
        where = jnp.pad(where, widths)
    # Chunk axis first for scan: [n, ..., C, D], [n, ..., C].
    hidden = jnp.moveaxis(hidden.reshape(lead + (n_chunks, chunk, d)), -3, 0)
    targets = jnp.moveaxis(targets.reshape(lead + (n_chunks, chunk)), -2, 0)
    where = jnp.moveaxis(where.reshape(lead + (n_chunks, chunk)), -2, 0)

    @jax.checkpoint
    def chunk_logps(h_c: Array, t_c: Array, w_c: Array, w_out: Array) -> Array:
        logits = _softcap(jnp.einsum("...CD,DV->...CV", h_c, w_out, preferred_element_type=jnp.float32),
                          logit_softcap)
        return jnp.sum(jnp.where(w_c, _token_logps_from_logits(logits, t_c), 0.0), axis=-1)

    def body(total: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        h_c, t_c, w_c = xs
        return total + chunk_logps(h_c, t_c, w_c, unembedding), None

    total, _ = jax.lax.scan(body, jnp.zeros(lead, out_dtype), (hidden, targets, where))
    return total


def compact_sequence_logps_from_hidden(
    hidden: Array,
    unembedding: Array,
    targets: Array,
    *,
    where: Array,
    chunk_rows: int = 512,
    logit_softcap: float | None = None,
) -> Array:
    r""":func:`sequence_logps` of ``logits = hidden @ unembedding``, computing logits only where ``where`` is True.

    The same value as :func:`sequence_logps_from_hidden`, for work proportional to the number of *loss positions*
    instead of every position: prompt and padding positions never reach the LM head. The ``[M·T]`` positions of
    the flattened leading axes are packed, loss positions first (a stable sort of the mask, so their order is kept),
    and cut into chunks of ``chunk_rows`` rows; a ``jax.lax.scan`` computes one chunk's ``[chunk_rows, V]`` logits
    and token log-probs, and a ``jax.lax.cond`` skips every chunk past the last loss position (forward and
    backward). Token log-probs are scattered back to their positions and summed per sequence.

    Memory: the body (``cond`` included) runs under ``jax.checkpoint``, so the backward pass recomputes a chunk's
    logits instead of storing them and the scan saves only its per-chunk inputs (``[chunk_rows, D]`` hidden rows);
    peak head memory is :math:`O(\text{chunk\_rows} \cdot V)` forward and backward. When all ``M·T`` positions
    fit in one chunk there is no loop, no packing and no recompute: the logits of that one chunk are the bound.

    When to prefer :func:`sequence_logps_from_hidden`: when every position is a loss position (packing saves
    nothing), and under ``jax.vmap`` over a batched ``where`` — ``cond`` then becomes a select that computes both
    branches, so no chunk is skipped. Values and gradients equal the full-logits ones up to summation order.

    Args:
      hidden: ``[..., T, D]`` final hidden states (after the final norm). Rows where ``where`` is False are never
        read (NaN there gives no NaN value or gradient).
      unembedding: ``[D, V]`` output projection (for tied embeddings pass ``embedding.T``).
      targets: int ``[..., T]`` aligned with ``hidden`` (see :func:`next_token_targets`); ignored where masked.
      where: bool ``[..., T]``; True at loss positions.
      chunk_rows: LM-head rows per chunk (positions of the whole flattened batch, not per sequence): the GEMM size
        and the memory bound. Work is ``ceil(#loss positions / chunk_rows) · chunk_rows`` rows.
      logit_softcap: the logits are ``cap · tanh(hidden @ unembedding / cap)`` (Gemma 2), in float32; ``None``: plain.

    Returns:
      ``[...]`` sequence log-probs (float32, or wider when the inputs are, e.g. float64 under x64).

    >>> import jax.numpy as jnp
    >>> h, w_out = jnp.zeros((1, 3, 2)), jnp.zeros((2, 4))        # uniform over V = 4
    >>> where = jnp.array([[False, True, True]])
    >>> lp = compact_sequence_logps_from_hidden(h, w_out, jnp.array([[0, 1, 2]]), where=where, chunk_rows=2)
    >>> print(f"{float(lp[0]):.4f}")
    -2.7726
    """
    hidden = jnp.asarray(hidden)
    unembedding = jnp.asarray(unembedding)
    if hidden.ndim < 2 or unembedding.ndim != 2 or hidden.shape[-1] != unembedding.shape[0]:
        raise ValueError(f"need hidden [..., T, D] and unembedding [D, V]; got {hidden.shape} and {unembedding.shape}")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    *lead, t_len, d = hidden.shape
    lead = tuple(lead)
    targets, where = _check_targets(jnp.asarray(targets), where, lead + (t_len,))
    n = math.prod(lead) * t_len
    # float32 logits for bf16/f32 inputs; float64 stays float64 (exact checks under x64).
    acc_dtype = jnp.promote_types(jnp.promote_types(hidden.dtype, unembedding.dtype), jnp.float32)
    flat_h = hidden.reshape(n, d)
    flat_t = targets.reshape(n)
    flat_w = where.reshape(n)

    def row_logps(h: Array, t: Array, w_out: Array) -> Array:
        logits = _softcap(jnp.dot(h, w_out, preferred_element_type=acc_dtype), logit_softcap)  # [R, V]
        return _token_logps_from_logits(logits, t)

    if n <= chunk_rows:
        # One chunk holds every position: a plain head, no packing, loop or recompute (3 GEMMs, not 4).
        tok = jnp.where(flat_w, row_logps(jnp.where(flat_w[:, None], flat_h, 0), flat_t, unembedding), 0.0)
        return jnp.sum(tok.reshape(lead + (t_len,)), axis=-1)

    n_chunks = -(-n // chunk_rows)
    rows = n_chunks * chunk_rows
    # Loss positions first, in their original order; the tail past n points at row 0 and is masked out.
    order = jnp.argsort(jnp.logical_not(flat_w), stable=True).astype(jnp.int32)
    order = jnp.concatenate([order, jnp.zeros((rows - n,), jnp.int32)])
    valid = jnp.take(flat_w, order) & (jnp.arange(rows) < n)
    # Zero the rows that carry no loss: masked positions are never read, so NaN there cannot reach a gradient.
    packed_h = jnp.where(valid[:, None], jnp.take(flat_h, order, axis=0), 0).reshape(n_chunks, chunk_rows, d)
    packed_t = jnp.take(flat_t, order).reshape(n_chunks, chunk_rows)
    valid = valid.reshape(n_chunks, chunk_rows)
    count = jnp.sum(flat_w, dtype=jnp.int32)

    # The checkpoint wraps the cond too: then the scan's residuals are only its inputs. With the checkpoint
    # inside the cond, the cond returns the chunk's residuals (the [D, V] unembedding among them) as loop-variant
    # outputs and the scan stacks one copy per chunk.
    @jax.checkpoint
    def body(carry: None, xs: tuple[Array, Array, Array, Array]) -> tuple[None, Array]:
        i, h_c, t_c, v_c = xs
        lp = jax.lax.cond(i * chunk_rows < count, lambda: row_logps(h_c, t_c, unembedding),
                          lambda: jnp.zeros((chunk_rows,), acc_dtype))
        return carry, jnp.where(v_c, lp, 0.0)

    _, packed_lp = jax.lax.scan(body, None, (jnp.arange(n_chunks), packed_h, packed_t, valid))
    tok = jnp.zeros((n,), acc_dtype).at[order].add(packed_lp.reshape(rows))  # padding rows add 0 to row 0
    return jnp.sum(tok.reshape(lead + (t_len,)), axis=-1)


def sft_loss(logits: Array, targets: Array, *, where: Array, return_metrics: bool = False):
    r"""Token-level negative log-likelihood, normalised by token count (sum / count, not a mean of means).

    .. math:: L_{SFT} = -\frac{\sum_{b,t} m_{bt} \log\mathrm{softmax}(z_{bt})[y_{bt}]}{\max(\sum_{b,t} m_{bt}, 1)}

    Args:
      logits: ``[..., T, V]``; targets: int ``[..., T]``; where: bool ``[..., T]``.
      return_metrics: also return ``{"nll_sum", "num_tokens"}`` so gradient accumulation can keep sum/count.

    Returns:
      Scalar loss (0 with zero gradient when no token is valid), or ``(loss, metrics)``.
    """
    tok = token_logps(logits, targets, where=where)
    return _nll_sum_over_count(-jnp.sum(tok), jnp.sum(jnp.asarray(where)), return_metrics)


def sft_loss_from_logps(
    sequence_logps: Array, num_tokens: Array, *, where: Array | None = None, return_metrics: bool = False
):
    r"""The same token-normalised NLL from summed sequence log-probs: :math:`-\sum_b \log\pi(y_b) / \sum_b |y_b|`.

    Args:
      sequence_logps: ``[...]`` summed log-probs (e.g. of chosen responses, for Stable PO's lower level).
      num_tokens: ``[...]`` token counts :math:`|y_b|` (:func:`token_counts`).
      where: optional bool ``[...]`` example mask.
    """
    sequence_logps = as_float(sequence_logps)
    num_tokens = as_float(num_tokens)
    where = check_where(where, jnp.broadcast_shapes(sequence_logps.shape, num_tokens.shape))
    if where is not None:
        sequence_logps = jnp.where(where, sequence_logps, 0.0)
        num_tokens = jnp.where(where, num_tokens, 0.0)
    return _nll_sum_over_count(-jnp.sum(sequence_logps), jnp.sum(num_tokens), return_metrics)


def _nll_sum_over_count(nll_sum: Array, count: Array, return_metrics: bool):
    count = count.astype(nll_sum.dtype)
    loss = nll_sum / jnp.maximum(count, 1.0)
    if return_metrics:
        return loss, {"nll_sum": nll_sum, "num_tokens": count}
    return loss
