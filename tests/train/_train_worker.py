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
    lora_one, _ = _lora_dpo_losses(make_mesh(MeshConfig(), devices=jax.devices()[:1]))
    lora_eight, lora_specs = _lora_dpo_losses(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    print(json.dumps({"devices": jax.device_count(), "one": one, "eight": eight, "sharded_specs": sharded,
                      "lora_one": lora_one, "lora_eight": lora_eight,
                      "lora_sharded": [s for s in lora_specs if "fsdp" in s or "tensor" in s]}))


def _lora_dpo_losses(mesh):
    """3 LoRA-DPO steps (accumulation 2, reference = LoRA base) of the real tiny Decoder on ``mesh``."""
    import jax
    import numpy as np
    from flax import nnx

    from mojax.models import Decoder, DecoderConfig, LoRAConfig, add_lora
    from mojax.train.objectives import dpo_objective
    from mojax.train.state import create_train_state
    from mojax.train.step import OptimizerConfig, jit_train_step, make_optimizer, make_train_step

    cfg = DecoderConfig.tiny(num_layers=1)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    rs = np.random.RandomState(0)
    batches = []
    for _ in range(3):
        ids = rs.randint(1, cfg.vocab_size, size=(8, 2, 8)).astype(np.int32)
        loss_mask = np.zeros((8, 2, 8), bool)
        loss_mask[..., 3:] = True
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask})
    build = lambda: add_lora(Decoder(cfg, rngs=nnx.Rngs(0)), LoRAConfig(rank=2), rngs=nnx.Rngs(1))  # noqa: E731
    graphdef, state, shardings = create_train_state(build, tx, mesh=mesh, wrt=nnx.LoRAParam)
    step = jit_train_step(make_train_step(graphdef, dpo_objective(beta=0.5, ref_mode="lora"), tx, accum_steps=2),
                          shardings, batches[0], mesh)
    losses = []
    for i, b in enumerate(batches):
        state, m = step(state, b, jax.random.fold_in(state.rng, i))
        losses.append(float(m["loss"]))
    return losses, sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.rest)})


def mesh_constraints(dump_dir: str) -> None:
    """LoRA-DPO on the real tiny Decoder on a (data=2, tensor=2) mesh of 4 host devices vs one device.

    Prints JSON: the number of sharding constraints in the lowered step traced with and without ``jax.set_mesh``,
    the numbers in the pre-optimisation HLO that ``fit`` and the reference cache compiled (from ``--xla_dump_to``),
    and the losses / parameters / reference log-probs on both meshes.
    """
    import glob
    import os

    import jax
    import numpy as np
    from flax import nnx

    from mojax.models import Decoder, DecoderConfig, LoRAConfig, add_lora
    from mojax.train import (MeshConfig, OptimizerConfig, TrainConfig, create_train_state, dpo_objective, fit,
                             jit_train_step, make_mesh, make_optimizer, make_train_step)
    from mojax.train.ref_cache import compute_logps

    cfg = DecoderConfig.tiny(num_layers=1)
    rs = np.random.RandomState(0)
    batches = []
    for _ in range(3):
        ids = rs.randint(1, cfg.vocab_size, size=(8, 2, 8)).astype(np.int32)
        loss_mask = np.zeros((8, 2, 8), bool)
        loss_mask[..., 3:] = True
        batches.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask})
    build = lambda: add_lora(Decoder(cfg, rngs=nnx.Rngs(0)), LoRAConfig(rank=2), rngs=nnx.Rngs(1))  # noqa: E731
    objective = dpo_objective(beta=0.5, ref_mode="lora")
    grid = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2))
    one = make_mesh(MeshConfig(), devices=jax.devices()[:1])

    def count(text):  # Shardy's lowered form, and XLA's HLO form in the dumps
        return text.count("sdy.sharding_constraint") + text.count('custom_call_target="Sharding"')

    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    graphdef, state, shardings = create_train_state(build, tx, mesh=grid, wrt=nnx.LoRAParam,
                                                    hparams=objective.initial_hparams())
    step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batches[0], grid)
    without = count(step.lower(state, batches[0], state.rng).as_text())
    with jax.set_mesh(grid):
        lowered = count(step.lower(state, batches[0], state.rng).as_text())

    def run(mesh):
        config = TrainConfig(steps=3, log_every=1, progress=False)
        result = fit(build, objective, iter(batches), config=config, optimizer=OptimizerConfig(learning_rate=1e-2),
                     mesh=mesh, wrt=nnx.LoRAParam)
        model = result.model()
        ref = compute_logps(model, {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, batch_size=8,
                            chunk_size=None, use_lora=False)
        return result, ref

    grid_result, grid_ref = run(grid)
    dumped = {}
    for path in glob.glob(os.path.join(dump_dir, "*before_optimizations.txt")):
        name = os.path.basename(path)
        kind = "train_step" if "train_step" in name else "forward" if "forward" in name else None
        if kind:
            dumped[kind] = max(dumped.get(kind, 0), count(open(path).read()))
    one_result, one_ref = run(one)
    params = lambda r: [np.asarray(x).tolist() for x in jax.tree.leaves(r.state.params)]  # noqa: E731
    print(json.dumps({"devices": jax.device_count(), "lowered_without_mesh": without, "lowered_with_mesh": lowered,
                      "dumped": dumped, "grid_losses": grid_result.metrics("loss").tolist(),
                      "one_losses": one_result.metrics("loss").tolist(), "grid_params": params(grid_result),
                      "one_params": params(one_result), "grid_ref": grid_ref.tolist(), "one_ref": one_ref.tolist()}))


def _sharded_losses(mesh, local: bool):
    """3 steps (accumulation 2) of TinyLM on a mesh; ``local``: feed this process's share of each global batch."""
    import jax
    from flax import nnx

    from _train_tiny import TinyLM, make_batch, nll_objective
    from mojax.train.distributed import local_batch, shard_batch
    from mojax.train.state import create_train_state
    from mojax.train.step import OptimizerConfig, jit_train_step, make_optimizer, make_train_step

    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    graphdef, state, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh, rng=0)
    step = None
    losses = []
    for i in range(3):
        host = make_batch(i)
        batch = shard_batch(local_batch(host) if local else host, mesh)
        if step is None:
            step = jit_train_step(make_train_step(graphdef, nll_objective, tx, accum_steps=2), shardings, batch,
                                  mesh)
        state, m = step(state, batch, jax.random.fold_in(state.rng, i))
        losses.append(float(m["loss"]))
    return losses


