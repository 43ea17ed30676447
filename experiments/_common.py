"""Shared experiment infrastructure: run directories, JSON artefacts, the report writer, plots, a timer and the CLI.

Every experiment in ``experiments/`` is one file shaped the same way::

    \"\"\"What it reproduces. Run: python -m experiments.my_exp [--quick] [--field value ...]\"\"\"
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config: ...                      # laptop defaults; ``out: str | None = None`` picks the run directory

    def get_config(quick: bool = False) -> Config: ...   # ``quick`` = the seconds-long CI smoke preset
    def main(config: Config) -> Path: ...                # returns the run directory
    if __name__ == "__main__":
        cli(get_config, main)

and writes into its run directory (``runs/<experiment>/<timestamp>`` unless ``--out`` is given):
``config.json`` (the resolved config), ``metrics.json`` (the numbers), PNG plots and ``report.md`` (title, what ran,
the command, Markdown results tables, the plots inline, and a paragraph on whether the paper's claim held, written
by the experiment from its measured numbers).

Host-side only: nothing here imports JAX, so the helpers stay cheap to import and test. Callers time JAX work
after ``jax.block_until_ready`` on the result (asynchronous dispatch would otherwise stop the clock early).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # headless: experiments run in CI and over ssh; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "Timer",
    "cli",
    "command_line",
    "load_json",
    "make_run_dir",
    "markdown_table",
    "plot_curves",
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


def to_jsonable(obj: Any, *, _path: str = "$", _bad: list | None = None) -> Any:
    """Convert configs and results to plain JSON types.

    Dataclasses → dicts, NumPy/JAX arrays → nested lists, NumPy scalars → Python numbers, tuples → lists,
    ``Path`` → str. Non-finite floats become ``null`` (strict JSON has no NaN) and are reported with their path in a
    ``RuntimeWarning``, so a diverged run still writes its files but never silently.
    """
    top = _bad is None
    bad: list = [] if top else _bad
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name), _path=f"{_path}.{f.name}", _bad=bad)
               for f in dataclasses.fields(obj)}
    elif isinstance(obj, Mapping):
        out = {str(k): to_jsonable(v, _path=f"{_path}.{k}", _bad=bad) for k, v in obj.items()}
    elif isinstance(obj, (str, bool)) or obj is None:
        out = obj
    elif isinstance(obj, Path):
        out = str(obj)
    elif isinstance(obj, (int, np.integer)):
        out = int(obj)
    elif isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            bad.append(_path)
            value = None
        out = value
    elif isinstance(obj, np.bool_):
        out = bool(obj)
    elif hasattr(obj, "__array__") and not isinstance(obj, (list, tuple)):
        arr = np.asarray(obj)
        out = to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist(), _path=_path, _bad=bad)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        out = [to_jsonable(v, _path=f"{_path}[{i}]", _bad=bad) for i, v in enumerate(obj)]
    else:
        raise TypeError(f"cannot convert {type(obj).__name__} at {_path} to JSON")
    if top and bad:
        warnings.warn(f"non-finite values written as null: {', '.join(bad[:10])}"
                      + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""), RuntimeWarning, stacklevel=2)
    return out


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``to_jsonable(obj)`` as indented strict JSON (atomically: temp file then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text())


def save_config(run_dir: str | os.PathLike, config: Any) -> Path:
    """Save the resolved config (a dataclass) as ``config.json`` in ``run_dir``."""
    if not (dataclasses.is_dataclass(config) or isinstance(config, Mapping)):
        raise TypeError(f"config must be a dataclass instance or a mapping, got {type(config).__name__}")
    return save_json(Path(run_dir) / "config.json", config)


def save_metrics(run_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Save the experiment's numbers as ``metrics.json`` in ``run_dir`` (the schema is the experiment's own)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    return save_json(Path(run_dir) / "metrics.json", metrics)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _format_cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "–"
    if fmt is not None:
        return format(value, fmt)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                   formats: Mapping[str, str] | None = None) -> str:
    """Render rows (dicts) as a GitHub Markdown table.

    Args:
      rows: one mapping per row; a missing key renders as "–".
      columns: column order; default the keys of the first row followed by new keys in order of appearance.
      formats: optional ``format()`` spec per column (e.g. ``{"hypervolume": ".4f"}``); otherwise ints get thousands
        separators and floats 4 significant digits (scientific outside [1e-3, 1e5)).
    """
    if not rows:
        raise ValueError("markdown_table needs at least one row")
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    formats = dict(formats or {})
    head = "| " + " | ".join(str(c) for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_format_cell(row.get(c), formats.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, shell-quoted, as ``python -m <module> args`` when run with ``-m``."""
    argv = list(sys.argv if argv is None else argv)
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    if argv and spec is not None and spec.name and argv[0].endswith(".py"):
        head = ["python", "-m", spec.name]
    elif argv:
        head = ["python", argv[0]]
    else:
        head = ["python"]
    return " ".join(shlex.quote(a) for a in head + argv[1:])


