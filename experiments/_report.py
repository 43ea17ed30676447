"""Report writing shared by every experiment: JSON artefacts, Markdown tables, the report, the verdict, plots.

An experiment's run directory holds ``config.json`` (:func:`save_config`), ``metrics.json`` (:func:`save_metrics`,
the experiment's own schema plus, when it decides a claim, a ``"verdict"`` block from :class:`Verdict`), PNG plots
(:func:`plot_pareto_fronts`, :func:`plot_curves`, :func:`plot_curve_panels`, :func:`plot_histograms`) and
``report.md`` (:func:`write_report`: title, what ran, the command, Markdown results tables, the plots inline, the
verdict and a paragraph on whether the paper's claim held, written by the experiment from its measured numbers).

Nothing here knows an experiment: callers pass rows, curves, points and text. Host-side only (no JAX import), so
it stays cheap to import and test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: experiments run in CI and over ssh; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mojax.train.jsonable import to_jsonable as _to_jsonable  # noqa: E402

__all__ = [
    "VERDICT_RESULTS",
    "Verdict",
    "command_line",
    "load_json",
    "markdown_table",
    "plot_curve_panels",
    "plot_curves",
    "plot_histograms",
    "plot_pareto_fronts",
    "save_config",
    "save_json",
    "save_metrics",
    "to_jsonable",
    "write_report",
]


# ----------------------------------------------------------------------------------------------------------------
# JSON artefacts
# ----------------------------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Strict JSON values for experiment artefacts: :func:`mojax.train.jsonable.to_jsonable` with ``strict=True``
    (non-finite floats → ``null`` with a ``RuntimeWarning`` naming their paths; unknown objects raise)."""
    return _to_jsonable(obj, strict=True)


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
# Verdict
# ----------------------------------------------------------------------------------------------------------------

VERDICT_RESULTS = ("held", "did_not_hold", "inconclusive", "smoke")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether a paper's claim held, as computed by the experiment (``metrics.json["verdict"]``).

    Attributes:
      claim: the claim tested, one sentence.
      result: one of :data:`VERDICT_RESULTS`; a ``--quick`` run is always ``"smoke"`` (it concludes nothing).
      test: the decision rule and its level, e.g. "paired bootstrap of the accuracy difference, 95% CI excludes 0".
      seeds: training seeds behind the numbers.
      ci: optional interval ``(lo, hi)`` of the tested quantity.
    """

    claim: str
    result: str
    test: str
    seeds: int = 1
    ci: tuple[float, float] | None = None

    def __post_init__(self):
        if self.result not in VERDICT_RESULTS:
            raise ValueError(f"verdict result must be one of {VERDICT_RESULTS}, got {self.result!r}")
        if not self.claim.strip() or not self.test.strip():
            raise ValueError("a verdict needs a non-empty claim and test")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.ci is not None and not (len(self.ci) == 2 and all(map(math.isfinite, self.ci))
                                        and self.ci[0] <= self.ci[1]):
            raise ValueError(f"ci must be a finite (lo, hi) with lo <= hi, got {self.ci}")

    @classmethod
    def smoke(cls, claim: str) -> Verdict:
        """The verdict of a ``--quick`` smoke run: it checks that the pipeline runs, not the claim."""
        return cls(claim=claim, result="smoke", test="none: --quick smoke preset, numbers not meaningful")

    def markdown(self) -> str:
        """One line for ``report.md``."""
        ci = "" if self.ci is None else f"; interval [{self.ci[0]:.4g}, {self.ci[1]:.4g}]"
        return (f"**Verdict: {self.result.replace('_', ' ')}** — claim: {self.claim.strip()} Test: "
                f"{self.test.strip()}; seeds: {self.seeds}{ci}.")


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
                 claim: str, sections: Mapping[str, str] | None = None, verdict: Verdict | None = None) -> Path:
    """Write ``report.md`` into ``run_dir``.

    Layout: ``# title``; "What ran" (``what_ran``); "Command" (``command`` in a code block); "Results" with one
    sub-heading per table (a ready Markdown string or rows for :func:`markdown_table`); "Plots" with each PNG inline
    as ``![caption](file.png)``; extra ``sections`` (heading → Markdown); and "Did the paper's claim hold here?" with
    ``claim`` — a paragraph the experiment writes from its measured numbers — preceded by ``verdict``'s line when
    given (a smoke verdict also says that the run draws no conclusion).

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
    lines += ["## Did the paper's claim hold here?", ""]
    if verdict is not None:
        lines += [verdict.markdown(), ""]
        if verdict.result == "smoke":
            lines += ["This is a smoke run: it draws no conclusion about the paper.", ""]
    lines += [claim.strip(), ""]
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
    return _save(fig, path)


