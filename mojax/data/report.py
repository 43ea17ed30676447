"""Bad-input accounting: every record a reader, parser or tokenizer sees is either kept or counted by reason.

Policy (see docs/data.md): nothing is dropped silently. A reader calls :meth:`DataReport.keep` for each
record it emits and :meth:`DataReport.skip` (with a reason, the 1-based line or row number and a short detail) for
each one it drops; tokenisation adds :meth:`DataReport.alter` for records it keeps but changes (truncation). The
first few offending records of every reason are remembered so a user can open the file at the right line.
A source with no usable record (an empty or blank-only file, or every record skipped) raises
:class:`NoUsableDataError` with the path and the first error (:meth:`DataReport.raise_if_unusable`).

Locations are 1-based and say what they count (:attr:`DataReport.location`): ``"line"`` = the line of a JSONL or
LETOR file (blank lines included, so an editor opens the right one), ``"record"`` = the index of a record in a JSON
array, ``"row"`` = a Parquet row, ``"example"`` = the index in an in-memory sequence.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataError", "NoUsableDataError", "DataReport", "SKIP_REASONS", "ALTER_REASONS", "LOCATIONS"]

LOCATIONS = ("line", "record", "row", "example")

# Reasons used by mojax's own readers; other strings are accepted too (a custom reader may add its own).
SKIP_REASONS = (
    "malformed_json",  # a JSONL line that does not parse (incl. nesting too deep), or a record that is not an object
    "missing_field",  # a required key is absent or null
    "bad_type",  # a field has the wrong type (e.g. a number where text is expected)
    "non_utf8",  # the line's bytes are not valid UTF-8, or a text holds a lone surrogate such as "\ud800"
    "bad_token_id",  # a pre-tokenized id that is negative, not an integer, or beyond int32 (2**31 - 1)
    "unsupported_format",  # a record whose keys fit none of the supported formats, or not the one named
    "tokenizer_error",  # the tokenizer could not encode a text of the record
    "empty_response",  # a response is empty or whitespace only
    "identical_responses",  # two responses of one example are the same text / token ids
    "malformed_transcript",  # an HH-RLHF transcript without a final "\n\nAssistant:" turn
    "prompt_mismatch",  # an HH-RLHF pair whose two transcripts do not share the prompt
    "bad_label",  # labels of the wrong shape or non-finite
    "too_long_skipped",  # longer than the token budget under the "skip" policy
    "malformed_line",  # an SVMlight line that does not parse
    "list_too_short",  # a LETOR query with fewer documents than min_list_size
)
ALTER_REASONS = (
    "too_long_truncated",  # kept, with the prompt cut from the left and/or responses cut from the right
    "list_truncated",  # a LETOR query longer than max_list_size, cut
    "list_split",  # a LETOR query longer than max_list_size, split into several lists
)


class DataError(ValueError):
    """Input that cannot be used at all (unreadable file, no valid record, wrong format name): a user error,
    which a command line reports in one line with exit code 2."""


class NoUsableDataError(DataError):
    """A data source that yields no usable record: empty, blank lines only, or every record skipped."""


@dataclass
class DataReport:
    """Counts of kept, skipped (by reason) and altered (by reason) records of one data source.

    Attributes:
      source: what was read (a path or a description), used in messages.
      kept: number of records that produced examples.
      skipped: reason -> number of records dropped for that reason.
      altered: reason -> number of kept records changed (e.g. truncated) for that reason.
      samples: reason -> up to ``max_samples`` ``(location, detail)`` pairs, location 1-based.
      max_samples: how many offending records to remember per reason.
      location: what locations count, one of :data:`LOCATIONS` (``"line"`` of a file by default).
    """

    source: str = "<memory>"
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    altered: Counter = field(default_factory=Counter)
    samples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    max_samples: int = 3
    location: str = "line"

    @property
    def num_skipped(self) -> int:
        """Total number of dropped records."""
        return sum(self.skipped.values())

    @property
    def total(self) -> int:
        """Number of records seen: kept + skipped."""
        return self.kept + self.num_skipped

    def keep(self, n: int = 1) -> None:
        """Count ``n`` records as kept."""
        self.kept += n

    def unkeep(self, n: int = 1) -> None:
        """Take back ``n`` kept records (a later stage is about to count them as skipped)."""
        if n > self.kept:
            raise ValueError(f"cannot un-keep {n} records: only {self.kept} were kept")
        self.kept -= n

    def _remember(self, reason: str, location: int, detail: str) -> None:
        bucket = self.samples.setdefault(reason, [])
        if len(bucket) < self.max_samples:
            # backslashreplace: a detail quoting a lone surrogate must still print and save as UTF-8
            text = str(detail)[:200].encode("utf-8", "backslashreplace").decode("utf-8")
            bucket.append((int(location), text))

    def skip(self, reason: str, location: int = 0, detail: str = "") -> None:
        """Count one dropped record under ``reason`` (``location``: 1-based, counted as :attr:`location` says)."""
        self.skipped[reason] += 1
        self._remember(reason, location, detail)

    def alter(self, reason: str, location: int = 0, detail: str = "") -> None:
        """Count one kept-but-changed record under ``reason``."""
        self.altered[reason] += 1
        self._remember(reason, location, detail)

    def merge(self, other: "DataReport") -> "DataReport":
        """A new report that adds this one's counts to ``other``'s (sources joined with ' + ')."""
        out = DataReport(source=f"{self.source} + {other.source}", kept=self.kept + other.kept,
                         skipped=self.skipped + other.skipped, altered=self.altered + other.altered,
                         max_samples=self.max_samples,
                         location=self.location if self.location == other.location else "location")
        for rep in (self, other):
            for reason, items in rep.samples.items():
                for loc, detail in items:
                    out._remember(reason, loc, detail)
        return out

    def first_error(self) -> str:
        """Text of the earliest remembered skip, for error messages ('' when nothing was skipped)."""
        best = None
        for reason in self.skipped:
            for loc, detail in self.samples.get(reason, []):
                if best is None or loc < best[0]:
                    best = (loc, reason, detail)
        if best is None:
            return ""
        return f"{self.location} {best[0]}: {best[1]}: {best[2]}"

    def raise_if_unusable(self) -> None:
        """Raise :class:`NoUsableDataError` when no record was kept: none seen (an empty or blank-only file) or
        every one skipped (a wrong format or a broken file)."""
        if self.kept > 0:
            return
        if self.total == 0:
            raise NoUsableDataError(f"{self.source}: no records (the file is empty or holds only blank lines)")
        raise NoUsableDataError(f"{self.source}: none of {self.total} records is usable; first error: "
                                f"{self.first_error()} (skipped by reason: {dict(self.skipped)})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: source, kept, total, skipped, altered, location, samples (each sample keyed by the
        location kind, e.g. ``{"line": 7, "detail": ...}`` or ``{"record": 3, ...}``)."""
        return {"source": self.source, "kept": self.kept, "total": self.total, "skipped": dict(self.skipped),
                "altered": dict(self.altered), "location": self.location,
                "samples": {k: [{self.location: loc, "detail": d} for loc, d in v] for k, v in self.samples.items()}}

    def summary(self) -> str:
        """Multi-line human summary for the start of a training run."""
        lines = [f"data {self.source}: kept {self.kept} of {self.total} records"]
        for title, counter in (("skipped", self.skipped), ("altered", self.altered)):
            for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                where = ", ".join(f"{self.location} {loc}" for loc, _ in self.samples.get(reason, []))
                lines.append(f"  {title} {reason}: {count}" + (f" (e.g. {where})" if where else ""))
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (parent directories are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DataReport":
        """Read a report written by :meth:`save`."""
        d = json.loads(Path(path).read_text())
        kind = d.get("location", "line")
        rep = cls(source=d["source"], kept=d["kept"], skipped=Counter(d["skipped"]), altered=Counter(d["altered"]),
                  location=kind)
        rep.samples = {k: [(s[kind], s["detail"]) for s in v] for k, v in d["samples"].items()}
        return rep
