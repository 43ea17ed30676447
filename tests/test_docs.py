"""The docs stay navigable: relative links resolve, code points at pages that exist, no machine paths, short pages.

Pure text checks (no JAX), so the whole file runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MAX_PAGE_LINES = 400
MAX_BUILD_NOTES_LINES = 300
SOURCE_DIRS = ("mojax", "experiments", "benchmarks", "tests")

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_DOC_REF = re.compile(r"(?<![\w./-])(docs/[\w./-]+\.md)")
_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home)/")


def _markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BUILD_NOTES.md", *sorted(DOCS.rglob("*.md"))]
    return [f for f in files if f.exists()]


def _python_files() -> list[Path]:
    out = []
    for d in SOURCE_DIRS:
        out.extend(p for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts)
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def _links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))


def test_slug_follows_github():
    assert _slug("Objective and step contract") == "objective-and-step-contract"
    assert _slug("`benchmarks/pareto_cost.py` (wall time, K = 2)") == "benchmarkspareto_costpy-wall-time-k--2"
    assert _slug("Prop. 3.1: linear transformation") == "prop-31-linear-transformation"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_docs_index_links_every_page():
    index = DOCS / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in _links(index) if not t.startswith("http")}
    pages = {p.resolve() for p in DOCS.rglob("*.md") if p != index}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs/README.md does not link: {missing}"


def test_pages_are_short():
    long_pages = {str(p.relative_to(ROOT)): n for p in DOCS.rglob("*.md")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_PAGE_LINES}
    assert not long_pages, f"pages over {MAX_PAGE_LINES} lines: {long_pages}"
    notes = len((ROOT / "BUILD_NOTES.md").read_text(encoding="utf-8").splitlines())
    assert notes <= MAX_BUILD_NOTES_LINES, f"BUILD_NOTES.md has {notes} lines (> {MAX_BUILD_NOTES_LINES})"


def test_no_machine_paths():
    offenders = []
    for path in [*_markdown_files(), *_python_files()]:
        if path == Path(__file__).resolve():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, f"absolute machine paths (use ../shared/... or repo-relative paths): {offenders}"


def test_code_points_at_existing_docs():
    """Docstrings and comments cite `docs/...md` pages (not an external METHODS file); each cited page exists."""
    missing, external = [], []
    for path in _python_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        missing += [f"{path.relative_to(ROOT)}: {ref}" for ref in _DOC_REF.findall(text) if not (ROOT / ref).exists()]
        if re.search(r"METHODS(\.md)?\s*(§|section)", text):
            external.append(str(path.relative_to(ROOT)))
    assert not missing, f"references to docs pages that do not exist: {missing}"
    assert not external, f"references to METHODS sections outside the repo (point to docs/methods/): {external}"
