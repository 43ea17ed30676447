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

from _train_tiny import TinyLM, nll_objective
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


# --- verification: checksums written with every checkpoint, corrupt ones reported, moved aside, and skipped ---

from mojax.train.checkpoint import CheckpointError, CheckpointMismatchError, fingerprint  # noqa: E402


def _fingerprint_reference(x: np.ndarray) -> list[int]:
    """The fingerprint of the module docstring in plain NumPy uint32 arithmetic (an independent implementation)."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8)
    w = x.view({1: np.uint8, 2: np.uint16}.get(x.dtype.itemsize, np.uint32)).astype(np.uint32).ravel()
    with np.errstate(over="ignore"):
        k = np.arange(w.size, dtype=np.uint64).astype(np.uint32) * np.uint32(0x9E3779B1) | np.uint32(1)
        h = w ^ k
        h ^= h >> 16
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> 13
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> 16
        return [int(np.sum(w * k, dtype=np.uint32)), int(np.sum(h, dtype=np.uint32))]


def test_fingerprint_matches_numpy_reference_and_sees_one_bit():
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 5, 7)).astype(np.float32), "i8": rng.integers(-9, 9, 11, np.int8),
              "bf16": jnp.asarray(rng.standard_normal((4, 6)), jnp.bfloat16), "b": rng.random(13) < 0.5,
              "u32": np.arange(6, dtype=np.uint32).reshape(2, 3), "scalar": np.float32(2.5)}
    got = fingerprint({k: jnp.asarray(v) for k, v in arrays.items()})
    assert got == {k: _fingerprint_reference(np.asarray(v)) for k, v in arrays.items()}
    x = arrays["f32"].copy()
    x.view(np.uint32)[1, 2, 3] ^= 1  # one bit of one element
    assert fingerprint({"x": jnp.asarray(x)})["x"] != got["f32"]
    swapped = arrays["f32"].copy()
    swapped[0, 0, [0, 1]] = swapped[0, 0, [1, 0]]  # same bytes, different positions
    assert fingerprint({"x": jnp.asarray(swapped)})["x"] != got["f32"]


def _saved_steps(directory, steps=(2, 4, 6)):
    """Checkpoints ``steps`` of distinct states (with one ~200 kB leaf of incompressible floats, like real weights)."""
    base = _state(0).replace(extras={"ema": jnp.asarray(np.random.default_rng(0).standard_normal(50_000), jnp.float32)})
    states = {s: base.replace(step=base.step + s, params=jax.tree.map(lambda x, s=s: x * (1 + s), base.params))
              for s in steps}
    ckpt = Checkpointer(directory, CheckpointConfig(max_to_keep=len(steps)))
    for s in steps:
        assert ckpt.save(s, states[s], {"step": s, "iterator": {"blob": b"\x01"}})
    ckpt.close()
    return base, states


def _flip(path, n=64):
    """Invert ``n`` bytes in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


CORRUPTIONS = {
    "flip 64 bytes in the largest data file": lambda d: _flip(_largest_data_file(d)),
    "flip bytes in every data file": lambda d: [_flip(p) for p in (d / "state").rglob("*")
                                                if p.is_file() and p.parent.name == "d"],
    "truncate manifest.ocdbt": lambda d: (d / "state/manifest.ocdbt").write_bytes(
        (d / "state/manifest.ocdbt").read_bytes()[:50]),
    "flip bytes in the array metadata": lambda d: _flip(d / "state/_METADATA", n=16),
    "flip bytes in the checksums": lambda d: _flip(d / "checksums/metadata", n=4),
    "edit the data-iterator JSON": lambda d: (d / "data/metadata").write_text('{"step": 7}'),
    "delete the largest data file": lambda d: _largest_data_file(d).unlink(),
    "delete the manifest": lambda d: (d / "state/manifest.ocdbt").unlink(),
    "delete the state item": lambda d: __import__("shutil").rmtree(d / "state"),
}