def write_report(run_dir: str | os.PathLike, *, title: str, what_ran: str, command: str,
                 tables: Mapping[str, str | Sequence[Mapping[str, Any]]], plots: Sequence[str | tuple[str, str]] = (),
                 claim: str, sections: Mapping[str, str] | None = None) -> Path:
    """Write ``report.md`` into ``run_dir``.

    Layout: ``# title``; "What ran" (``what_ran``); "Command" (``command`` in a code block); "Results" with one
    sub-heading per table (a ready Markdown string or rows for :func:`markdown_table`); "Plots" with each PNG inline
    as ``![caption](file.png)``; extra ``sections`` (heading → Markdown); and "Did the paper's claim hold here?" with
    ``claim`` — a paragraph the experiment writes from its measured numbers.

    Args:
      plots: file names relative to ``run_dir`` (or ``(file, caption)`` pairs); each must exist, so a report never
        links a missing image.
    Raises:
      ValueError: on an empty title/claim, or FileNotFoundError when a plot is missing.
    """
    run_dir = Path(run_dir)
    if not title.strip() or not claim.strip():
        raise ValueError("a report needs a non-empty title and claim paragraph")
    lines = [f"# {title}", "", "## What ran", "", what_ran.strip(), "", "## Command", "", "```bash", command.strip(),
             "```", "", "## Results", ""]
    for heading, table in tables.items():
        lines += [f"### {heading}", "", table.strip() if isinstance(table, str) else markdown_table(table), ""]
    if plots:
        lines += ["## Plots", ""]
        for item in plots:
            name, caption = (item, Path(item).stem.replace("_", " ")) if isinstance(item, str) else item
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"plot {name} not found in {run_dir}")
            lines += [f"![{caption}]({name})", ""]
    for heading, text in (sections or {}).items():
        lines += [f"## {heading}", "", text.strip(), ""]
    lines += ["## Did the paper's claim hold here?", "", claim.strip(), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def _front_mask(points: np.ndarray, maximize: bool) -> np.ndarray:
    """Non-dominated mask, O(n²) NumPy: fronts in reports have tens of points (the metric lives in mojax.metrics)."""
    p = points if maximize else -points
    ge = (p[None, :, :] >= p[:, None, :]).all(-1)  # ge[i, j]: j weakly dominates i
    gt = (p[None, :, :] > p[:, None, :]).any(-1)
    return ~(ge & gt).any(1)


def plot_pareto_fronts(path: str | os.PathLike, fronts: Mapping[str, Any], *, objective_names: Sequence[str],
                       title: str = "", maximize: bool = True, reference: Sequence[float] | None = None,
                       annotate: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Scatter each method's evaluated points and draw its Pareto front, one panel per objective pair.

    Args:
      path: PNG file to write.
      fronts: method name → points ``[n, K]`` (K ≥ 2): every evaluated weight's objective values, dominated points
        included (drawn hollow); the non-dominated ones are joined by a line (2-D panels, sorted by the x objective).
      objective_names: K axis labels.
      maximize: direction of the objectives (sets which points are non-dominated).
      reference: optional hypervolume reference point ``[K]``, drawn as a black cross.
      annotate: optional method → one label per point (e.g. the weight) written next to the points.

    K objectives give ``K·(K−1)/2`` panels (the Pareto filter is applied in the full K-D space, so in a projection a
    front point can look dominated).
    """
    if not fronts:
        raise ValueError("plot_pareto_fronts needs at least one method")
    arrays = {name: np.asarray(pts, dtype=np.float64) for name, pts in fronts.items()}
    k = len(objective_names)
    for name, pts in arrays.items():
        if pts.ndim != 2 or pts.shape[1] != k:
            raise ValueError(f"{name}: points must be [n, {k}], got shape {pts.shape}")
    if k < 2:
        raise ValueError("a Pareto plot needs at least 2 objectives")
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (i, j) in zip(axes.flat, pairs):
        for m, (name, pts) in enumerate(arrays.items()):
            color = colors[m % len(colors)]
            finite = np.isfinite(pts).all(1)
            pts = pts[finite]
            if len(pts) == 0:
                continue
            mask = _front_mask(pts, maximize)
            ax.scatter(pts[~mask, i], pts[~mask, j], facecolors="none", edgecolors=color, s=22)
            ax.scatter(pts[mask, i], pts[mask, j], color=color, s=26, label=name)
            if k == 2:
                order = np.argsort(pts[mask, i])
                ax.plot(pts[mask, i][order], pts[mask, j][order], color=color, lw=1.2)
            if annotate and name in annotate:
                labels = [lab for lab, f in zip(annotate[name], finite) if f]
                for lab, x, y in zip(labels, pts[:, i], pts[:, j]):
                    ax.annotate(lab, (x, y), fontsize=6, color=color, xytext=(2, 2), textcoords="offset points")
        if reference is not None:
            ax.scatter([reference[i]], [reference[j]], marker="x", color="black", s=30, label="HV reference")
        ax.set_xlabel(objective_names[i])
        ax.set_ylabel(objective_names[j])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(path: str | os.PathLike, curves: Mapping[str, Any], *, xlabel: str = "step", ylabel: str = "loss",
                title: str = "", logy: bool = False, smooth: int = 1) -> Path:
    """Line plot of several curves (e.g. training losses per method).

    Args:
      curves: name → values ``[n]`` (x = 0..n−1) or ``(x [n], y [n])``.
      smooth: moving-average window (1 = raw); the raw curve is drawn faintly underneath when smoothing.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, data in curves.items():
        if isinstance(data, tuple) and len(data) == 2:
            x, y = (np.asarray(d, dtype=np.float64) for d in data)
        else:
            y = np.asarray(data, dtype=np.float64)
            x = np.arange(len(y), dtype=np.float64)
        if x.shape != y.shape or y.ndim != 1:
            raise ValueError(f"{name}: x and y must be equal-length 1-D arrays, got {x.shape} and {y.shape}")
        if smooth > 1 and len(y) >= smooth:
            line, = ax.plot(x, y, alpha=0.25)
            kernel = np.ones(smooth) / smooth
            ax.plot(x[smooth - 1:], np.convolve(y, kernel, mode="valid"), color=line.get_color(), label=name)
        else:
            ax.plot(x, y, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    import tyro  # imported here: only the entry point needs it

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
    config = tyro.cli(type(default), default=default, args=args, description=description)
    return main_fn(config)

