"""Command-line parsing with ``tyro`` whose errors read as one line.

``tyro`` reports a bad option (an unknown flag, a value a config's ``__post_init__`` rejects) in a framed box of
several lines and exits with status 2. mojax's policy for user errors is one line naming the cause and status 2,
with the full text behind ``--debug``; :func:`parse_cli` keeps tyro's parsing and help untouched and only rewrites
the failure message.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Box-drawing and rule characters tyro frames its messages with (rich's default box).
_FRAME = re.compile(r"[\u2500-\u257f]+")
_SKIP = ("For full helptext", "Value error", "Unrecognized options", "Parsing error", "Required options")


def one_line_error(text: str) -> str:
    """The message of a framed ``tyro`` error as one line (frame, rules and the help pointer dropped)."""
    parts = []
    for line in text.splitlines():
        line = _FRAME.sub(" ", line).strip()
        if not line or line.startswith("For full helptext") or line in _SKIP:
            continue
        parts.append(line)
    return " ".join(" ".join(parts).split()) or "invalid command line"


def parse_cli(cls: type[T], *, args: Sequence[str] | None = None, prog: str = "mojax", **tyro_kwargs: Any) -> T:
    """``tyro.cli(cls, args=args, **tyro_kwargs)``; a parse error exits 2 with one line ``"<prog>: error: …"``.

    ``--help`` and successful parses behave exactly as ``tyro.cli``. With ``--debug`` among the arguments the
    original framed message is shown as well.
    """
    import tyro

    argv = list(sys.argv[1:] if args is None else args)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=argv, **tyro_kwargs)
    except SystemExit as exit_:
        text = captured.getvalue()
        if not exit_.code:  # --help and friends: tyro's own output, unchanged
            sys.stderr.write(text)
            raise
        if "--debug" in argv:
            sys.stderr.write(text)
        print(f"{prog}: error: {one_line_error(text)}", file=sys.stderr)
        raise SystemExit(2) from None
