"""Readers for the preference data users bring: local JSONL (plain or ``.gz``), JSON and Parquet files.

Schemas (``ReaderConfig.format``; ``"auto"`` picks one from the keys of the first record that is a JSON object):

- ``"pairs"``: ``{"prompt": str, "chosen": str, "rejected": str}`` → responses ``(chosen, rejected)``, labels ``[[1, 0]]``.
- ``"chat"``: ``prompt`` / ``chosen`` / ``rejected`` as lists of ``{"role", "content"}`` messages (a string prompt is
  one user message), or only ``chosen`` / ``rejected`` as whole conversations that share every message but the
  last. Rendered with the tokenizer's chat template when it has one: prompt = template(prompt messages,
  ``add_generation_prompt=True``), response = template(prompt + response messages) minus that prefix (so the
  template's end-of-turn markers stay in the response). Without a template, the plain rendering is
  ``"{role}: {content}\\n\\n"`` per prompt message followed by ``"assistant: "``, and the response is the assistant
  message's content.
- ``"hh"``: HH-RLHF ``{"chosen": transcript, "rejected": transcript}``. Prompt = everything up to and including the
  last ``"\\n\\nAssistant:"`` of the two transcripts' common prefix, responses = the rest of each transcript
  (the final assistant turn; its leading space is kept: byte-level BPE tokenizers attach it to the first word).
  Using the common prefix matters: a few HH responses contain invented ``"\\n\\nHuman: ... \\n\\nAssistant:"``
  turns of their own.
- ``"pku"``: PKU-SafeRLHF rows ``{"prompt", "response_0", "response_1", "better_response_id", "safer_response_id"}``.
  One example per row with both preference dimensions as label rows: objective k is
  ``ReaderConfig.pku_objectives[k]`` (default ``("better", "safer")`` = helpfulness, harmlessness). Responses are
  ordered with the one preferred under objective 0 first, so labels are ``[[1, 0], [1, 0]]`` when both dimensions
  agree and ``[[1, 0], [0, 1]]`` when the more helpful response is the less safe one. :func:`select_objective`
  turns these into single-dimension pairs (for SPO's sequential rounds).
- ``"listwise"``: ``{"prompt": str, "responses": [str] * L, "labels": [[float] * L] * K}`` (or ``[float] * L`` for
  K = 1).
- ``"tokenized"``: ``{"prompt_ids": [int], "response_ids": [[int], ...], "labels": optional K×N}`` — pre-tokenized
  data (token ids; ``response_ids`` should already end with EOS), giving :class:`TokenizedExample` (labels default to
  ``[[1, 0]]`` for pairs).

Every record is kept or counted in the returned :class:`~mojax.data.report.DataReport`; see that module for the
bad-input policy. A file that cannot be opened or parsed at all, or in which no record is usable, raises
:class:`~mojax.data.report.DataError` naming the path and the first error.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mojax.data.report import DataError, DataReport

__all__ = ["PreferenceExample", "TokenizedExample", "ReaderConfig", "read_preferences", "parse_records",
           "iter_records", "detect_format", "render_chat", "split_hh_transcript", "select_objective", "FORMATS"]

FORMATS = ("pairs", "chat", "hh", "pku", "listwise", "tokenized")
HH_ASSISTANT = "\n\nAssistant:"


def _labels_array(labels: Any, num_responses: int) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != num_responses:
        raise ValueError(f"labels must have shape [K, N={num_responses}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("labels must be finite")
    return arr


@dataclass(frozen=True, kw_only=True, eq=False)
class PreferenceExample:
    """One prompt with N responses and K objectives' labels.

    Attributes:
      prompt: the prompt text (already rendered for chat data).
      responses: N response texts; for pairs, index 0 is the chosen response (preferred under objective 0).
      labels: float32 ``[K, N]``; for pairs 1 marks the preferred response of each objective, for lists the
        per-objective relevance of each response.
      dataset_id: which source dataset the example came from (MORE mixes several).
    """

    prompt: str
    responses: tuple[str, ...]
    labels: np.ndarray
    dataset_id: int = 0

    def __post_init__(self):
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "labels", _labels_array(self.labels, len(self.responses)))


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenizedExample:
    """A tokenised :class:`PreferenceExample`: token ids instead of text.

    Attributes:
      prompt_ids: int32 ``[P]`` prompt tokens (BOS included if the tokenizer uses one).
      response_ids: N int32 arrays ``[R_n]``, each ending with EOS unless it was truncated.
      labels: float32 ``[K, N]`` as in :class:`PreferenceExample`.
      dataset_id: source dataset index.
    """

    prompt_ids: np.ndarray
    response_ids: tuple[np.ndarray, ...]
    labels: np.ndarray
    dataset_id: int = 0

    def __post_init__(self):
        object.__setattr__(self, "prompt_ids", np.asarray(self.prompt_ids, dtype=np.int32).reshape(-1))
        object.__setattr__(self, "response_ids",
                           tuple(np.asarray(r, dtype=np.int32).reshape(-1) for r in self.response_ids))
        object.__setattr__(self, "labels", _labels_array(self.labels, len(self.response_ids)))

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
    """

    format: str = "auto"
    container: str = "auto"
    dataset_id: int = 0
    pku_objectives: tuple[str, ...] = ("better", "safer")
    skip_identical: bool = True
    max_samples: int = 3

    def __post_init__(self):
        if self.format != "auto" and self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}; expected 'auto' or one of {FORMATS}")
        if self.container not in ("auto", "jsonl", "json", "parquet"):
            raise DataError(f"unknown container {self.container!r}; expected auto, jsonl, json or parquet")


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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