def _xy(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (np.asarray(d, dtype=np.float64) for d in data)
    else:
        y = np.asarray(data, dtype=np.float64)
        x = np.arange(len(y), dtype=np.float64)
    if x.shape != y.shape or y.ndim != 1:
        raise ValueError(f"{name}: x and y must be equal-length 1-D arrays, got {x.shape} and {y.shape}")
    return x, y


def _save(fig: Any, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve_panels(path: str | os.PathLike, panels: Mapping[str, Mapping[str, Any]], *, xlabel: str = "step",
                      ylabels: Sequence[str] | str = "", logy: bool = False, smooth: int = 1) -> Path:
    """Side-by-side line plots: panel title → {curve name → values ``[n]`` or ``(x [n], y [n])``}.

    A curve name keeps its colour across panels (the colour cycle follows the order of first appearance).

    Args:
      ylabels: one y label per panel, or one for all.
      smooth: moving-average window (1 = raw); the raw curve is drawn faintly underneath when smoothing.
    """
    if not panels or not all(panels.values()):
        raise ValueError("plot_curve_panels needs at least one panel, each with at least one curve")
    ylabels = [ylabels] * len(panels) if isinstance(ylabels, str) else list(ylabels)
    names = list(dict.fromkeys(n for curves in panels.values() for n in curves))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {n: cycle[i % len(cycle)] for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (title, curves), ylabel in zip(axes.flat, panels.items(), ylabels):
        for name, data in curves.items():
            x, y = _xy(name, data)
            if smooth > 1 and len(y) >= smooth:
                ax.plot(x, y, alpha=0.25, color=colors[name])
                ax.plot(x[smooth - 1:], np.convolve(y, np.ones(smooth) / smooth, mode="valid"), color=colors[name],
                        label=name)
            else:
                ax.plot(x, y, color=colors[name], label=name)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(path: str | os.PathLike, curves: Mapping[str, Any], *, xlabel: str = "step", ylabel: str = "loss",
                title: str = "", logy: bool = False, smooth: int = 1) -> Path:
    """Line plot of several curves (e.g. training losses per method): one panel of :func:`plot_curve_panels`.

    Args:
      curves: name → values ``[n]`` (x = 0..n−1) or ``(x [n], y [n])``.
      smooth: moving-average window (1 = raw); the raw curve is drawn faintly underneath when smoothing.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    return plot_curve_panels(path, {title: curves}, xlabel=xlabel, ylabels=ylabel, logy=logy, smooth=smooth)


def plot_histograms(path: str | os.PathLike, panels: Mapping[str, Mapping[str, Any]], *, xlabels: Sequence[str] | str,
                    bins: int | Sequence[float] = 40, density: bool = True, step: bool = False) -> Path:
    """Side-by-side histograms: panel title → {series name → values}; empty series are skipped.

    Args:
      xlabels: one x label per panel, or one for all.
      bins: a bin count or shared bin edges.
      step: outline histograms (many overlapping series) instead of translucent bars.
    """
    if not panels:
        raise ValueError("plot_histograms needs at least one panel")
    xlabels = [xlabels] * len(panels) if isinstance(xlabels, str) else list(xlabels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.9), squeeze=False)
    for ax, (title, series), xlabel in zip(axes.flat, panels.items(), xlabels):
        for name, values in series.items():
            values = np.asarray(values, np.float64).ravel()
            if values.size:
                ax.hist(values, bins=bins, density=density, label=name,
                        **({"histtype": "step"} if step else {"alpha": 0.6}))
        if title:
            ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("density" if density else "count")
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)
