"""Checkpoints: exact round trip with shardings, and kill/SIGTERM-then-resume bitwise equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _train_tiny import TinyLM
from mojax.train.checkpoint import (CheckpointConfig, Checkpointer, flatten_state, install_sigterm_flag,
                                    unflatten_state)
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.state import create_train_state
from mojax.train.step import OptimizerConfig, make_optimizer

HERE = Path(__file__).parent
WORKER = str(HERE / "_train_worker.py")
STEPS, EVERY = 10, 3


def _state(seed):
    tx = make_optimizer(OptimizerConfig())
    return create_train_state(lambda: TinyLM(rngs=nnx.Rngs(seed)), tx, mesh=make_mesh(MeshConfig()), rng=seed,
                              extras={"ema": jnp.arange(3.0)})[1]


def test_round_trip_restores_every_leaf_and_sharding(tmp_path):
    state = _state(0)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(max_to_keep=1))
    data_state = {"iterator": {"next_index": 7, "blob": b"\x00\xffgrain"}, "step": 7}
    assert ckpt.save(7, state, data_state)
    ckpt.wait()
    other = _state(1)  # a different state of the same structure: restore must overwrite every leaf
    restored, data = Checkpointer(tmp_path).restore(other)
    assert data == data_state
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(other)))
    assert Checkpointer(tmp_path / "empty").restore(state) is None


def test_flatten_unflatten_and_missing_entries():
    tree = {"a": [jnp.zeros(2), jnp.ones(3)], "b": {"c": jnp.arange(4)}}
    flat = flatten_state(tree)
    assert sorted(flat) == ["['a'][0]", "['a'][1]", "['b']['c']"]
    back = unflatten_state(tree, flat)
    np.testing.assert_array_equal(back["b"]["c"], np.arange(4))
    with pytest.raises(KeyError, match="lacks 1 state entries"):
        unflatten_state(tree, {k: v for k, v in flat.items() if k != "['b']['c']"})


def test_config_validation_and_sigterm_flag():
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointConfig(max_to_keep=0)
    old = signal.getsignal(signal.SIGTERM)
    try:
        flag = install_sigterm_flag()
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set() and flag.signum == signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)


def _launch(run_dir, out, hold=0):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, WORKER, "train_run", str(run_dir), str(STEPS), str(EVERY), str(out),
                             str(hold)], cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete_checkpoints(run_dir):
    ckpts = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def _interrupt_at(proc, step, sig, run_dir=None):
    """Send ``sig`` once the run (holding at ``step``) printed it and, if ``run_dir``, has a complete checkpoint."""
    for line in proc.stdout:
        if line.startswith(f"step {step} "):
            while run_dir is not None and not _complete_checkpoints(run_dir) and proc.poll() is None:
                time.sleep(0.05)  # the async write of checkpoint 3 may still be in flight
            proc.send_signal(sig)
            break
    proc.communicate(timeout=400)
    return proc.returncode


def _assert_bitwise(a, b):
    keys = [k for k in a.files if k.isdigit()]
    assert keys and keys == [k for k in b.files if k.isdigit()]
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].tobytes() == b[k].tobytes()


def test_sigkill_and_sigterm_then_resume_are_bitwise_identical(tmp_path):
    procs = []
    try:
        full = _launch(tmp_path / "full", tmp_path / "full.npz")
        killed = _launch(tmp_path / "killed", tmp_path / "killed.npz", hold=5)
        termed = _launch(tmp_path / "termed", tmp_path / "termed.npz", hold=4)
        procs += [full, killed, termed]
        # SIGKILL after step 5 (between checkpoints 3 and 6), once checkpoint 3 is complete.
        assert _interrupt_at(killed, 5, signal.SIGKILL, tmp_path / "killed") == -signal.SIGKILL
        assert _interrupt_at(termed, 4, signal.SIGTERM) == 0  # SIGTERM: save and exit cleanly
        resumed_killed = _launch(tmp_path / "killed", tmp_path / "killed.npz")
        resumed_termed = _launch(tmp_path / "termed", tmp_path / "termed2.npz")
        procs += [resumed_killed, resumed_termed]
        for proc in (full, resumed_killed, resumed_termed):
            _, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err[-3000:]
        reference = np.load(tmp_path / "full.npz")
        assert int(reference["step"]) == STEPS and int(reference["start_step"]) == 0

        resumed = np.load(tmp_path / "killed.npz")
        assert int(resumed["start_step"]) == 3 and int(resumed["step"]) == STEPS
        _assert_bitwise(reference, resumed)

        stopped = np.load(tmp_path / "termed.npz")
        assert bool(stopped["stopped"]) and int(stopped["step"]) == 4
        resumed = np.load(tmp_path / "termed2.npz")
        assert int(resumed["start_step"]) == 4
        _assert_bitwise(reference, resumed)
    finally:
        for proc in procs:  # a failed assertion must not leave a run holding for a signal
            if proc.poll() is None:
                proc.kill()