def iter_records(path: str | Path, report: DataReport, *, container: str = "auto") -> Iterator[tuple[int, Any]]:
    """Yield ``(location, record)`` for each record of a JSONL / JSON / Parquet file; 1-based line or row numbers.

    JSONL lines that are not UTF-8, not JSON, or not a JSON object are counted in ``report`` and not yielded; blank
    lines are not records. Raises :class:`DataError` when the file cannot be opened or (JSON, Parquet) parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _container(path, container)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several unrelated types for a broken file
            raise DataError(f"{path}: cannot read as Parquet: {type(e).__name__}: {e}") from e
        yield from enumerate(rows, start=1)
        return
    if kind == "json":
        try:
            with _open_bytes(path) as f:
                data = json.loads(f.read().decode("utf-8"))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read as JSON: {type(e).__name__}: {e}") from e
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: a JSON object file must hold exactly one list of records; keys {list(data)}")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path}: JSON file must hold a list of records, got {type(data).__name__}")
        for i, rec in enumerate(data, start=1):
            if isinstance(rec, dict):
                yield i, rec
            else:
                report.skip("malformed_json", i, f"record is a {type(rec).__name__}, not an object")
        return
    try:
        with _open_bytes(path) as f:
            for i, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    report.skip("non_utf8", i, str(e))
                    continue
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    report.skip("malformed_json", i, str(e))
                    continue
                if not isinstance(rec, dict):
                    report.skip("malformed_json", i, f"record is a {type(rec).__name__}, not an object")
                    continue
                yield i, rec
    except (OSError, EOFError) as e:  # unreadable or truncated gzip stream
        raise DataError(f"{path}: cannot read: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# schemas


def detect_format(record: dict) -> str | None:
    """The schema of one record from its keys (see the module docstring), or None when none fits."""
    keys = set(record)
    if {"prompt_ids", "response_ids"} <= keys:
        return "tokenized"
    if {"response_0", "response_1"} <= keys and any(k.endswith("_response_id") for k in keys):
        return "pku"
    if "responses" in keys:
        return "listwise"
    if {"chosen", "rejected"} <= keys:
        if any(isinstance(record.get(k), list) for k in ("prompt", "chosen", "rejected")):
            return "chat"
        return "pairs" if "prompt" in keys else "hh"
    return None


def _get(record: dict, key: str) -> Any:
    value = record.get(key)
    if value is None:
        raise _Skip("missing_field", f"missing {key!r}")
    return value


def _text(record: dict, key: str) -> str:
    value = _get(record, key)
    if not isinstance(value, str):
        raise _Skip("bad_type", f"{key!r} is a {type(value).__name__}, expected a string")
    return value


def _check_responses(responses: Sequence[str], skip_identical: bool) -> None:
    for n, r in enumerate(responses):
        if not r.strip():
            raise _Skip("empty_response", f"response {n} is empty")
    if skip_identical and len(set(responses)) < len(responses):
        raise _Skip("identical_responses", "two responses are identical")


def _messages(value: Any, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user" if key == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise _Skip("bad_type", f"{key!r} must be a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _plain(messages: Sequence[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages)


def render_chat(prompt: Sequence[dict], response: Sequence[dict], tokenizer: Any = None) -> tuple[str, str]:
    """Render a prompt (messages) and a response (messages) to ``(prompt_text, response_text)``.

    With a tokenizer that has a ``chat_template``: ``prompt_text`` is the template applied to the prompt with
    ``add_generation_prompt=True`` and ``response_text`` the rest of the template applied to prompt + response
    (falls back to the response content if the template does not extend the prompt rendering). Without one: the
    plain rendering ``"role: content\\n\\n"`` per prompt message + ``"assistant: "``, and the response messages'
    contents (later messages rendered as ``"\\n\\nrole: content"``).
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        p = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(prompt) + list(response), tokenize=False)
        if full.startswith(p):
            return p, full[len(p):]
        return p, "".join(m["content"] for m in response)
    text = response[0]["content"] + "".join(f"\n\n{m['role']}: {m['content']}" for m in response[1:])
    return _plain(prompt) + "assistant: ", text


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """Split an HH-RLHF transcript at its last ``"\\n\\nAssistant:"``: ``(prompt incl. the marker, final turn)``."""
    i = transcript.rfind(HH_ASSISTANT)
    if i < 0:
        raise _Skip("malformed_transcript", "no '\\n\\nAssistant:' turn")
    cut = i + len(HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]


