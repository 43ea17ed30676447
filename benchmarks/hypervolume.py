"""Benchmark: mojax.metrics.hypervolume (NumPy, exact) vs moocore (C) on random fronts.

Run:  .venv/bin/python benchmarks/hypervolume.py [--rounds 7]

Cases: 2-D with n = 10,000 and 3-D with n = 1,000 points on the positive unit sphere (mutually non-dominated, the
hard case: nothing is filtered away), maximisation with reference 0; moocore gets the negated problem (it
minimises). Reports both values, their absolute difference, and median times over alternating rounds. The last
line is ``hv_time_ratio_vs_moocore=<worst mojax/moocore time ratio over the cases>``.
"""

from __future__ import annotations

import argparse
import time

import moocore
import numpy as np

from mojax.metrics import hypervolume


def sphere_front(n: int, k: int, seed: int) -> np.ndarray:
    x = np.abs(np.random.default_rng(seed).normal(size=(n, k)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows, ratios = [], []
    for k, n in ((2, 10_000), (3, 1_000)):
        pts = sphere_front(n, k, seed=k)
        ref = np.zeros(k)
        ours = hypervolume(pts, ref)
        theirs = moocore.hypervolume(-pts, ref=-ref)
        t_ours, t_theirs = [], []
        for _ in range(args.rounds):  # alternate the two
            t0 = time.perf_counter()
            hypervolume(pts, ref)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            moocore.hypervolume(-pts, ref=-ref)  # the negation is part of using moocore for maximisation
            t_theirs.append(time.perf_counter() - t0)
        a, b = float(np.median(t_ours)), float(np.median(t_theirs))
        ratios.append(a / b)
        rows.append(f"{k} | {n} | {ours:.15f} | {theirs:.15f} | {abs(ours - theirs):.1e} | {a * 1e3:.3f} | {b * 1e3:.3f} | {a / b:.1f}x")
    print(f"rounds={args.rounds} (medians), moocore {moocore.__version__}")
    print("K | n | mojax HV | moocore HV | abs diff | mojax ms | moocore ms | time ratio")
    print("|".join(["---"] * 8))
    for row in rows:
        print(row)
    print(f"hv_time_ratio_vs_moocore={max(ratios):.2f}")


if __name__ == "__main__":
    main()
