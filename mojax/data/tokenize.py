"""Tokenisation, truncation and collation of preference examples into the sequence batch layout.

Policy (docs/data.md):

- Responses get EOS appended (``TokenizeConfig.append_eos``); the prompt gets the tokenizer's BOS prepended when it
  has one and the text does not already start with it (``add_bos=None``; chat templates often include it).
- An example needs ``len(prompt) + max_n len(response_n)`` tokens. If the prompt is longer than
  ``max_prompt_length`` it is cut from the **left** (the end of the prompt, next to the response, matters most; a
  leading BOS is kept); then responses longer than ``max_length - len(prompt)`` are cut from the **right** (a cut
  response loses its EOS: the model should not learn to stop there). Under ``overflow="skip"`` such examples are
  dropped instead. Both are counted in the report (``too_long_truncated`` / ``too_long_skipped``).
- :func:`collate` right-pads every row of a batch to one bucketed length: the next power of two (at least
  ``min_bucket``) or the next multiple of ``bucket_multiple``, capped at ``max_length``; so batches of short pairs
  stay cheap while the number of distinct shapes (jit compilations) stays logarithmic.

Batch layout (see docs/contracts.md): ``input_ids`` int32 ``[B, N, T]`` = prompt + response,
``attention_mask`` int32 ``[B, N, T]``, ``loss_mask`` bool ``[B, N, T]`` (True on response tokens incl. EOS),
``labels`` float32 ``[B, K, N]``, ``dataset_id`` int32 ``[B]``, ``example_mask`` bool ``[B]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathlib import Path

from mojax.data.readers import PreferenceExample, ReaderConfig, TokenizedExample, read_preferences
from mojax.data.report import DataError, DataReport

__all__ = ["TokenizeConfig", "bucket_length", "tokenize_examples", "truncate_examples", "collate", "load_tokenized",
           "load_tokenized_files"]


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """Truncation and padding options.

    Attributes:
      max_length: longest row (prompt + response) in tokens.
      max_prompt_length: longest prompt; must be < ``max_length`` so every response keeps at least one token.
      overflow: ``"truncate"`` (cut and keep) or ``"skip"`` (drop) examples over the limits.
      bucket: ``"pow2"`` (next power of two), ``"multiple"`` (next multiple of ``bucket_multiple``) or ``"max"``
        (always ``max_length``).
      bucket_multiple: the multiple for ``bucket="multiple"``.
      min_bucket: the smallest bucket for ``bucket="pow2"``.
      append_eos: append the tokenizer's EOS to every response.
      add_bos: prepend BOS to prompts: None = when the tokenizer has one and the prompt lacks it.
      pad_id: token id written into padding positions (masked out by ``attention_mask``).
    """

    max_length: int = 512
    max_prompt_length: int = 256
    overflow: str = "truncate"
    bucket: str = "pow2"
    bucket_multiple: int = 64
    min_bucket: int = 16
    append_eos: bool = True
    add_bos: bool | None = None
    pad_id: int = 0

    def __post_init__(self):
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {self.max_prompt_length}, "
                             f"{self.max_length}")
        if self.overflow not in ("truncate", "skip"):
            raise ValueError(f"overflow must be 'truncate' or 'skip', got {self.overflow!r}")
        if self.bucket not in ("pow2", "multiple", "max"):
            raise ValueError(f"bucket must be 'pow2', 'multiple' or 'max', got {self.bucket!r}")
        if self.bucket_multiple < 1 or self.min_bucket < 1:
            raise ValueError("bucket_multiple and min_bucket must be positive")


def bucket_length(n: int, config: TokenizeConfig) -> int:
    """The padded row length for a batch whose longest row has ``n`` tokens (``n <= max_length``)."""
    if n > config.max_length:
        raise ValueError(f"a row of {n} tokens exceeds max_length={config.max_length}: truncate first")
    if config.bucket == "max":
        return config.max_length
    if config.bucket == "multiple":
        m = config.bucket_multiple
        return min(config.max_length, max(m, -(-n // m) * m))
    return min(config.max_length, max(config.min_bucket, 1 << max(0, int(n) - 1).bit_length()))


def _truncate_one(ex: TokenizedExample, config: TokenizeConfig, bos_id: int | None
                  ) -> tuple[TokenizedExample, bool]:
    prompt = ex.prompt_ids
    cut = False
    if len(prompt) > config.max_prompt_length:
        cut = True
        keep_bos = bos_id is not None and len(prompt) > 0 and prompt[0] == bos_id
        tail = config.max_prompt_length - int(keep_bos)
        # slice from len - tail, not -tail: tail = 0 (max_prompt_length 1 with BOS) must keep nothing, not all
        kept = prompt[len(prompt) - tail:]
        prompt = np.concatenate([prompt[:1], kept]) if keep_bos else kept
    budget = config.max_length - len(prompt)
    responses = []
    for r in ex.response_ids:
        if len(r) > budget:
            cut = True
            r = r[:budget]
        responses.append(r)
    if not cut:
        return ex, False
    return TokenizedExample(prompt_ids=prompt, response_ids=responses, labels=ex.labels,
                            dataset_id=ex.dataset_id, location=ex.location), True


def truncate_examples(examples: Sequence[TokenizedExample], config: TokenizeConfig,
                      report: DataReport | None = None, *, bos_id: int | None = None) -> list[TokenizedExample]:
    """Apply the length policy of ``config`` to tokenised examples (see the module docstring).

    ``bos_id``: a prompt starting with it keeps it when cut from the left. Examples over the limits are counted in
    ``report`` as ``too_long_truncated`` (kept) or ``too_long_skipped`` (dropped, and taken back from ``kept``), at
    the example's source location (its file line; the 1-based index in ``examples`` when it has none).
    """
    report = report if report is not None else DataReport()
    out = []
    for i, ex in enumerate(examples, start=1):
        i = ex.location or i
        new, cut = _truncate_one(ex, config, bos_id)
        if not cut:
            out.append(ex)
        elif config.overflow == "skip":
            if report.kept > 0:  # the reader counted it as kept; it is skipped now
                report.unkeep()
            report.skip("too_long_skipped", i, f"needs {ex.length} tokens, max_length={config.max_length}, "
                                               f"prompt {len(ex.prompt_ids)} > {config.max_prompt_length}?")
        else:
            report.alter("too_long_truncated", i, f"needed {ex.length} tokens")
            out.append(new)
    return out


def _encode_each(examples: Sequence[PreferenceExample], tokenizer: Any, report: DataReport) -> list:
    """The slow path after the batched call failed: encode example by example, skipping the ones that fail."""
    out: list = []
    for i, ex in enumerate(examples, start=1):
        try:
            enc = tokenizer([ex.prompt, *ex.responses], add_special_tokens=False)["input_ids"]
            out.append((enc[0], enc[1:]))
        except Exception as e:  # noqa: BLE001 - tokenizers raise TypeError, ValueError, pyo3 panics, ...
            if report.kept > 0:
                report.unkeep()
            report.skip("tokenizer_error", ex.location or i, f"{type(e).__name__}: {e}")
            out.append(None)
    return out


def tokenize_examples(examples: Sequence[PreferenceExample], tokenizer: Any, config: TokenizeConfig,
                      report: DataReport | None = None) -> tuple[list[TokenizedExample], DataReport]:
    """Tokenise text examples with a ``transformers`` tokenizer and apply the length policy.

    Text is encoded with ``add_special_tokens=False``; BOS and EOS are added explicitly per ``config`` (so the
    result does not depend on a tokenizer's post-processor). Prompt and responses are encoded separately, so the
    prompt/response boundary is exact.

    Returns:
      ``(tokenized, report)``: the kept examples and the report (the one passed in, updated, or a new one).
    """
    if report is None:
        report = DataReport(kept=len(examples))
    eos = getattr(tokenizer, "eos_token_id", None)
    if config.append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token_id")
    bos = getattr(tokenizer, "bos_token_id", None)
    add_bos = (bos is not None) if config.add_bos is None else config.add_bos
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    texts = [ex.prompt for ex in examples]
    n_resp = [len(ex.responses) for ex in examples]
    for ex in examples:
        texts.extend(ex.responses)
    # One batched call: fast tokenizers encode in Rust over the whole list.
    try:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    except Exception:  # noqa: BLE001 - one text the tokenizer refuses must cost one example, not the run
        ids = None
    if ids is None:
        per_example = _encode_each(examples, tokenizer, report)
    else:
        prompts, rest, pos = ids[:len(examples)], ids[len(examples):], 0
        per_example = []
        for p, n in zip(prompts, n_resp):
            per_example.append((p, rest[pos:pos + n]))
            pos += n
    tokenized = []
    for ex, enc in zip(examples, per_example):
        if enc is None:
            continue
        p, rs = enc
        if add_bos and (not p or p[0] != bos):
            p = [bos] + list(p)
        if config.append_eos:
            rs = [list(r) + [eos] for r in rs]
        tokenized.append(TokenizedExample(prompt_ids=p, response_ids=rs, labels=ex.labels,
                                          dataset_id=ex.dataset_id, location=ex.location))
    return truncate_examples(tokenized, config, report, bos_id=bos if add_bos else None), report


def collate(examples: Sequence[TokenizedExample], config: TokenizeConfig, *, batch_size: int | None = None,
            length: int | None = None) -> dict[str, np.ndarray]:
    """Stack tokenised examples into one right-padded batch (NumPy arrays in the sequence batch layout).

    Args:
      examples: 1..B examples with the same number of responses N and objectives K.
      config: padding options (``pad_id``, bucketing, ``max_length``).
      batch_size: pad the batch to this many examples; filler examples are copies of the first one with
        ``example_mask`` False (copies rather than all-padding rows, so no row has an all-masked attention).
      length: force the row length T instead of the bucket of the longest row.

    Returns:
      dict with ``input_ids`` int32 ``[B, N, T]``, ``attention_mask`` int32 ``[B, N, T]``, ``loss_mask`` bool
      ``[B, N, T]``, ``labels`` float32 ``[B, K, N]``, ``dataset_id`` int32 ``[B]``, ``example_mask`` bool ``[B]``.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    n, k = len(examples[0].response_ids), examples[0].labels.shape[0]
    for ex in examples:
        if len(ex.response_ids) != n or ex.labels.shape[0] != k:
            raise ValueError(f"all examples of a batch need the same N responses and K objectives; got "
                             f"N={len(ex.response_ids)}, K={ex.labels.shape[0]} beside N={n}, K={k}")
    b = len(examples) if batch_size is None else batch_size
    if b < len(examples):
        raise ValueError(f"batch_size={b} is smaller than the {len(examples)} examples given")
    longest = max(ex.length for ex in examples)
    t = bucket_length(longest, config) if length is None else length
    if longest > t:
        raise ValueError(f"an example needs {longest} tokens but the row length is {t}")
    input_ids = np.full((b, n, t), config.pad_id, dtype=np.int32)
    attention = np.zeros((b, n, t), dtype=np.int32)
    loss_mask = np.zeros((b, n, t), dtype=bool)
    labels = np.zeros((b, k, n), dtype=np.float32)
    dataset_id = np.zeros((b,), dtype=np.int32)
    example_mask = np.zeros((b,), dtype=bool)
    for i in range(b):
        ex = examples[i] if i < len(examples) else examples[0]
        p = len(ex.prompt_ids)
        for j, r in enumerate(ex.response_ids):
            end = p + len(r)
            input_ids[i, j, :p] = ex.prompt_ids
            input_ids[i, j, p:end] = r
            attention[i, j, :end] = 1
            loss_mask[i, j, p:end] = True
        labels[i] = ex.labels
        dataset_id[i] = ex.dataset_id
        example_mask[i] = i < len(examples)
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask, "labels": labels,
            "dataset_id": dataset_id, "example_mask": example_mask}


