"""Shared experiment infrastructure: the experiment file layout, run directories, a timer and the CLI.

Every experiment in ``experiments/`` is one file shaped the same way::

    \"\"\"What it reproduces. Run: python -m experiments.my_exp [--quick] [--field value ...]\"\"\"
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config: ...                      # laptop defaults; ``out: str | None = None`` picks the run directory

    def get_config(quick: bool = False) -> Config: ...   # ``quick`` = the seconds-long CI smoke preset
    def main(config: Config) -> Path: ...                # returns the run directory
    if __name__ == "__main__":
        cli(get_config, main)

and writes into its run directory (``runs/<experiment>/<timestamp>`` unless ``--out`` is given) through
:mod:`experiments._report` (``config.json``, ``metrics.json``, PNG plots, ``report.md``; re-exported here).

Host-side only: nothing here imports JAX, so the helpers stay cheap to import and test. Callers time JAX work
after ``jax.block_until_ready`` on the result (asynchronous dispatch would otherwise stop the clock early).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

# The report writers live in experiments._report; re-exported so every experiment imports one module.
from experiments._report import (
    Verdict,
    command_line,
    load_json,
    markdown_table,
    plot_curve_panels,
    plot_curves,
    plot_histograms,
    plot_pareto_fronts,
    save_config,
    save_json,
    save_metrics,
    to_jsonable,
    write_report,
)

__all__ = [
    "REPO_ROOT",
    "Timer",
    "Verdict",
    "cli",
    "command_line",
    "load_json",
    "make_run_dir",
    "markdown_table",
    "plot_curve_panels",
    "plot_curves",
    "plot_histograms",
    "plot_pareto_fronts",
    "save_config",
    "save_json",
    "save_metrics",
    "shared_data_dir",
    "to_jsonable",
    "write_report",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

ConfigT = TypeVar("ConfigT")


# ----------------------------------------------------------------------------------------------------------------
# Run directories and JSON artefacts
# ----------------------------------------------------------------------------------------------------------------


def shared_data_dir() -> Path | None:
    """The sample-data folder ``<repo>/../shared/data`` when present, else ``None`` (never copied into the repo)."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    return path if path.is_dir() else None


def make_run_dir(experiment: str, out: str | os.PathLike | None = None, *, root: str | os.PathLike = "runs") -> Path:
    """Create and return the run directory.

    Args:
      experiment: experiment name, e.g. ``"cos_dpo_ltr"``; must be a plain file name.
      out: explicit directory (``--out``); created with parents if missing. Existing files in it are overwritten
        file by file, never deleted.
      root: parent of the default ``<root>/<experiment>/<UTC timestamp>`` location.

    Returns:
      The directory path. Default names are UTC timestamps to the second with a ``-N`` suffix on collision, so two
      runs started in the same second never share a directory.
    """
    if not experiment or Path(experiment).name != experiment:
        raise ValueError(f"experiment must be a plain name without '/', got {experiment!r}")
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--out {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root) / experiment
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()  # atomic: a concurrent run with the same stamp gets FileExistsError and tries the next name
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {base}")


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``; reuse accumulates (``t.total``, ``t.count``).

    Uses ``time.perf_counter``; also records this process's CPU time (``cpu_seconds``, ``cpu_total``,
    ``time.process_time``, all threads), a steadier measure than wall time on a machine shared with other jobs. For
    JAX work, block on the result inside the ``with`` block (``jax.block_until_ready``), or the clock stops while the
    device is still computing.
    """

    def __init__(self) -> None:
        self.seconds = 0.0  # the last interval
        self.total = 0.0
        self.cpu_seconds = 0.0
        self.cpu_total = 0.0
        self.count = 0
        self._start: tuple[float, float] | None = None

    def __enter__(self) -> Timer:
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.seconds = time.perf_counter() - self._start[0]
        self.cpu_seconds = time.process_time() - self._start[1]
        self.total += self.seconds
        self.cpu_total += self.cpu_seconds
        self.count += 1
        self._start = None

    def __repr__(self) -> str:
        return f"Timer(seconds={self.seconds:.4f}, total={self.total:.4f}, count={self.count})"


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _accepts_quick(fn: Callable[..., Any]) -> bool:
    try:
        return "quick" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def cli(get_config_fn: Callable[..., ConfigT], main_fn: Callable[[ConfigT], Any], *,
        argv: Sequence[str] | None = None, description: str | None = None) -> Any:
    """Parse the command line into the experiment's frozen config and run ``main_fn`` on it.

    ``--quick`` (anywhere in ``argv``) selects the smoke preset ``get_config_fn(quick=True)``; every config field is
    then overridable with ``--field value`` (tyro, nested dataclasses as ``--a.b``). ``--help`` lists the fields
    with their defaults — the quick preset's defaults when ``--quick`` is given.

    Args:
      get_config_fn: returns the default config; must accept ``quick: bool`` for ``--quick`` to work.
      main_fn: runs the experiment on the resolved config; its return value is returned.
      argv: arguments without the program name (default ``sys.argv[1:]``).
      description: ``--help`` text (default the calling module's docstring).
    """
    from mojax.train.parse import parse_cli

    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    if quick and not _accepts_quick(get_config_fn):
        raise SystemExit(f"--quick: {getattr(get_config_fn, '__name__', 'get_config')}() has no quick preset")
    default = get_config_fn(quick=True) if quick else get_config_fn()
    if not dataclasses.is_dataclass(default):
        raise TypeError(f"get_config must return a dataclass instance, got {type(default).__name__}")
    if description is None:
        main_mod = sys.modules.get(getattr(main_fn, "__module__", ""), None)
        description = (main_mod.__doc__ or "") if main_mod is not None else ""
    description = (description or "").strip() + "\n\n--quick selects the seconds-long smoke-test preset."
    module = sys.modules.get(getattr(main_fn, "__module__", ""), None)
    spec = getattr(module, "__spec__", None)
    prog = spec.name if spec is not None else "experiment"  # `python -m experiments.spo` runs as __main__
    config = parse_cli(type(default), default=default, args=args, description=description, prog=prog)
    return main_fn(config)

