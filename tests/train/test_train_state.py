"""TrainState creation: shardings from logical names (params and optimizer moments), builder vs module, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from _train_tiny import TinyLM
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.state import batch_axis, batch_shardings, create_train_state, param_count, step_key

HERE = Path(__file__).parent


def test_state_layout_on_a_2x2x2_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "_train_worker.py"), "state_layout"], env=env, cwd=HERE,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Logical rules: vocab→tensor, embed→fsdp, mlp→tensor.
    assert got["params"] == {"['embed'].value": "P('tensor', 'fsdp')", "['unembed'].value": "P('fsdp', 'tensor')",
                             "['w_in'].value": "P('fsdp', 'tensor')", "['w_out'].value": "P('tensor', 'fsdp')"}
    assert got["mu"] == got["params"]  # Adam's moments follow their parameter
    assert got["count_replicated"] and got["rng_replicated"]
    assert sorted(got["declared"]) == sorted(got["params"].values())


def test_builder_and_module_give_the_same_state():
    mesh = make_mesh(MeshConfig())
    tx = optax.adam(1e-3)
    _, from_builder, _ = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(3)), tx, mesh=mesh, rng=5)
    _, from_module, _ = create_train_state(TinyLM(rngs=nnx.Rngs(3)), tx, mesh=mesh, rng=5)
    for a, b in zip(jax.tree.leaves(from_builder), jax.tree.leaves(from_module)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert param_count(from_builder.params) == 16 * 8 + 8 * 16 + 16 * 8 + 8 * 16
    np.testing.assert_array_equal(from_builder.rng, jax.random.PRNGKey(5))
    assert not np.array_equal(step_key(from_builder.rng, 1), step_key(from_builder.rng, 2))


def test_lora_filter_splits_trainable_from_frozen():
    mesh = make_mesh(MeshConfig())
    _, state, _ = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0), lora_rank=2), optax.sgd(0.1), mesh=mesh,
                                     wrt=nnx.LoRAParam)
    assert sorted(state.params.keys()) == ["lora_a", "lora_b"]
    assert "embed" in state.rest and "lora_a" not in state.rest
    with pytest.raises(ValueError, match="selects no variable"):
        create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), optax.sgd(0.1), mesh=mesh, wrt=nnx.LoRAParam)
    with pytest.raises(TypeError, match="nnx.Module or a zero-argument function"):
        create_train_state(42, optax.sgd(0.1), mesh=mesh)


def test_batch_axis_and_shardings():
    assert batch_axis("input_ids", 3) == 0 and batch_axis("ref_logps", 2) == 0 and batch_axis("ref_logps", 3) == 1
    mesh = make_mesh(MeshConfig())
    sh = batch_shardings({"input_ids": np.zeros((4, 2, 3)), "ref_logps": np.zeros((2, 4, 2)), "s": np.float32(1)},
                         mesh)
    assert sh["s"].is_fully_replicated
