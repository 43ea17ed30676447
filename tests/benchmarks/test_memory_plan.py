"""benchmarks/memory_plan.py on a tiny Llama-shaped config: the script runs end to end (one child process per
device count, abstract state, lowered and compiled DPO step) and its numbers are consistent with each other.

What must hold, and why it can fail:
- the compiled step's argument bytes are the train state's plus the batch's shards (XLA's buffer assignment of
  the arguments is exact up to the replicated scalars), so a sharding that stops applying (a leaf left
  replicated, the optimizer state replicated) shows as a mismatch;
- the donated state is aliased to the output (a lost donation doubles the state in the peak);
- the analytic parameters + optimizer state + batch equal the compiled arguments (the estimate's exact part);
- the per-device peak on 16 devices is below that on 8 (FSDP halves the state and the batch per device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_plan.py"
TOL = 0.01  # relative; the only unmodelled argument bytes are a few replicated scalars (step, rng, hparams)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_plan") / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--models", "tiny", "--devices", "8", "16", "--seq", "64",
                           "--meshes", "fsdp", "--finetune", "full", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_script_prints_a_table_for_each_device_count(run):
    stdout, results = run
    assert len(results) == 2 and not any("error" in r for r in results), results
    assert [r["plan"]["devices"] for r in results] == [8, 16]
    assert "| tiny full/cached float32 N=8 fsdp8xtp1" in stdout and "N=16 fsdp16xtp1" in stdout
    assert "would not fit an 80 GB device" in stdout


def test_arguments_are_the_sharded_state_and_batch(run):
    _, results = run
    for r in results:
        c, a = r["compiled"], r["analytic"]
        expected = r["state_bytes"] + r["batch_bytes"]
        assert abs(c["argument"] - expected) <= TOL * expected, (r["label"], c["argument"], expected)
        exact_part = a["params"] + a["opt"] + a["batch"]
        assert abs(c["argument"] - exact_part) <= TOL * exact_part, (r["label"], c["argument"], exact_part)
        # donation: the whole state (params + AdamW moments) is written in place
        assert c["alias"] >= (1 - TOL) * (a["params"] + a["opt"]), (r["label"], c["alias"])
        assert c["peak"] == c["argument"] + c["output"] - c["alias"] + c["temp"]
        assert c["temp"] > 0 and r["compile_s"] > 0


def test_sixteen_devices_hold_less_per_device_than_eight(run):
    _, results = run
    eight, sixteen = results
    assert sixteen["compiled"]["argument"] < 0.6 * eight["compiled"]["argument"]
    assert sixteen["compiled"]["peak"] < eight["compiled"]["peak"]
    assert sixteen["analytic"]["total"] < eight["analytic"]["total"]
