"""Subprocess entry points for the training-engine tests that need their own JAX process.

``python _train_worker.py mesh_parity`` — needs XLA_FLAGS with 8 host devices; prints JSON losses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def mesh_parity() -> None:
    import jax
    from flax import nnx

    from _train_tiny import TinyLM, make_batch, nll_objective
    from mojax.train.mesh import MeshConfig, make_mesh
    from mojax.train.state import create_train_state
    from mojax.train.step import OptimizerConfig, jit_train_step, make_optimizer, make_train_step

    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    batches = [make_batch(s) for s in range(3)]

    def run(mesh):
        graphdef, state, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh, rng=0)
        step = jit_train_step(make_train_step(graphdef, nll_objective, tx, accum_steps=2), shardings, batches[0],
                              mesh)
        losses = []
        for i, b in enumerate(batches):
            state, m = step(state, b, jax.random.fold_in(state.rng, i))
            losses.append(float(m["loss"]))
        specs = [str(x.sharding.spec) for x in jax.tree.leaves(state.params)]
        return losses, specs

    one, _ = run(make_mesh(MeshConfig(), devices=jax.devices()[:1]))
    eight, specs = run(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    sharded = [s for s in specs if "fsdp" in s or "tensor" in s]
    print(json.dumps({"devices": jax.device_count(), "one": one, "eight": eight, "sharded_specs": sharded}))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
