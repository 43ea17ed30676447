"""Bad-input accounting: every record a reader, parser or tokenizer sees is either kept or counted by reason.

Policy (see docs/data.md): nothing is dropped silently. A reader calls :meth:`DataReport.keep` for each
record it emits and :meth:`DataReport.skip` (with a reason, the 1-based line or row number and a short detail) for
each one it drops; tokenisation adds :meth:`DataReport.alter` for records it keeps but changes (truncation). The
first few offending records of every reason are remembered so a user can open the file at the right line.
A source with records but none usable raises :class:`DataError` with the path and the first error
(:meth:`DataReport.raise_if_unusable`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataError", "DataReport", "SKIP_REASONS", "ALTER_REASONS"]

# Reasons used by mojax's own readers; other strings are accepted too (a custom reader may add its own).
SKIP_REASONS = (
    "malformed_json",  # a JSONL line that does not parse, or a record that is not a JSON object
    "missing_field",  # a required key is absent or null
    "bad_type",  # a field has the wrong type (e.g. a number where text is expected)
    "non_utf8",  # the line's bytes are not valid UTF-8
    "empty_response",  # a response is empty or whitespace only
    "identical_responses",  # two responses of one example are the same text / token ids
    "malformed_transcript",  # an HH-RLHF transcript without a final "\n\nAssistant:" turn
    "prompt_mismatch",  # an HH-RLHF pair whose two transcripts do not share the prompt
    "bad_label",  # labels of the wrong shape or non-finite
    "too_long_skipped",  # longer than the token budget under the "skip" policy
    "malformed_line",  # an SVMlight line that does not parse
)
ALTER_REASONS = (
    "too_long_truncated",  # kept, with the prompt cut from the left and/or responses cut from the right
    "list_truncated",  # a LETOR query longer than max_list_size, cut
    "list_split",  # a LETOR query longer than max_list_size, split into several lists
)


class DataError(ValueError):
    """Input that cannot be used at all (unreadable file, no valid record, wrong format name)."""


@dataclass
class DataReport:
    """Counts of kept, skipped (by reason) and altered (by reason) records of one data source.

    Attributes:
      source: what was read (a path or a description), used in messages.
      kept: number of records that produced examples.
      skipped: reason -> number of records dropped for that reason.
      altered: reason -> number of kept records changed (e.g. truncated) for that reason.
      samples: reason -> up to ``max_samples`` ``(location, detail)`` pairs, location = 1-based line/row number.
      max_samples: how many offending records to remember per reason.
    """

    source: str = "<memory>"
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    altered: Counter = field(default_factory=Counter)
    samples: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    max_samples: int = 3

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
            bucket.append((int(location), str(detail)[:200]))

    def skip(self, reason: str, location: int = 0, detail: str = "") -> None:
        """Count one dropped record under ``reason`` (``location`` = 1-based line or row number)."""
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
                         max_samples=self.max_samples)
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
        return f"line {best[0]}: {best[1]}: {best[2]}"

    def raise_if_unusable(self) -> None:
        """Raise :class:`DataError` when records were seen but none was kept (a wrong format or a broken file)."""
        if self.total > 0 and self.kept == 0:
            raise DataError(f"{self.source}: none of {self.total} records is usable; first error: {self.first_error()}"
                            f" (skipped by reason: {dict(self.skipped)})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: source, kept, skipped, altered, samples."""
        return {"source": self.source, "kept": self.kept, "total": self.total, "skipped": dict(self.skipped),
                "altered": dict(self.altered),
                "samples": {k: [{"line": loc, "detail": d} for loc, d in v] for k, v in self.samples.items()}}

    def summary(self) -> str:
        """Multi-line human summary for the start of a training run."""
        lines = [f"data {self.source}: kept {self.kept} of {self.total} records"]
        for title, counter in (("skipped", self.skipped), ("altered", self.altered)):
            for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                where = ", ".join(f"line {loc}" for loc, _ in self.samples.get(reason, []))
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
        rep = cls(source=d["source"], kept=d["kept"], skipped=Counter(d["skipped"]), altered=Counter(d["altered"]))
        rep.samples = {k: [(s["line"], s["detail"]) for s in v] for k, v in d["samples"].items()}
        return rep
