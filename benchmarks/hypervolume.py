"""Benchmark: mojax.metrics.hypervolume (compiled numba kernels, and the NumPy fallback) vs moocore (C), same run.

Run:  .venv/bin/python benchmarks/hypervolume.py [--rounds 15] [--min-batch-s 0.01]

Cases (the issue's targets): 2-D with n = 10,000 and 3-D with n = 1,000 points on the positive unit sphere
(mutually non-dominated, the hard case: nothing is filtered away), plus 3-D n = 1,000 uniform in the cube (mostly
dominated) and, outside the target, 4-D n = 300, 5-D n = 200 and 6-D n = 100 sphere fronts. Everything is posed in
moocore's native sense (minimisation of the negated front, reference 0), so moocore pays no negation and mojax pays
its own.

Contenders, alternated within each round (``_bench.alternate``): ``mojax`` (the default ``backend="auto"``: the
compiled kernels when numba is installed), ``mojax-numpy`` (``backend="numpy"``: the fallback without numba), and
``moocore.hypervolume``. One measurement is the mean time per call over a batch of calls sized so that moocore's
batch takes about ``--min-batch-s`` (sub-millisecond calls are too short to time one by one on a loaded box). The
table reports medians over rounds; a time ratio is the median of per-round ratios. Every value must agree with
moocore to 1e-12 relative, or the script exits non-zero.

The last line is ``hv_time_ratio_vs_moocore=<worst default-path ratio over the 2-D and 3-D target cases>``; the line
before it gives the worst ratio over every row, the 4-D to 6-D ones included.
"""

from __future__ import annotations

import argparse
import sys
import time

import moocore
import numpy as np
from _bench import alternate, format_table, headline, load_average, median, median_ratio

from mojax.metrics import hypervolume

TARGET_K = (2, 3)  # the target: within 3x of moocore for 2-D n = 1e4 and 3-D n = 1e3


def sphere_front(n: int, k: int, seed: int) -> np.ndarray:
    x = np.abs(np.random.default_rng(seed).normal(size=(n, k)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cube_cloud(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, k))


def batched(fn, reps: int):
    """A contender: run ``fn`` ``reps`` times, return the mean seconds per call."""
    def run() -> float:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--min-batch-s", type=float, default=0.01, help="target seconds per moocore batch")
    args = parser.parse_args()
    print(f"moocore {moocore.__version__}; {args.rounds} alternating rounds, medians; start: {load_average()}")

    start = time.perf_counter()
    hypervolume(np.ones((1, 3)), np.zeros(3))
    first = time.perf_counter() - start
    compiled = sys.modules["mojax.metrics.hypervolume"]._compiled
    print(f"default backend: {'numba (compiled kernels)' if compiled else 'numpy (numba not installed)'}; "
          f"first 3-D call in this process {first:.2f} s (compile, or numba import + load of cached machine code)")

    cases = [("sphere", 2, 10_000), ("sphere", 3, 1_000), ("cube", 3, 1_000), ("sphere", 4, 300),
             ("sphere", 5, 200), ("sphere", 6, 100)]
    headers = ["front", "K", "n", "moocore HV", "abs diff mojax", "abs diff mojax-numpy", "mojax ms", "mojax-numpy ms",
               "moocore ms", "mojax / moocore", "mojax-numpy / moocore"]
    rows, target_ratios, all_ratios = [], [], []
    failed = False
    for kind, k, n in cases:
        pts = -(sphere_front(n, k, seed=k) if kind == "sphere" else cube_cloud(n, k, seed=k))  # minimisation
        ref = np.zeros(k)
        fns = {
            "mojax": lambda: hypervolume(pts, ref, maximize=False),
            "mojax-numpy": lambda: hypervolume(pts, ref, maximize=False, backend="numpy"),
            "moocore": lambda: moocore.hypervolume(pts, ref=ref),
        }
        values = {name: fn() for name, fn in fns.items()}  # also warms every path up
        expected = values["moocore"]
        diffs = {name: abs(values[name] - expected) for name in ("mojax", "mojax-numpy")}
        for name, diff in diffs.items():
            if diff > 1e-12 * max(1.0, abs(expected)):
                print(f"MISMATCH {kind} K={k} n={n}: {name} {values[name]!r} vs moocore {expected!r}")
                failed = True
        once = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            once[name] = time.perf_counter() - t0
        reps = {name: max(1, round(args.min_batch_s / max(once["moocore"], 1e-6))) for name in fns}
        # The slow NumPy fallback needs fewer calls to fill the same batch time; never more than moocore's.
        reps["mojax-numpy"] = max(1, min(reps["moocore"], round(args.min_batch_s / max(once["mojax-numpy"], 1e-6))))
        reps["mojax"] = max(1, min(reps["moocore"], round(args.min_batch_s / max(once["mojax"], 1e-6))))
        times = alternate({name: batched(fn, reps[name]) for name, fn in fns.items()}, args.rounds)
        ratio = median_ratio(times["mojax"], times["moocore"])
        ratio_numpy = median_ratio(times["mojax-numpy"], times["moocore"])
        all_ratios.append(ratio)
        if k in TARGET_K:
            target_ratios.append(ratio)
        rows.append([kind, k, n, f"{expected:.15f}", f"{diffs['mojax']:.1e}", f"{diffs['mojax-numpy']:.1e}",
                     f"{median(times['mojax']) * 1e3:.3f}", f"{median(times['mojax-numpy']) * 1e3:.3f}",
                     f"{median(times['moocore']) * 1e3:.3f}", f"{ratio:.2f}x", f"{ratio_numpy:.1f}x"])
    print(format_table(headers, rows))
    print(f"end: {load_average()}")
    print(f"worst default-path ratio over all rows (4-D to 6-D included, outside the target): {max(all_ratios):.2f}")
    if failed:
        sys.exit("hypervolume values disagree with moocore (see MISMATCH lines)")
    print(headline("hv_time_ratio_vs_moocore", max(target_ratios)))


if __name__ == "__main__":
    main()
