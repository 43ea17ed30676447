"""Shared helpers for the benchmarks: alternating runs, medians and ratios, per-process peak memory, tables.

Not a benchmark itself (``python benchmarks/_bench.py`` prints this docstring). The other scripts import it with
``from _bench import ...`` (Python puts the script's folder first on ``sys.path``).

Why these shapes:

* **Alternation.** This machine is shared, so its load drifts by multiples during a run. Measuring A, A, A, then B,
  B, B would fold that drift into the comparison. :func:`alternate` runs one repetition of every contender per
  round, rotating which goes first, and :func:`paired_ratios` divides within a round, so each ratio compares runs
  taken minutes apart at most; the reported ratio is the median of those.
* **One process per measured config for memory.** A process's peak RSS never goes down, so measuring two configs in
  one process reports the larger for both. :func:`run_measured` runs a command as a child and reads that child's own
  peak RSS from the kernel (``os.wait4`` returns the child's ``rusage``), which needs no cooperation from the child.
  Keep the driver free of JAX and torch anyway: it is then small, and its runs do not compete with the child.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# ru_maxrss is in kibibytes on Linux, bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024
MIB = 2 ** 20


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (``ValueError`` on empty input, NaN if any value is NaN)."""
    values = list(values)
    if not values:
        raise ValueError("median of an empty sequence")
    if any(math.isnan(v) for v in values):
        return math.nan
    return float(statistics.median(values))


def alternate(contenders: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Call every contender once per round, rotating the starting contender each round.

    Round ``r`` calls the contenders in their mapping order rotated left by ``r``, so no contender always runs
    first (right after a warm-up, or right after another's memory churn).

    Args:
      contenders: name → zero-argument callable returning one measurement (e.g. seconds, or a dict).
      rounds: number of rounds (≥ 1).

    Returns:
      name → list of its ``rounds`` measurements, in round order.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(contenders)
    if not names:
        raise ValueError("no contenders to alternate")
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(contenders[name]())
    return out


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerator[r] / denominator[r]`` of two alternated series (same length)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"series differ in length: {len(numerator)} vs {len(denominator)}")
    if not numerator:
        raise ValueError("no rounds to pair")
    return [n / d if d else math.inf for n, d in zip(numerator, denominator)]


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of the per-round ratio: robust to load that drifts between rounds."""
    return median(paired_ratios(numerator, denominator))


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[Any], Any] = lambda x: x
               ) -> list[float]:
    """Wall-clock seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` is applied to each result inside the timed region (pass ``jax.block_until_ready`` for JAX, whose calls
    return before the computation finishes).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return times


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (``getrusage(RUSAGE_SELF).ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _RSS_UNIT


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measured:
    """A finished child process: its exit status, output, wall time, and peak RSS (bytes, from the kernel)."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_bytes: int

    def json_result(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object (how a child reports its measurements)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
        raise ValueError(f"child printed no JSON object line; stdout tail:\n{self.stdout[-2000:]}\n"
                         f"stderr tail:\n{self.stderr[-2000:]}")


# Spawned child's peak RSS on Linux: at exec the kernel folds the *old* address space's high-water mark into the
# process's ru_maxrss, and a child spawned by vfork/fork starts from its parent's address space, so a child started
# straight from a big driver would report at least the driver's own peak. The launcher below is a bare Python
# (`-S -I`, ~10 MiB) that forks the real command and reports the ``wait4`` rusage: the floor is the launcher's size.
_LAUNCHER = """
import json, os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"maxrss": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                 check: bool = True) -> Measured:
    """Run ``cmd`` as a child process and measure its own peak RSS.

    The command runs under a minimal launcher process that forks it and reads its ``rusage`` with ``os.wait4``, so
    the peak is that process's alone: not the maximum over every child this process waited for (``RUSAGE_CHILDREN``)
    and not inflated by this (possibly large) driver's memory, which a directly spawned child would inherit into
    its ``ru_maxrss`` at ``exec``. The floor is the launcher's ~10 MiB. The command's own children are not counted.

    Args:
      cmd: the command (argv list).
      env: extra environment variables, added to this process's environment.
      timeout: seconds before the command (its whole process group) is killed (``TimeoutError``).
      check: raise ``RuntimeError`` (with the stderr tail) if the command exits non-zero.
    """
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "rusage.json")
        with open(os.path.join(tmp, "out"), "w+") as out, open(os.path.join(tmp, "err"), "w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", _LAUNCHER, report, *cmd], stdout=out,
                                    stderr=err, env=full_env, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TimeoutError(f"{' '.join(cmd)} ran past {timeout} s") from None
            wall = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if not os.path.exists(report):
            raise RuntimeError(f"the launcher of {' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
        with open(report) as f:
            usage = json.load(f)
    result = Measured(returncode=usage["code"], stdout=stdout, stderr=stderr, wall_s=wall,
                      peak_rss_bytes=int(usage["maxrss"]) * _RSS_UNIT)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {result.returncode}; stderr tail:\n{result.stderr[-3000:]}")
    return result


def load_average() -> str:
    """The 1/5/15-minute load averages and the core count, e.g. ``"load 11.0/13.2/12.9 on 2 cores"``."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} cores"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats printed with 4 significant digits, everything else with ``str``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(headers)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(name: str, value: float) -> str:
    """The single ``name=value`` line each benchmark ends with (4 significant digits)."""
    if not name.isidentifier():
        raise ValueError(f"headline name must be an identifier, got {name!r}")
    return f"{name}={value:.4g}"


if __name__ == "__main__":
    print(__doc__)