def multihost(process_id: str, num_processes: str, port: str) -> None:
    """One process of a multi-process run on 127.0.0.1 (gloo collectives); prints JSON losses."""
    import jax

    from mojax.train.distributed import DistributedConfig, initialize
    from mojax.train.mesh import MeshConfig, make_mesh

    assert initialize(DistributedConfig(coordinator_address=f"127.0.0.1:{port}",
                                        num_processes=int(num_processes), process_id=int(process_id)))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    losses = _sharded_losses(mesh, local=True)
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "local_devices": jax.local_device_count(), "devices": jax.device_count(), "losses": losses}))


def single_eight() -> None:
    """The same run in one process over 8 host devices."""
    import jax

    from mojax.train.mesh import MeshConfig, make_mesh

    losses = _sharded_losses(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), local=False)
    print(json.dumps({"devices": jax.device_count(), "losses": losses}))


def state_layout() -> None:
    """Create a TrainState on a 2×2×2 mesh; print each param's and its Adam moments' shardings."""
    import jax
    from flax import nnx

    from _train_tiny import TinyLM
    from mojax.train.mesh import MeshConfig, make_mesh
    from mojax.train.state import create_train_state
    from mojax.train.step import OptimizerConfig, make_optimizer

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    tx = make_optimizer(OptimizerConfig())
    _, state, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh)
    params = {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    adam = state.opt_state[1][0]
    mu = {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in jax.tree_util.tree_leaves_with_path(adam.mu)}
    count = adam.count
    declared = [str(s.spec) for s in jax.tree.leaves(shardings.params)]
    print(json.dumps({"params": params, "mu": mu, "count_replicated": count.sharding.is_fully_replicated,
                      "declared": declared, "rng_replicated": state.rng.sharding.is_fully_replicated}))


def _grain_pairs(num_examples: int = 64, batch: int = 8, seed: int = 0):
    import grain
    import numpy as np

    from _train_tiny import make_batch

    whole = make_batch(123, batch=num_examples)
    records = [{k: v[i] for k, v in whole.items()} for i in range(num_examples)]
    ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat().batch(batch_size=batch, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def train_run(run_dir: str, steps: str, every: str, out: str, hold: str = "0") -> None:
    """Train TinyLM through the host loop with checkpoints; print each step; save the final params to ``out``.

    ``hold`` > 0: after printing that step, wait (up to 10 min) for a signal, so a test can deliver SIGKILL/SIGTERM at a
    known step however slow the machine is.
    """
    import time

    import jax
    import numpy as np
    from flax import nnx

    from _train_tiny import TinyLM, nll_objective
    from mojax.train.checkpoint import CheckpointConfig, install_sigterm_flag
    from mojax.train.loop import TrainConfig, fit
    from mojax.train.mesh import MeshConfig, make_mesh
    from mojax.train.step import OptimizerConfig

    flag = install_sigterm_flag()

    def on_step(step, metrics):
        print(f"step {step} loss {metrics['loss']:.6f}", flush=True)
        if step == int(hold):
            deadline = time.monotonic() + 600
            while not flag.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)

    result = fit(lambda: TinyLM(rngs=nnx.Rngs(0)), nll_objective, _grain_pairs(),
                 optimizer=OptimizerConfig(learning_rate=1e-2), mesh=make_mesh(MeshConfig()),
                 config=TrainConfig(steps=int(steps), log_every=1, run_dir=run_dir, progress=False, seed=3),
                 checkpoint=CheckpointConfig(every_steps=int(every), max_to_keep=2), stop_flag=flag,
                 on_metrics=on_step)
    leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves((result.state.params,
                                                                           result.state.opt_state)))}
    np.savez(out, start_step=result.start_step, stopped=result.stopped, step=int(result.state.step), **leaves)
    print("done", result.start_step, result.stopped, flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