def load_tokenized(path: str | Path, tokenizer: Any, config: TokenizeConfig = TokenizeConfig(),
                   reader: ReaderConfig = ReaderConfig()) -> tuple[list[TokenizedExample], DataReport]:
    """Read a preference file and tokenise it: :func:`~mojax.data.readers.read_preferences` then
    :func:`tokenize_examples` (or, for pre-tokenized files, :func:`truncate_examples`), one report for both stages.

    ``tokenizer`` may be None for ``format="tokenized"`` files.
    """
    examples, report = read_preferences(path, reader, tokenizer=tokenizer)
    if examples and isinstance(examples[0], TokenizedExample):
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        out = truncate_examples(examples, config, report, bos_id=bos)
    else:
        if tokenizer is None:
            raise DataError(f"{path}: text data needs a tokenizer")
        out, report = tokenize_examples(examples, tokenizer, config, report)
    report.raise_if_unusable()
    return out, report


def load_tokenized_files(paths: Sequence[str | Path], tokenizer: Any, config: TokenizeConfig = TokenizeConfig(),
                         reader: ReaderConfig = ReaderConfig()) -> tuple[list[TokenizedExample], list[DataReport]]:
    """:func:`load_tokenized` on several files: file ``i`` gets ``dataset_id = reader.dataset_id + i``.

    Each file is detected (``reader.format="auto"``) and checked on its own: one with no usable record raises
    :class:`~mojax.data.report.NoUsableDataError` naming it. Returns the examples in file order and one report per
    file (locations are per file; ``DataReport.merge`` gives the totals).
    """
    if not paths:
        raise DataError("no data files given")
    out: list[TokenizedExample] = []
    reports = []
    for i, path in enumerate(paths):
        cfg = dataclasses.replace(reader, dataset_id=reader.dataset_id + i)
        examples, report = load_tokenized(path, tokenizer, config, cfg)
        out.extend(examples)
        reports.append(report)
    return out, reports
