"""Packed preference batches: several pairs' sequences per row, told apart by segment ids (issue 13 §3).

The padded layout (:func:`~mojax.data.tokenize.collate`) gives every response its own row ``[B, N, T]`` padded to
the longest row of the batch; on HH-RLHF most of those tokens are padding. The packed layout puts each sequence
``prompt + response_n`` of every pair as one *segment* of a row ``[R, T]`` (first-fit decreasing, so rows fill up):

``input_ids / attention_mask / loss_mask / segment_ids / positions`` ``[R, T]``
    ``segment_ids`` are 1..S within a row (0 = padding); ``positions`` restart at 0 in every segment; ``loss_mask``
    marks each segment's response tokens (the per-segment loss mask).
``segment_index`` int32 ``[B, N]``
    where response n of pair b lives: ``row · S + (segment_id − 1)`` in the row-major ``[R, S]`` table of
    per-segment sums (:func:`segment_sums`).
``segment_lengths`` int32 ``[R, S]``
    response tokens per segment (its shape carries the static S; gathered, the SimPO/CPO ``|y|``).
``labels [B, K, N]``, ``dataset_id [B]``, ``example_mask [B]``
    as in the padded layout (per pair, not per row).

Where the responses of a pair go: anywhere. The preference losses need only the per-sequence log-probs
``[B, N]``, which the objective gathers from the per-segment sums through ``segment_index``; nothing in the loss
couples two rows. So each sequence is packed on its own, into rows of ``row_length`` = the unpacked maximum
length (a pair kept whole would need rows of twice that, or leave holes). A shared prompt (one prompt per pair
whose keys both responses attend to) would need the pair in one row; that is not what this packer does.

Determinism and resume: :func:`pack_examples` is a pure function of the examples it is given (a stable sort by
length, ties by position), so as the ``batch_fn`` of :func:`~mojax.data.pipeline.make_dataset` the pipeline's
Grain iterator state still resumes exactly: the same step gets the same examples and hence the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from mojax.data.readers import TokenizedExample

__all__ = ["PackConfig", "pack_examples", "packing_batch_fn", "segment_sums", "packed_sequence_logps",
           "packed_lengths", "is_packed", "padding_fraction"]

# As in mojax.train.objectives._common: a head chunk holds at least this many logits (chunking only bounds memory).
MIN_CHUNK_LOGITS = 2 ** 24


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """Options of :func:`pack_examples`.

    Attributes:
      row_length: tokens per packed row (T); every sequence ``prompt + response`` must fit (truncate first).
      max_segments: segments per row at most (S, a static shape: the per-segment table is ``[R, S]``).
      rows: rows per batch (R). None = as many as the batch needs, rounded up to ``row_multiple`` (the shape then
        varies a little between batches: a few compiles). An int fixes R (needed when several processes must
        agree on shapes); a batch that does not fit raises.
      row_multiple: with ``rows=None``, round the row count up to a multiple of this.
      pad_id: token id of padding positions.
    """

    row_length: int
    max_segments: int = 16
    rows: int | None = None
    row_multiple: int = 1
    pad_id: int = 0

    def __post_init__(self):
        for name in ("row_length", "max_segments", "row_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.rows is not None and (not isinstance(self.rows, int) or self.rows < 1):
            raise ValueError(f"rows must be a positive int or None, got {self.rows!r}")


def pack_examples(examples: Sequence[TokenizedExample], config: PackConfig, *,
                  batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Pack examples' sequences into rows (first-fit decreasing; deterministic): the packed layout above.

    Args:
      examples: 1..B tokenised examples with the same N responses and K objectives.
      config: :class:`PackConfig`.
      batch_size: pad the example axis to this many; filler examples reuse example 0's segments with
        ``example_mask`` False (no extra tokens).
    """
    if not examples:
        raise ValueError("pack_examples needs at least one example")
    n, k = len(examples[0].response_ids), examples[0].labels.shape[0]
    b = len(examples) if batch_size is None else batch_size
    if b < len(examples):
        raise ValueError(f"batch_size={b} is smaller than the {len(examples)} examples given")
    t, s_max = config.row_length, config.max_segments
    seqs = []  # (length, example, response)
    for i, ex in enumerate(examples):
        if len(ex.response_ids) != n or ex.labels.shape[0] != k:
            raise ValueError("all examples of a batch need the same N responses and K objectives")
        for j, r in enumerate(ex.response_ids):
            length = len(ex.prompt_ids) + len(r)
            if length > t:
                raise ValueError(f"a sequence of {length} tokens exceeds row_length={t}: truncate first")
            seqs.append((length, i, j))
    # First-fit decreasing; the stable sort on (-length) keeps example order among equal lengths (determinism).
    order = sorted(range(len(seqs)), key=lambda q: -seqs[q][0])
    fill: list[int] = []  # tokens used per row
    count: list[int] = []  # segments per row
    place = [(0, 0, 0)] * len(seqs)  # (row, segment id, start)
    for q in order:
        length = seqs[q][0]
        row = next((r for r in range(len(fill)) if fill[r] + length <= t and count[r] < s_max), None)
        if row is None:
            row = len(fill)
            fill.append(0)
            count.append(0)
        count[row] += 1
        place[q] = (row, count[row], fill[row])
        fill[row] += length
    rows = -(-len(fill) // config.row_multiple) * config.row_multiple if config.rows is None else config.rows
    if len(fill) > rows:
        raise ValueError(f"the batch needs {len(fill)} rows of {t} tokens but rows={rows}: lower the batch size")
    ids = np.full((rows, t), config.pad_id, np.int32)
    attention = np.zeros((rows, t), np.int32)
    loss = np.zeros((rows, t), bool)
    segment_ids = np.zeros((rows, t), np.int32)
    positions = np.zeros((rows, t), np.int32)
    index = np.zeros((b, n), np.int32)
    seg_lengths = np.zeros((rows, s_max), np.int32)
    for (length, i, j), (row, seg, start) in zip(seqs, place):
        ex = examples[i]
        p = len(ex.prompt_ids)
        sl = slice(start, start + length)
        ids[row, sl] = np.concatenate([ex.prompt_ids, ex.response_ids[j]])
        attention[row, sl] = 1
        loss[row, start + p:start + length] = True
        segment_ids[row, sl] = seg
        positions[row, sl] = np.arange(length)
        index[i, j] = row * s_max + seg - 1
        seg_lengths[row, seg - 1] = len(ex.response_ids[j])
    index[len(examples):] = index[0]
    labels = np.stack([ex.labels for ex in examples] + [examples[0].labels] * (b - len(examples))).astype(np.float32)
    dataset_id = np.array([ex.dataset_id for ex in examples] + [examples[0].dataset_id] * (b - len(examples)),
                          np.int32)
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss, "segment_ids": segment_ids,
            "positions": positions, "segment_index": index, "segment_lengths": seg_lengths, "labels": labels, "dataset_id": dataset_id,
            "example_mask": np.arange(b) < len(examples)}


