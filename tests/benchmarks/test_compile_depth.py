"""Smoke test of benchmarks/compile_depth.py's core: one DPO step lowered, compiled and run, scanned and unrolled,
with the same loss (the benchmark itself runs 2/8/32 layers in fresh processes)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compile_depth  # noqa: E402

TINY = dict(vocab_size=32, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32, max_positions=16)


def test_measure_scanned_and_unrolled_give_the_same_loss():
    scanned = compile_depth.measure(2, True, sizes=TINY, pairs=1, seq=8)
    unrolled = compile_depth.measure(2, False, sizes=TINY, pairs=1, seq=8)
    for out in (scanned, unrolled):
        assert set(out) == {"lower_s", "compile_s", "total_s", "cpu_s", "stablehlo_chars", "hlo_chars", "loss"}
        assert out["compile_s"] > 0 and out["total_s"] >= out["compile_s"] and out["hlo_chars"] > 1000
        assert math.isfinite(out["loss"]) and out["loss"] > 0
    assert abs(scanned["loss"] - unrolled["loss"]) <= 1e-5