def test_corrupt_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path):
    import shutil
    base, states = _saved_steps(tmp_path / "clean")
    for i, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        directory = tmp_path / f"v{i}"
        shutil.copytree(tmp_path / "clean", directory)
        corrupt(directory / "6")
        logs = []
        ckpt = Checkpointer(directory, CheckpointConfig(max_to_keep=3), log=logs.append)
        restored, data = ckpt.restore(base)
        assert ckpt.restored_step == 4 and data == {"step": 4, "iterator": {"blob": b"\x01"}}, name
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[4])):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
        assert len(logs) == 1 and "\n" not in logs[0] and "checkpoint 6 is corrupt" in logs[0], (name, logs)
        assert [s for s, _ in ckpt.rejected] == [6] and (directory / "corrupt-6").is_dir(), name
        # the step can be written again, and the moved-aside copy is neither a step nor deleted by retention
        assert ckpt.all_steps() == [2, 4] and ckpt.save(6, states[6], {"step": 6})
        ckpt.close()
        assert Checkpointer(directory).all_steps() == [2, 4, 6] and (directory / "corrupt-6").is_dir()


def test_without_checksums_the_flipped_data_would_restore_silently(tmp_path):
    """The premise of the test above: OCDBT itself restores the flipped file as garbage (so the checksum matters)."""
    base, states = _saved_steps(tmp_path, steps=(6,))
    _flip(_largest_data_file(tmp_path / "6"))
    abstract = {k: ocp_utils_abstract(v) for k, v in flatten_state(base).items()}
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(tmp_path) as manager:
        flat = manager.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    differs = [k for k, v in flatten_state(states[6]).items()
               if np.asarray(flat[k]).tobytes() != np.asarray(v).tobytes()]
    assert differs == [".extras['ema']"]


def ocp_utils_abstract(x):
    import orbax.checkpoint as ocp
    return ocp.utils.to_shape_dtype_struct(x)


def test_no_good_checkpoint_is_an_error_and_another_model_is_a_mismatch(tmp_path):
    base, _ = _saved_steps(tmp_path / "a", steps=(2, 4))
    for step in (2, 4):
        _flip(_largest_data_file(tmp_path / "a" / str(step)))
    logs = []
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        Checkpointer(tmp_path / "a", log=logs.append).restore(base)
    assert len(logs) == 2
    _saved_steps(tmp_path / "b", steps=(2,))
    tx = make_optimizer(OptimizerConfig())
    other = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0), hidden=32), tx, mesh=make_mesh(MeshConfig()),
                               extras={"ema": jnp.zeros(50_000)})[1]
    with pytest.raises(CheckpointMismatchError, match="does not match this model"):
        Checkpointer(tmp_path / "b").restore(other)
    assert Checkpointer(tmp_path / "b").all_steps() == [2]  # a mismatch moves nothing aside


def test_save_refuses_non_finite_parameters(tmp_path):
    state = _state(0)
    bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.params))
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        ckpt.save(3, bad)
    ckpt.close()
    assert Checkpointer(tmp_path).all_steps() == []


def test_fit_resumes_past_a_corrupt_checkpoint_bit_for_bit(tmp_path, capsys):
    """Issue 14 §2's case: 6 steps with checkpoints every 2; 64 bytes flipped in the middle of the largest data file
    of checkpoint 6; the same run to 8 steps reports it in one line, restores checkpoint 4, and ends bit-equal to an
    uninterrupted 8-step run."""
    import sys

    sys.path.insert(0, str(HERE))
    from _train_worker import _grain_pairs
    from mojax.train.loop import TrainConfig, fit

    def run(run_dir, steps):  # hidden=256: the MLP weights and their moments are most of the checkpoint's bytes
        return fit(lambda: TinyLM(rngs=nnx.Rngs(0), hidden=256), nll_objective, _grain_pairs(),
                   optimizer=OptimizerConfig(learning_rate=1e-2), mesh=make_mesh(MeshConfig()),
                   config=TrainConfig(steps=steps, log_every=1, run_dir=str(run_dir), progress=False),
                   checkpoint=CheckpointConfig(every_steps=2, max_to_keep=2))

    reference = run(tmp_path / "reference", 8)
    run(tmp_path / "run", 6)
    _flip(_largest_data_file(tmp_path / "run" / "checkpoints" / "6"))
    capsys.readouterr()
    resumed = run(tmp_path / "run", 8)
    out, err = capsys.readouterr()
    reports = [line for line in err.splitlines() if "checkpoint 6 is corrupt" in line]
    assert len(reports) == 1 and "trying checkpoint 4" in reports[0], err[-2000:]
    assert resumed.start_step == 4 and "resumed from step 4 of 8" in out
    for a, b in zip(jax.tree.leaves(reference.state), jax.tree.leaves(resumed.state)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
