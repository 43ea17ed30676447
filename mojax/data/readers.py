"""Readers for the preference data users bring: local JSONL (plain or ``.gz``), JSON and Parquet files.

The schemas (``ReaderConfig.format``) live in :mod:`mojax.data.formats` and ``docs/data-formats.md``: ``pairs``,
``chat`` (TRL conversational, explicit or implicit prompt), ``hh`` (HH-RLHF transcripts), ``pku`` (PKU-SafeRLHF,
two objectives), ``listwise``, ``tokenized`` (token ids), ``sharegpt`` (ShareGPT / LLaMA-Factory), ``alpaca``
(Alpaca-style preference), ``ultrafeedback`` (scored completions, or binarized chosen/rejected with scores) and
``openai`` (``messages`` SFT, or the preference fine-tuning layout). ``"auto"`` takes the format of the first record
:func:`~mojax.data.formats.detect_format` recognises and reads the whole file with it.

Bad-input policy: one bad record is one skipped record. Every record is kept or counted in the returned
:class:`~mojax.data.report.DataReport` under a reason, with its location (JSONL: the 1-based line of the file,
blank lines included; JSON array: the 1-based record index; Parquet: the row); nothing a record holds (deep
nesting, lone surrogates, huge numbers, a UTF-8 BOM on the first line) stops the run. A file that cannot be opened
or parsed at all raises :class:`~mojax.data.report.DataError`; one in which no record is usable (empty, blank
lines only, every record skipped, or no record in any supported format) raises its subclass
:class:`~mojax.data.report.NoUsableDataError` naming the path and the first error.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mojax.data.formats import (CHAT_FORMATS, FORMATS, HH_ASSISTANT, PARSERS, PLAIN_CHAT_FALLBACK,
                                Skip, describe_shape, detect_format, has_chat_template, labels_array, render_chat,
                                split_hh_transcript)
from mojax.data.report import DataError, DataReport, NoUsableDataError

__all__ = ["PreferenceExample", "TokenizedExample", "ReaderConfig", "read_preferences", "parse_records",
           "iter_records", "detect_format", "render_chat", "split_hh_transcript", "select_objective", "FORMATS",
           "HH_ASSISTANT", "holdout_split"]

_log = logging.getLogger("mojax.data")


@dataclass(frozen=True, kw_only=True, eq=False)
class PreferenceExample:
    """One prompt with N responses and K objectives' labels.

    Attributes:
      prompt: the prompt text (already rendered for chat data).
      responses: N response texts; for pairs, index 0 is the chosen response (preferred under objective 0); N = 1
        for SFT records (``messages``, ShareGPT conversations, Alpaca ``output``).
      labels: float32 ``[K, N]``; for pairs 1 marks the preferred response of each objective, for lists the
        per-objective relevance of each response.
      dataset_id: which source dataset the example came from (MORE mixes several).
      location: 1-based location of the source record (a file line, or a record index for JSON arrays: see the
        report's ``location``); 0 when unknown. Later stages (truncation) report problems there.
    """

    prompt: str
    responses: tuple[str, ...]
    labels: np.ndarray
    dataset_id: int = 0
    location: int = 0

    def __post_init__(self):
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "labels", labels_array(self.labels, len(self.responses)))


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenizedExample:
    """A tokenised :class:`PreferenceExample`: token ids instead of text.

    Attributes:
      prompt_ids: int32 ``[P]`` prompt tokens (BOS included if the tokenizer uses one).
      response_ids: N int32 arrays ``[R_n]``, each ending with EOS unless it was truncated.
      labels: float32 ``[K, N]`` as in :class:`PreferenceExample`.
      dataset_id: source dataset index.
      location: 1-based location of the source record (see :class:`PreferenceExample`); 0 when unknown.
    """

    prompt_ids: np.ndarray
    response_ids: tuple[np.ndarray, ...]
    labels: np.ndarray
    dataset_id: int = 0
    location: int = 0

    def __post_init__(self):
        object.__setattr__(self, "prompt_ids", np.asarray(self.prompt_ids, dtype=np.int32).reshape(-1))
        object.__setattr__(self, "response_ids",
                           tuple(np.asarray(r, dtype=np.int32).reshape(-1) for r in self.response_ids))
        object.__setattr__(self, "labels", labels_array(self.labels, len(self.response_ids)))

    @property
    def length(self) -> int:
        """Longest prompt + response length in tokens (the row length this example needs)."""
        return len(self.prompt_ids) + max(len(r) for r in self.response_ids)


@dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    """Options of :func:`read_preferences`.

    Attributes:
      format: one of :data:`FORMATS` or ``"auto"``.
      container: ``"auto"`` (from the file suffix), ``"jsonl"``, ``"json"`` or ``"parquet"``; ``.gz`` is detected
        from the magic bytes for JSON / JSONL.
      dataset_id: stamped on every example.
      pku_objectives: PKU-SafeRLHF preference dimensions, in objective order (``"<name>_response_id"`` keys).
      skip_identical: drop examples whose responses are identical (they carry no preference).
      max_samples: offending records remembered per reason in the report.
      seed: picks the worse completion of UltraFeedback records with several (with the record's location, so a
        file gives the same pairs in every run).
    """

    format: str = "auto"
    container: str = "auto"
    dataset_id: int = 0
    pku_objectives: tuple[str, ...] = ("better", "safer")
    skip_identical: bool = True
    max_samples: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.format != "auto" and self.format not in FORMATS:
            raise DataError(f"unknown data format {self.format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
        if self.container not in ("auto", "jsonl", "json", "parquet"):
            raise DataError(f"unknown container {self.container!r}; expected auto, jsonl, json or parquet")


# ---------------------------------------------------------------------------------------------------------------
# containers


def _open_bytes(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _container(path: Path, container: str) -> str:
    if container != "auto":
        return container
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    if last == ".json":
        return "json"
    return "jsonl"


def _loads(text: str) -> Any:
    """``json.loads``; every way a single text can fail is a ``ValueError`` (so one bad line is one skip)."""
    try:
        return json.loads(text)
    except RecursionError:  # e.g. 200,000 nested '[': CPython's parser recurses per level
        raise ValueError("nested too deeply to parse") from None
    # json.JSONDecodeError and the int-digits limit ("Exceeds the limit (4300 digits)") are ValueErrors already


def iter_records(path: str | Path, report: DataReport, *, container: str = "auto") -> Iterator[tuple[int, Any]]:
    """Yield ``(location, record)`` for each record of a JSONL / JSON / Parquet file, location 1-based.

    Sets ``report.location`` to what locations count (``"line"`` of a JSONL file, ``"record"`` of a JSON array,
    ``"row"`` of a Parquet file). JSONL lines that are not UTF-8, not JSON (incl. nesting too deep or numbers too
    long to parse) or not a JSON object are counted in ``report`` and not yielded; blank lines are not records; a
    UTF-8 byte-order mark before the first line is ignored. Raises :class:`DataError` when the file cannot be
    opened or (JSON, Parquet) parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _container(path, container)
    if kind == "parquet":
        report.location = "row"
        try:
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several unrelated types for a broken file
            raise DataError(f"{path}: cannot read as Parquet: {type(e).__name__}: {e}") from e
        yield from enumerate(rows, start=1)
        return
    if kind == "json":
        report.location = "record"
        try:
            with _open_bytes(path) as f:
                data = _loads(f.read().decode("utf-8-sig"))
        except (OSError, EOFError, ValueError) as e:  # ValueError: UnicodeDecodeError, JSONDecodeError, too deep
            raise DataError(f"{path}: cannot read as JSON: {type(e).__name__}: {e}") from e
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: a JSON object file must hold exactly one list of records; "
                                f"keys {list(data)[:10]}")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path}: JSON file must hold a list of records, got {type(data).__name__}")
        for i, rec in enumerate(data, start=1):
            if isinstance(rec, dict):
                yield i, rec
            else:
                report.skip("malformed_json", i, f"record is a {type(rec).__name__}, not an object")
        return
    report.location = "line"
    try:
        with _open_bytes(path) as f:
            for i, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    report.skip("non_utf8", i, str(e))
                    continue
                if not line.strip():
                    continue
                try:
                    rec = _loads(line)
                except ValueError as e:
                    report.skip("malformed_json", i, str(e))
                    continue
                if not isinstance(rec, dict):
                    report.skip("malformed_json", i, f"record is a {type(rec).__name__}, not an object")
                    continue
                yield i, rec
    except (OSError, EOFError) as e:  # unreadable or truncated gzip stream
        raise DataError(f"{path}: cannot read: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# records -> examples


def _check_encodable(texts: Sequence[str]) -> None:
    # JSON's "\ud800" decodes to a lone surrogate, which no tokenizer (nor UTF-8) can encode.
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Skip("non_utf8", f"a text holds a lone surrogate {t[e.start]!r} at character {e.start}") from None


def _example(parsed, config: ReaderConfig, loc: int) -> PreferenceExample | TokenizedExample:
    if parsed.prompt_ids is not None:
        return TokenizedExample(prompt_ids=parsed.prompt_ids, response_ids=parsed.response_ids, labels=parsed.labels,
                                dataset_id=config.dataset_id, location=loc)
    _check_encodable((parsed.prompt,) + parsed.responses)
    return PreferenceExample(prompt=parsed.prompt, responses=parsed.responses, labels=parsed.labels,
                             dataset_id=config.dataset_id, location=loc)


def _no_format_error(source: str, rec: dict) -> NoUsableDataError:
    return NoUsableDataError(f"{source}: no record is in a supported data format: the first record "
                             f"{describe_shape(rec)} is none of {', '.join(FORMATS)} (their keys: "
                             "docs/data-formats.md); if it is one of them with other keys, rename the keys, or name the "
                             "format (data_format) to see what each record lacks")


def parse_records(records: Iterator[tuple[int, Any]] | Sequence[dict], config: ReaderConfig = ReaderConfig(), *,
                  tokenizer: Any = None, report: DataReport | None = None
                  ) -> tuple[list[PreferenceExample | TokenizedExample], DataReport]:
    """Turn records (dicts, or ``(location, dict)`` pairs) into examples, counting every skip in the report.

    With ``config.format == "auto"`` the format is the first one :func:`detect_format` recognises, and every record
    is read with it (records before the first recognised one too, so a record that misses a field is counted as
    ``missing_field``, not re-detected). When chat records are rendered without a chat template, one warning per
    call names the plain fallback.

    Raises:
      NoUsableDataError: no record is usable (none at all, none in a supported format, or every one skipped).
    """
    if report is None:
        report = DataReport(max_samples=config.max_samples, location="line")
    fmt = None if config.format == "auto" else config.format
    if isinstance(records, Sequence):
        report.location = "example"
        items: Any = list(enumerate(records, start=1))
    else:
        items = records
    pending: list[tuple[int, Any]] = []  # records seen before the format was known
    out: list = []
    warned = False

    def parse(loc: int, rec: Any) -> None:
        nonlocal warned
        if not isinstance(rec, dict):
            report.skip("malformed_json", loc, f"record is a {type(rec).__name__}, not an object")
            return
        try:
            ex = _example(PARSERS[fmt](rec, config, tokenizer, loc), config, loc)
        except Skip as s:
            detail = s.detail
            if s.reason in ("missing_field", "bad_type"):
                other = detect_format(rec)
                # e.g. a ShareGPT record read as 'pairs': say what it looks like, not only which field is off
                detail += (f" (the record looks like format {other!r}, not {fmt!r})" if other not in (None, fmt) else
                           " (the record fits none of the supported formats)" if other is None else "")
            report.skip(s.reason, loc, detail)
            return
        if fmt in CHAT_FORMATS and not warned and not has_chat_template(tokenizer):
            warned = True
            _log.warning("%s: %s; rendering chat messages in the plain fallback format: %s", report.source,
                         "no tokenizer given" if tokenizer is None else "the tokenizer has no chat template",
                         PLAIN_CHAT_FALLBACK)
        out.append(ex)
        report.keep()

    for loc, rec in items:
        if fmt is None:
            fmt = detect_format(rec) if isinstance(rec, dict) else None
            if fmt is None:
                pending.append((loc, rec))
                continue
            for p in pending:
                parse(*p)
            pending = []
        parse(loc, rec)
    if fmt is None and pending:
        first = next((rec for _, rec in pending if isinstance(rec, dict)), None)
        if first is not None:
            raise _no_format_error(report.source, first)
        for p in pending:
            report.skip("malformed_json", p[0], f"record is a {type(p[1]).__name__}, not an object")
    report.raise_if_unusable()
    return out, report


def read_preferences(path: str | Path, config: ReaderConfig = ReaderConfig(), *, tokenizer: Any = None
                     ) -> tuple[list[PreferenceExample | TokenizedExample], DataReport]:
    """Read a local preference file (JSONL, ``.jsonl.gz``, JSON or Parquet) into examples and a report.

    Args:
      path: the file.
      config: format and options (:class:`ReaderConfig`).
      tokenizer: used only to render chat messages with its ``chat_template``.

    Returns:
      ``(examples, report)``: :class:`PreferenceExample` list (:class:`TokenizedExample` for ``"tokenized"``) in file
      order, and the :class:`DataReport` counting kept and skipped records by reason, with their locations.

    Raises:
      DataError: the file is missing or cannot be parsed at all.
      NoUsableDataError: (a :class:`DataError`) the file holds no usable record: empty, blank lines only, no record
        in a supported format, or every record skipped.
    """
    report = DataReport(source=str(path), max_samples=config.max_samples)
    return parse_records(iter_records(path, report, container=config.container), config, tokenizer=tokenizer,
                         report=report)


def select_objective(examples: Sequence[PreferenceExample | TokenizedExample], k: int, *,
                     dataset_id: int | None = None) -> list[PreferenceExample | TokenizedExample]:
    """Single-objective view of multi-objective examples: keep label row ``k`` (labels ``[1, N]``).

    For pairs the responses are reordered so the one preferred under objective ``k`` comes first (the chosen-first
    convention); lists keep their order. ``dataset_id`` (default: ``k``) is stamped on the results, so per-dimension
    sets can be mixed for MORE or run one after another for SPO.
    """
    out = []
    did = k if dataset_id is None else dataset_id
    for ex in examples:
        if not 0 <= k < ex.labels.shape[0]:
            raise ValueError(f"objective {k} out of range for labels of shape {ex.labels.shape}")
        row = ex.labels[k:k + 1]
        swap = ex.labels.shape[1] == 2 and row[0, 1] > row[0, 0]
        order = (1, 0) if swap else tuple(range(ex.labels.shape[1]))
        row = row[:, list(order)]
        if isinstance(ex, TokenizedExample):
            out.append(TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=tuple(ex.response_ids[i] for i in order),
                                        labels=row, dataset_id=did, location=ex.location))
        else:
            out.append(PreferenceExample(prompt=ex.prompt, responses=tuple(ex.responses[i] for i in order),
                                         labels=row, dataset_id=did, location=ex.location))
    return out