def packing_batch_fn(config: PackConfig):
    """A ``batch_fn`` for :func:`~mojax.data.pipeline.make_dataset` that packs each batch (resume unchanged)."""
    def batch_fn(examples: Sequence[TokenizedExample], batch_size: int) -> dict[str, np.ndarray]:
        return pack_examples(examples, config, batch_size=batch_size)

    return batch_fn


def segment_sums(values: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Per-segment sums ``[R, S]`` of ``values [R, T]`` for segment ids 1..S (0 = padding, dropped).

    A one-hot contraction (``[R, T, S]`` booleans, no ``[R, T, V]``): exact in float32 for 0/1 weights, and its
    gradient is a gather, so it differentiates like the unpacked row sums.
    """
    values = jnp.asarray(values)
    segment_ids = jnp.asarray(segment_ids)
    if values.shape != segment_ids.shape or values.ndim != 2:
        raise ValueError(f"need values and segment_ids of one shape [R, T], got {values.shape}, {segment_ids.shape}")
    onehot = segment_ids[..., None] == jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    return jnp.einsum("rt,rts->rs", values, onehot.astype(values.dtype), precision=jax.lax.Precision.HIGHEST)


def is_packed(batch) -> bool:
    """Whether ``batch`` has the packed layout (a ``segment_index`` entry)."""
    return "segment_index" in batch


def _gather(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table [R, S]`` at the flat ``index [B, N]`` (row-major), ``[B, N]``."""
    return jnp.take(table.reshape(-1), jnp.asarray(index, jnp.int32), axis=0)


def packed_lengths(batch) -> jax.Array:
    """Response token counts ``[B, N]`` float32 of a packed batch (``segment_lengths`` gathered)."""
    return _gather(jnp.asarray(batch["segment_lengths"]), batch["segment_index"]).astype(jnp.float32)


def packed_sequence_logps(model, batch, *, chunk_size: int | None = 32, use_lora: bool = True) -> jax.Array:
    """Summed response log-probs ``[B, N]`` of a packed batch: one forward over ``[R, T]`` with segment ids and
    explicit positions, token log-probs ``[R, T]`` from the chunked compact head (never ``[R, T, V]`` unless
    ``chunk_size=None``), per-segment sums (:func:`segment_sums`), gathered by ``segment_index``.

    A next-token target counts only inside its own segment: the last token of a segment does not predict the next
    segment's first token (it would, for an empty prompt, were the shift left alone).
    """
    from mojax import losses as L  # the data package stays importable without the loss stack

    ids = jnp.asarray(batch["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"packed input_ids must be [R, T], got shape {ids.shape}")
    seg = jnp.asarray(batch["segment_ids"], jnp.int32)
    r, t = ids.shape
    s = jnp.shape(batch["segment_lengths"])[-1]
    targets, where = L.next_token_targets(ids, jnp.asarray(batch["loss_mask"]).astype(bool))
    same = jnp.concatenate([seg[:, 1:] == seg[:, :-1], jnp.zeros((r, 1), bool)], axis=1)
    where = where & same
    kwargs = dict(attention_mask=jnp.asarray(batch["attention_mask"]), segment_ids=seg,
                  positions=jnp.asarray(batch["positions"], jnp.int32), use_lora=use_lora)
    if chunk_size is None:  # full [R, T, V] logits: small vocabularies and exact checks
        tok = L.token_logps(model(ids, **kwargs), targets, where=where)
    else:
        hidden = model(ids, return_hidden=True, **kwargs)  # [R, T, D]
        head = getattr(model, "output_head", None)
        unembedding, softcap = head() if head is not None else (model.unembedding(), None)
        rows = max(r * chunk_size, -(-MIN_CHUNK_LOGITS // unembedding.shape[-1]))
        # Each position as its own length-1 "sequence": the compact head's per-sequence sums are token log-probs.
        tok = L.compact_sequence_logps_from_hidden(
            hidden.reshape(r * t, 1, -1), unembedding, targets.reshape(r * t, 1), where=where.reshape(r * t, 1),
            chunk_rows=rows, logit_softcap=softcap).reshape(r, t)
    return _gather(segment_sums(tok, seg, s), batch["segment_index"])


def padding_fraction(batch: dict[str, np.ndarray]) -> float:
    """Fraction of a batch's token slots that are padding (``attention_mask`` 0), padded or packed layout."""
    mask = np.asarray(batch["attention_mask"])
    return float(1.0 - mask.sum() / mask.size)