def _parse_pairs(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> PreferenceExample:
    prompt, chosen, rejected = _text(rec, "prompt"), _text(rec, "chosen"), _text(rec, "rejected")
    _check_responses((chosen, rejected), cfg.skip_identical)
    return PreferenceExample(prompt=prompt, responses=(chosen, rejected), labels=[[1.0, 0.0]],
                             dataset_id=cfg.dataset_id)


def _parse_chat(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> PreferenceExample:
    chosen = _messages(_get(rec, "chosen"), "chosen")
    rejected = _messages(_get(rec, "rejected"), "rejected")
    if rec.get("prompt") is not None:
        prompt = _messages(rec["prompt"], "prompt")
    else:  # implicit prompt: whole conversations that differ only in the last message
        if not chosen or not rejected or chosen[:-1] != rejected[:-1]:
            raise _Skip("prompt_mismatch", "chosen and rejected conversations differ before their last message")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if not chosen or not rejected:
        raise _Skip("empty_response", "a response has no messages")
    if any(not m["content"].strip() for m in chosen + rejected):
        raise _Skip("empty_response", "a response message is empty")
    p, c = render_chat(prompt, chosen, tokenizer)
    _, r = render_chat(prompt, rejected, tokenizer)
    _check_responses((c, r), cfg.skip_identical)
    return PreferenceExample(prompt=p, responses=(c, r), labels=[[1.0, 0.0]], dataset_id=cfg.dataset_id)


def _parse_hh(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> PreferenceExample:
    chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    # Split at the last marker inside the shared prefix: some HH responses themselves contain invented
    # "\n\nHuman: ... \n\nAssistant:" turns, which a plain rfind on one transcript would take as the prompt.
    shared = os.path.commonprefix([chosen, rejected])
    i = shared.rfind(HH_ASSISTANT)
    if i < 0:
        split_hh_transcript(chosen)  # raises malformed_transcript when a transcript has no assistant turn at all
        split_hh_transcript(rejected)
        raise _Skip("prompt_mismatch", "chosen and rejected transcripts share no prompt ending in an Assistant turn")
    cut = i + len(HH_ASSISTANT)
    c, r = chosen[cut:], rejected[cut:]
    _check_responses((c, r), cfg.skip_identical)
    return PreferenceExample(prompt=chosen[:cut], responses=(c, r), labels=[[1.0, 0.0]], dataset_id=cfg.dataset_id)


def _parse_pku(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> PreferenceExample:
    prompt = _text(rec, "prompt")
    responses = (_text(rec, "response_0"), _text(rec, "response_1"))
    prefs = []
    for name in cfg.pku_objectives:
        v = _get(rec, f"{name}_response_id")
        if isinstance(v, bool) or v not in (0, 1):
            raise _Skip("bad_label", f"{name}_response_id must be 0 or 1, got {v!r}")
        prefs.append(int(v))
    _check_responses(responses, cfg.skip_identical)
    first = prefs[0]  # the response preferred under objective 0 goes first
    order = (first, 1 - first)
    labels = [[1.0 if order[n] == p else 0.0 for n in range(2)] for p in prefs]
    return PreferenceExample(prompt=prompt, responses=(responses[order[0]], responses[order[1]]), labels=labels,
                             dataset_id=cfg.dataset_id)


def _parse_listwise(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> PreferenceExample:
    prompt = _text(rec, "prompt")
    responses = _get(rec, "responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses) or len(responses) < 2:
        raise _Skip("bad_type", "'responses' must be a list of at least two strings")
    _check_responses(responses, cfg.skip_identical)
    try:
        labels = _labels_array(_get(rec, "labels"), len(responses))
    except (ValueError, TypeError) as e:
        raise _Skip("bad_label", str(e)) from e
    return PreferenceExample(prompt=prompt, responses=tuple(responses), labels=labels, dataset_id=cfg.dataset_id)


def _ids(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                              for t in value):
        raise _Skip("bad_type", f"{key!r} must be a list of non-negative token ids")
    return value


def _parse_tokenized(rec: dict, cfg: ReaderConfig, tokenizer: Any) -> TokenizedExample:
    prompt = _ids(_get(rec, "prompt_ids"), "prompt_ids")
    responses = _get(rec, "response_ids")
    if not isinstance(responses, list) or len(responses) < 1:
        raise _Skip("bad_type", "'response_ids' must be a list of token-id lists")
    responses = [_ids(r, "response_ids") for r in responses]
    if any(len(r) == 0 for r in responses):
        raise _Skip("empty_response", "a response has no tokens")
    if cfg.skip_identical and len({tuple(r) for r in responses}) < len(responses):
        raise _Skip("identical_responses", "two responses have identical token ids")
    default = [[1.0, 0.0]] if len(responses) == 2 else [[1.0] * len(responses)]
    try:
        labels = _labels_array(rec["labels"] if rec.get("labels") is not None else default, len(responses))
    except (ValueError, TypeError) as e:
        raise _Skip("bad_label", str(e)) from e
    return TokenizedExample(prompt_ids=prompt, response_ids=responses, labels=labels, dataset_id=cfg.dataset_id)


_PARSERS = {"pairs": _parse_pairs, "chat": _parse_chat, "hh": _parse_hh, "pku": _parse_pku,
            "listwise": _parse_listwise, "tokenized": _parse_tokenized}


def parse_records(records: Iterator[tuple[int, Any]] | Sequence[dict], config: ReaderConfig = ReaderConfig(), *,
                  tokenizer: Any = None, report: DataReport | None = None
                  ) -> tuple[list[PreferenceExample | TokenizedExample], DataReport]:
    """Turn records (dicts, or ``(location, dict)`` pairs) into examples, counting every skip in the report.

    With ``config.format == "auto"`` the schema comes from the first record that :func:`detect_format` recognises
    (records before it are counted as ``missing_field``); a record missing a field of the chosen schema is counted,
    not re-detected. Raises :class:`DataError` when no record fits any schema or none is usable.
    """
    report = report if report is not None else DataReport(max_samples=config.max_samples)
    fmt = None if config.format == "auto" else config.format
    pending: list[tuple[int, Any]] = []
    out: list = []
    items = records if not isinstance(records, Sequence) else list(enumerate(records, start=1))
    for loc, rec in items:
        if not isinstance(rec, dict):
            report.skip("malformed_json", loc, f"record is a {type(rec).__name__}, not an object")
            continue
        if fmt is None:
            fmt = detect_format(rec)
            if fmt is None:
                pending.append((loc, rec))
                continue
        try:
            out.append(_PARSERS[fmt](rec, config, tokenizer))
            report.keep()
        except _Skip as s:
            report.skip(s.reason, loc, s.detail)
    if fmt is None and pending:
        raise DataError(f"{report.source}: cannot tell the data format: the first record has keys "
                        f"{sorted(pending[0][1])}; name it with ReaderConfig(format=...) from {FORMATS}")
    for loc, rec in pending:
        report.skip("missing_field", loc, f"keys {sorted(rec)} do not fit format {fmt!r}")
    report.raise_if_unusable()
    return out, report


def read_preferences(path: str | Path, config: ReaderConfig = ReaderConfig(), *, tokenizer: Any = None
                     ) -> tuple[list[PreferenceExample | TokenizedExample], DataReport]:
    """Read a local preference file (JSONL, ``.jsonl.gz``, JSON or Parquet) into examples and a report.

    Args:
      path: the file.
      config: schema and options (:class:`ReaderConfig`).
      tokenizer: used only to render chat messages with its ``chat_template``.

    Returns:
      ``(examples, report)``: :class:`PreferenceExample` list (:class:`TokenizedExample` for ``"tokenized"``) in file
      order, and the :class:`DataReport` counting kept and skipped records by reason.

    Raises:
      DataError: the file is missing, cannot be parsed, has an unknown schema, or holds no usable record.
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
                                        labels=row, dataset_id=did))
        else:
            out.append(PreferenceExample(prompt=ex.prompt, responses=tuple(ex.responses[i] for i in order),
                                         labels=row, dataset_id=did))
    return out