def holdout_split(examples: Sequence[Any], fraction: float, *, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split examples into ``(train, held_out)`` with about ``fraction`` of the distinct prompts held out.

    Grouped by prompt (text, or token ids), so no held-out prompt is ever trained on; which prompts are held out
    depends only on ``seed`` and the set of prompts (every host and every rerun gets the same split). Both parts keep
    the input order. ``fraction`` must lie in (0, 1); at least one prompt is held out and at least one kept.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the held-out fraction must lie in (0, 1), got {fraction!r}")

    def key(ex: Any) -> Any:
        return ex.prompt if isinstance(ex, PreferenceExample) else tuple(np.asarray(ex.prompt_ids).tolist())

    prompts = list(dict.fromkeys(key(ex) for ex in examples))
    n_out = max(1, int(round(fraction * len(prompts))))
    if n_out >= len(prompts):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(prompts)} distinct prompts and keep both parts "
                        "non-empty")
    # Sort before shuffling so the split does not depend on file order, only on which prompts exist.
    order = sorted(range(len(prompts)), key=lambda i: repr(prompts[i]))
    chosen = np.random.default_rng(seed).permutation(len(prompts))[:n_out]
    held = {prompts[order[i]] for i in chosen}
    train = [ex for ex in examples if key(ex) not in held]
    return train, [ex for ex in examples if key(ex) in held]
