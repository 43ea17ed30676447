"""Multi-host through JAX's runtime: two processes × 4 CPU devices (gloo) match one process × 8 devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

from mojax.train.distributed import DistributedConfig, initialize, local_batch, process_batch_slice, resolve

HERE = Path(__file__).parent
WORKER = str(HERE / "_train_worker.py")


def _env(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    for key in ("MOJAX_COORDINATOR_ADDRESS", "MOJAX_NUM_PROCESSES", "MOJAX_PROCESS_ID"):
        env.pop(key, None)
    return env


def test_two_processes_match_one_process_with_eight_devices():
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen([sys.executable, WORKER, "multihost", str(i), "2", str(port)], cwd=HERE, env=_env(4),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    single = subprocess.Popen([sys.executable, WORKER, "single_eight"], cwd=HERE, env=_env(8),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = []
    for proc in procs + [single]:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    p0, p1, one = outs
    assert (p0["process"], p1["process"]) == (0, 1)
    assert p0["processes"] == 2 and p0["local_devices"] == 4 and p0["devices"] == 8 and one["devices"] == 8
    np.testing.assert_allclose(p0["losses"], one["losses"], atol=1e-5, rtol=0)
    assert p0["losses"] == p1["losses"]  # every process sees the same replicated metrics
    assert np.ptp(one["losses"]) > 1e-3


def test_resolve_reads_environment_and_validates():
    env = {"MOJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MOJAX_NUM_PROCESSES": "4", "MOJAX_PROCESS_ID": "3"}
    cfg = resolve(DistributedConfig(), env)
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 3)
    assert resolve(DistributedConfig(process_id=1), env).process_id == 1  # explicit config wins
    assert initialize(DistributedConfig(num_processes=1)) is False  # single process: no-op
    with pytest.raises(ValueError, match="needs coordinator_address"):
        initialize(DistributedConfig(coordinator_address="127.0.0.1:1", num_processes=2))
    with pytest.raises(ValueError, match="process_id"):
        initialize(DistributedConfig(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2))


def test_process_slices_tile_the_global_batch():
    slices = [process_batch_slice(12, process_index=i, process_count=3) for i in range(3)]
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="does not split"):
        process_batch_slice(10, process_index=0, process_count=3)
    batch = {"input_ids": np.arange(24).reshape(6, 4), "ref_logps": np.arange(36).reshape(3, 6, 2)}
    part = local_batch(batch, process_index=1, process_count=2)
    np.testing.assert_array_equal(part["input_ids"], batch["input_ids"][3:])
    np.testing.assert_array_equal(part["ref_logps"], batch["ref_logps"][:, 3:])
