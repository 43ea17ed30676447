"""Multi-process runs fail fast: unreachable coordinator, peers that never join, a peer killed or crashed mid-run.

Run as a script, this file is the worker: ``python test_distributed_faults.py <process_id> <port> <steps> <kill_at>``
joins a 2-process run (2 CPU devices each), runs a cross-process reduction per step, and process 1 SIGKILLs itself
after step ``kill_at`` (0 = never; ``-k``: raises an uncaught exception after step k instead).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import portpicker
import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _worker(process_id: int, port: int, steps: int, kill_at: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from mojax.train import distributed

    distributed.initialize(distributed.DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                                         process_id=process_id, initialization_timeout=20,
                                                         heartbeat_timeout=120))
    mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    step_fn = jax.jit(lambda x: x * 0 + jnp.sum(x) / x.size, out_shardings=sharding)
    x = jax.make_array_from_process_local_data(sharding, np.ones(2, np.float32), (4,))
    distributed.note_progress(checkpoint_step=2, checkpoint_dir="ckpts")
    for step in range(1, steps + 1):
        x = step_fn(x)
        value = float(np.asarray(x.addressable_shards[0].data)[0])
        distributed.note_progress(step=step)
        print(f"step {step} {value}", flush=True)
        if process_id == 1 and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if process_id == 1 and step == -kill_at:
            raise RuntimeError("a bug in process 1")
        time.sleep(0.1)
    print("done", flush=True)  # exits through Python: the peer watch says "bye" at exit


def _env():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("MOJAX_COORDINATOR_ADDRESS", "MOJAX_NUM_PROCESSES", "MOJAX_PROCESS_ID"):
        env.pop(key, None)
    return env


def _pair(steps, kill_at):
    port = portpicker.pick_unused_port()
    return [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(steps), str(kill_at)], cwd=HERE,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _mojax_lines(err):
    return [line for line in err.splitlines() if line.startswith("mojax:")]


def test_unreachable_coordinator_fails_in_seconds_with_one_line():
    from mojax.train.distributed import DistributedConfig, DistributedInitError, initialize

    port = portpicker.pick_unused_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DistributedInitError, match=f"could not reach the coordinator at 127.0.0.1:{port}") as err:
        initialize(DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=1,
                                     initialization_timeout=2))
    assert time.monotonic() - start < 10 and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="initialization_timeout"):
        DistributedConfig(initialization_timeout=0)


def test_coordinator_whose_peers_never_join_exits_2_with_one_line():
    port = portpicker.pick_unused_port()
    code = ("from mojax.train.distributed import DistributedConfig, initialize; "
            f"initialize(DistributedConfig(coordinator_address='127.0.0.1:{port}', num_processes=2, process_id=0, "
            "initialization_timeout=3))")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - start < 30
    lines = _mojax_lines(proc.stderr)
    assert len(lines) == 2 and "not all 2 processes joined" in lines[1], proc.stderr[-2000:]
    assert "Check failure" not in proc.stderr  # JAX's own abort did not happen


def test_peer_killed_or_crashed_mid_run_survivor_explains_and_exits_promptly_and_clean_finish_is_quiet():
    killed, crashed, clean = _pair(steps=40, kill_at=5), _pair(steps=40, kill_at=-3), _pair(steps=3, kill_at=0)
    try:
        outs = [p.communicate(timeout=120) for p in killed + crashed + clean]
        assert killed[1].returncode == -signal.SIGKILL and crashed[1].returncode == 1
        assert "a bug in process 1" in outs[3][1]
        for proc, (out, err), at in ((killed[0], outs[0], 5), (crashed[0], outs[2], 3)):
            assert proc.returncode == 75, err[-3000:]
            steps_seen = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
            assert max(steps_seen) <= at + 2  # stopped right after the death, not at a timeout 30+ steps later
            death = [line for line in _mojax_lines(err) if "died" in line]
            assert len(death) == 1 and "process 1 died or failed" in death[0], err[-3000:]
            assert "the last complete checkpoint is step 2" in death[0]
            assert "Check failure" not in err  # not JAX's heartbeat abort
        for proc, (out, err) in zip(clean, outs[4:]):
            assert proc.returncode == 0 and out.strip().endswith("done"), err[-3000:]
            assert not [line for line in _mojax_lines(err) if "died" in line]
    finally:
        for proc in killed + crashed + clean:
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    _worker(*(int(a) for a in sys.argv[1:5]))
