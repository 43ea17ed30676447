"""Tests for benchmarks/_bench.py: alternation order, paired ratios, per-child peak RSS, tables, headline line."""

import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _bench  # noqa: E402

MIB = 2 ** 20


def test_alternate_rotates_the_starting_contender():
    calls = []
    contenders = {name: (lambda n=name: calls.append(n) or len(calls)) for name in ("a", "b", "c")}
    out = _bench.alternate(contenders, rounds=4)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    # each contender's list holds its own measurements in round order (here: the global call index)
    assert out == {"a": [1, 6, 8, 10], "b": [2, 4, 9, 11], "c": [3, 5, 7, 12]}


def test_alternate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rounds"):
        _bench.alternate({"a": lambda: 1}, rounds=0)
    with pytest.raises(ValueError, match="no contenders"):
        _bench.alternate({}, rounds=1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 100), st.floats(0.01, 100)), min_size=1, max_size=9))
def test_median_ratio_matches_numpy(pairs):
    num, den = map(list, zip(*pairs))
    expected = float(np.median(np.asarray(num) / np.asarray(den)))
    assert math.isclose(_bench.median_ratio(num, den), expected, rel_tol=1e-12)
    # a load factor common to both runs of a round cancels in the paired ratio
    scaled = [(n * s, d * s) for (n, d), s in zip(pairs, np.linspace(1, 7, len(pairs)))]
    assert math.isclose(_bench.median_ratio(*map(list, zip(*scaled))), expected, rel_tol=1e-9)


def test_median_and_ratio_edge_cases():
    assert _bench.median([3.0, 1.0, 2.0]) == 2.0
    assert _bench.median([1.0, 2.0]) == 1.5
    assert math.isnan(_bench.median([1.0, math.nan]))
    with pytest.raises(ValueError):
        _bench.median([])
    with pytest.raises(ValueError, match="length"):
        _bench.paired_ratios([1.0], [1.0, 2.0])


def test_time_calls_counts_warmup_and_syncs():
    calls, synced = [], []
    times = _bench.time_calls(lambda: calls.append(1) or len(calls), warmup=2, iters=3, sync=synced.append)
    assert len(calls) == 5 and synced == [1, 2, 3, 4, 5]
    assert len(times) == 3 and all(t >= 0 for t in times)


def _child(mib: int) -> list[str]:
    # touch every page so the allocation is resident, report through a JSON line
    code = (f"import json; b = bytearray({mib} * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            f"print('noise'); print(json.dumps({{'mib': {mib}}}))")
    return [sys.executable, "-c", code]


def test_run_measured_reads_each_childs_own_peak():
    big = _bench.run_measured(_child(300))
    small = _bench.run_measured(_child(10))  # after the big one: a RUSAGE_CHILDREN maximum would still say 300
    ballast = bytearray(200 * MIB)  # a big driver must not inflate its children's peaks
    ballast[::4096] = b"x" * len(ballast[::4096])
    small_again = _bench.run_measured(_child(10))
    assert small_again.peak_rss_bytes < 100 * MIB
    assert big.json_result() == {"mib": 300}
    assert big.peak_rss_bytes >= 300 * MIB
    assert small.peak_rss_bytes < 100 * MIB
    assert big.peak_rss_bytes - small.peak_rss_bytes > 250 * MIB
    assert big.wall_s > 0


def test_run_measured_errors():
    with pytest.raises(RuntimeError, match="exited with 3"):
        _bench.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
    failed = _bench.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"], check=False)
    assert failed.returncode == 3
    with pytest.raises(TimeoutError):
        _bench.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    with pytest.raises(ValueError, match="no JSON"):
        _bench.run_measured([sys.executable, "-c", "print('x')"]).json_result()


def test_run_measured_passes_env():
    out = _bench.run_measured([sys.executable, "-c", "import os, json; print(json.dumps({'v': os.environ['BV']}))"],
                              env={"BV": "7"})
    assert out.json_result() == {"v": "7"}


def test_peak_rss_of_self_is_at_least_current_allocation():
    block = bytearray(64 * MIB)
    block[::4096] = b"x" * len(block[::4096])
    assert _bench.peak_rss_bytes() >= 64 * MIB


def test_format_table_and_headline():
    table = _bench.format_table(["name", "x"], [["a", 1.23456], ["b", 3], ["c", math.nan]])
    assert table.splitlines() == ["| name | x |", "|---|---|", "| a | 1.235 |", "| b | 3 |", "| c | nan |"]
    with pytest.raises(ValueError, match="cells"):
        _bench.format_table(["a", "b"], [[1]])
    assert _bench.headline("speedup_vs_trl", 2.345678) == "speedup_vs_trl=2.346"
    with pytest.raises(ValueError):
        _bench.headline("not an id", 1.0)
    assert "cores" in _bench.load_average()
    assert statistics.median([1, 2, 3]) == 2


# ----------------------------------------------------------------------------------------------------------------
# Pieces of the benchmarks that are not the measurement itself (the scripts are not run in the suite).


def test_dpo_examples_and_batches_layout():
    import dpo_step_vs_trl as dpo

    vocab, t = 50, 32
    examples = dpo.make_examples(vocab, t, 16)
    for e in examples:
        assert len(e["prompt"]) + len(e["chosen"]) == t  # every batch pads to t on both sides
        assert len(e["prompt"]) + len(e["rejected"]) <= t
        assert e["chosen"][-1] == e["rejected"][-1] == vocab - 1
        assert vocab - 1 not in e["prompt"] + e["chosen"][:-1] + e["rejected"][:-1]
    batch = next(dpo.mojax_batches(examples, t, pad=vocab - 1))
    e = examples[3]
    rejected = e["prompt"] + e["rejected"]
    assert batch["input_ids"][3, 1, :len(rejected)].tolist() == rejected
    assert batch["attention_mask"][3, 1].sum() == len(rejected)
    assert batch["loss_mask"][3, 1].tolist() == [len(e["prompt"]) <= i < len(rejected) for i in range(t)]
    assert dpo.to_text([5, 17]) == "t5 t17"


def test_gpu_mfu_peak_table_and_flop_count():
    import gpu_mfu

    assert gpu_mfu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_mfu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_mfu.peak_flops("NVIDIA L40") == 181e12 and gpu_mfu.peak_flops("NVIDIA L4") == 121e12
    assert math.isnan(gpu_mfu.peak_flops("cpu"))
    s = gpu_mfu.SMOKE
    # by hand: per token, policy 6N + 12·L·H·h·T, reference 2N + 4·L·H·h·T
    n = s.layers * (2 * s.d_model * s.heads * s.head_dim + 2 * s.d_model * s.kv_heads * s.head_dim
                    + 3 * s.d_model * s.mlp) + s.d_model * s.vocab
    attn = s.layers * s.heads * s.head_dim * s.seq_len
    assert s.step_flops() == (8 * n + 16 * attn) * s.pairs * 2 * s.seq_len
    assert 1.0e9 < gpu_mfu.FULL.matmul_params + gpu_mfu.FULL.vocab * gpu_mfu.FULL.d_model < 1.2e9  # "~1B"
