"""Tests for benchmarks/pareto_cost.py: parity search, speedup bookkeeping, and a --quick run's output contract."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pareto_cost as P  # noqa: E402

from experiments._common import cli  # noqa: E402


def _front(steps, seconds, hv, compile_seconds=1.0, cpu=None, compile_cpu=None):
    cpu = 2 * seconds if cpu is None else cpu
    return P.Front(steps, seconds, compile_seconds, cpu, 2 * compile_seconds if compile_cpu is None else compile_cpu,
                   hv)


def test_first_reaching_takes_the_first_point_at_or_above_the_target():
    curve = [_front(75, 2.0, 0.70), _front(150, 2.5, 0.74), _front(225, 3.0, 0.73), _front(300, 3.5, 0.75)]
    assert P.first_reaching(curve, 0.74).steps == 150  # equal counts as reached
    assert P.first_reaching(curve, 0.745).steps == 300  # a later dip below does not matter, the first hit does
    assert P.first_reaching(curve, 0.76) is None
    assert P.first_reaching([], 0.1) is None


def test_median_speedup_ranks_unreached_rounds_lowest():
    assert P.median_speedup([3.0, 1.0, 2.0]) == 2.0
    assert P.median_speedup([3.0, None, 2.0]) == 2.0  # the unreached round is the lowest, the median is 2
    assert math.isnan(P.median_speedup([3.0, None, None]))  # the median round never reached the target
    assert P.median_speedup([4.0, 2.0]) == 3.0
    assert math.isnan(P.median_speedup([4.0, None]))
    with pytest.raises(ValueError, match="no rounds"):
        P.median_speedup([])


def test_speedups_at_divides_within_each_round():
    ls = [_front(1650, 12.0, 0.74, compile_seconds=2.0, cpu=20.0, compile_cpu=3.0),
          _front(1650, 18.0, 0.73, compile_seconds=4.0, cpu=30.0, compile_cpu=5.0)]
    cos = [[_front(75, 3.0, 0.70, compile_seconds=2.0, cpu=4.0, compile_cpu=3.0),
            _front(150, 4.0, 0.74, compile_seconds=2.0, cpu=6.0, compile_cpu=3.0)],
           [_front(75, 5.0, 0.60), _front(150, 6.0, 0.70)]]
    out = P.speedups_at(ls, cos, 0.735)
    assert out["steps"] == [150, None]
    assert out["wall"] == [12.0 / 4.0, None]
    assert out["cpu"] == [20.0 / 6.0, None]
    assert out["wall_excl_compile"] == [(12.0 - 2.0) / (4.0 - 2.0), None]
    assert out["cpu_excl_compile"] == [(20.0 - 3.0) / (6.0 - 3.0), None]
    # a lower target is reached earlier in both rounds
    low = P.speedups_at(ls, cos, 0.70)
    assert low["steps"] == [75, 150] and low["wall"] == [12.0 / 3.0, 18.0 / 6.0]


def test_config_validation():
    with pytest.raises(ValueError, match="repeats"):
        P.BenchConfig(experiment=P.experiment_config(quick=True), repeats=0)
    with pytest.raises(ValueError):
        P.BenchConfig(experiment=P.experiment_config(quick=True), chunk_steps=0)


def test_quick_run_prints_tables_and_ends_with_the_headline(capsys):
    speedup = cli(P.get_config, P.main, argv=["--quick", "--repeats", "1", "--experiment.num-queries", "64",
                                              "--sweep-cos-steps", "6", "--sweep-run-steps", "6"])
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"front_speedup_vs_dpo_ls=(nan|[0-9.e+-]+)", out[-1])
    value = float(out[-1].split("=")[1])
    assert (math.isnan(value) and math.isnan(speedup)) or value == pytest.approx(speedup, rel=1e-3)
    text = "\n".join(out)
    assert "| round | DPO-LS s (compile)" in text and "| W-COS steps | HV (median)" in text
    # one W-COS curve row per chunk up to DPO-LS's total step count (11 weights x 6 steps, chunks of 6)
    rows = [line for line in out if re.match(r"\| \d+ \| 0\.\d+ \| ", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(6, 67, 6))
    assert "cores at start" in text and "command: " in text
    # the sweep's constant-schedule runs repeat round 0's work (same seed, init and budget): the same HVs, bit for bit
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    constant = cells(next(line for line in out if line.startswith("| constant |")))
    round0 = cells(next(line for line in out if line.startswith("| 0 | ")))
    assert constant[2] == round0[3]  # DPO-LS 6 steps per run vs round 0's DPO-LS HV
    assert constant[1] == cells(rows[0])[1]  # a fresh 6-step W-COS-DPO run vs round 0's first chunk
    assert next(line for line in out if line.startswith("| cosine |"))


def test_step_budget_for_four_x_from_compile_and_step_times():
    # DPO-LS: 12 s and 20 s fronts of 100 steps (2 s compile) -> median 16 s, steps of 0.10 and 0.18 s
    ls = [_front(100, 12.0, 0.7, compile_seconds=2.0), _front(100, 20.0, 0.7, compile_seconds=2.0)]
    # W-COS-DPO: compile 1 s; 50 steps in 1 + 50·0.02 s, and 1 + 50·0.04 s
    cos = [[_front(25, 1.5, 0.6, compile_seconds=1.0), _front(50, 2.0, 0.7, compile_seconds=1.0)],
           [_front(25, 2.0, 0.6, compile_seconds=1.0), _front(50, 3.0, 0.7, compile_seconds=1.0)]]
    b = P.step_budget_for(ls, cos, 4.0)
    assert b["dpo_ls_seconds"] == 16.0 and b["cos_compile_seconds"] == 1.0
    assert b["dpo_ls_step_ms"] == pytest.approx(140.0) and b["cos_step_ms"] == pytest.approx(30.0)
    assert b["steps_allowed"] == pytest.approx((16.0 / 4 - 1.0) / 0.03)  # 100 steps
    assert b["cap"] == 16.0
    tight = P.step_budget_for(ls, cos, 20.0)  # 16/20 s < the 1 s compile: no step fits
    assert tight["steps_allowed"] < 0
    # in CPU time (_front: cpu = 2 × wall, compile CPU = 2 × compile): DPO-LS 32 s, W-COS compile 2 s, 60 ms per step
    c = P.step_budget_for(ls, cos, 4.0, cpu=True)
    assert c["dpo_ls_seconds"] == 32.0 and c["cos_compile_seconds"] == 2.0 and c["cos_step_ms"] == pytest.approx(60.0)
    assert c["steps_allowed"] == pytest.approx((32.0 / 4 - 2.0) / 0.06)
