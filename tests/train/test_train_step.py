"""The pure train step: accumulation equals the big batch, non-finite updates are skipped, 8-device parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from flax import nnx

from _train_tiny import TinyLM, make_batch, nll_objective
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.state import create_train_state
from mojax.train.step import (OptimizerConfig, StatefulObjective, jit_train_step, make_optimizer, make_schedule,
                              make_train_step, split_microbatches)

HERE = Path(__file__).parent


def _setup(tx, seed=0):
    mesh = make_mesh(MeshConfig())
    graphdef, state, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(seed)), tx, mesh=mesh, rng=seed)
    return mesh, graphdef, state, shardings


def _masked_batch():
    batch = make_batch(1)
    # Uneven valid counts per strided microbatch (A=4: 2, 1, 1, 1), so a mean of microbatch means would differ.
    batch["example_mask"] = np.array([1, 1, 1, 0, 1, 0, 0, 1], bool)
    return batch


def test_accumulation_equals_big_batch_not_mean_of_means():
    tx = optax.sgd(0.1)
    mesh, graphdef, state, shardings = _setup(tx)
    batch = _masked_batch()
    params0 = jax.tree.map(np.asarray, state.params)
    big = jit_train_step(make_train_step(graphdef, nll_objective, tx), shardings, batch, mesh)
    acc_fn = make_train_step(graphdef, nll_objective, tx, accum_steps=4)
    s_big, m_big = big(jax.tree.map(jnp.copy, state), batch, state.rng)
    s_acc, m_acc = jax.jit(acc_fn)(state, batch, state.rng)
    for a, b in zip(jax.tree.leaves(s_big.params), jax.tree.leaves(s_acc.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_big["loss"], m_acc["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_big["chosen_logps"], m_acc["chosen_logps"], rtol=1e-6)
    assert float(m_acc["count"]) == 5.0
    # The update moved the parameters, so equality above is not vacuous.
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(s_acc.params))) > 1e-3
    # The reference the step must *not* match: averaging microbatch means weights the 1-example microbatches up.
    micro = split_microbatches({k: jnp.asarray(v) for k, v in batch.items()}, 4)
    model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params0), state.rest)
    means = [float(nll_objective(model, jax.tree.map(lambda x: x[a], micro), None)[0]) for a in range(4)]
    assert abs(np.mean(means) - float(m_acc["loss"])) > 1e-3


def test_split_microbatches_is_strided_and_handles_ref_axis():
    batch = {"x": jnp.arange(8), "ref_logps": jnp.arange(3 * 8 * 2).reshape(3, 8, 2)}
    micro = split_microbatches(batch, 4)
    np.testing.assert_array_equal(micro["x"], np.arange(8).reshape(2, 4).T)
    assert micro["ref_logps"].shape == (4, 3, 2, 2)
    np.testing.assert_array_equal(micro["ref_logps"][1], np.asarray(batch["ref_logps"])[:, 1::4])
    with pytest.raises(ValueError, match="not divisible by accum_steps"):
        split_microbatches({"x": jnp.arange(6)}, 4)


@settings(max_examples=25, deadline=None)
@given(per=st.integers(1, 4), accum=st.sampled_from([1, 2, 3, 4]), trailing=st.integers(0, 2))
def test_split_microbatches_partitions_the_batch(per, accum, trailing):
    """Every example lands in exactly one microbatch, at position (i // A) of microbatch (i mod A)."""
    b = per * accum
    x = np.arange(b * 2 ** trailing).reshape((b,) + (2,) * trailing)
    micro = np.asarray(split_microbatches({"x": jnp.asarray(x)}, accum)["x"])
    assert micro.shape == (accum, per) + x.shape[1:]
    for i in range(b):
        np.testing.assert_array_equal(micro[i % accum, i // accum], x[i])


def test_non_finite_update_is_skipped_and_counted():
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    mesh, graphdef, state, shardings = _setup(tx)
    good = make_batch(2)
    good["scale"] = np.ones(8, np.float32)
    bad = dict(good, scale=np.where(np.arange(8) == 3, np.nan, 1.0).astype(np.float32))
    step = jit_train_step(make_train_step(graphdef, nll_objective, tx), shardings, good, mesh)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, m = step(state, bad, state.rng)
    assert float(m["finite"]) == 0.0 and int(m["skipped"]) == 1 and int(state.skipped) == 1
    assert int(state.step) == 1
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    state, m = step(state, good, state.rng)
    assert float(m["finite"]) == 1.0 and int(state.skipped) == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(jax.tree.leaves(state.params),
                                                                       jax.tree.leaves(before[0]))]
    assert max(moved) > 1e-4


@pytest.mark.parametrize("learning_rate", [float("inf"), float("nan"), 1e38])
def test_guard_covers_the_update_and_new_parameters(learning_rate):
    """Finite loss and gradients but an inf/NaN learning rate (a hand-built optax chain: the config refuses them) or
    one so large the parameters overflow: the update is skipped and counted, nothing non-finite is written."""
    name = {1e38: "huge"}.get(learning_rate, str(learning_rate))
    if name != "huge":
        with pytest.raises(ValueError, match="learning_rate must be finite"):
            OptimizerConfig(learning_rate=learning_rate)
    tx = optax.sgd(learning_rate)
    mesh, graphdef, state, shardings = _setup(tx)
    batch = make_batch(2)
    before = jax.tree.map(np.asarray, state.params)
    step = jit_train_step(make_train_step(graphdef, nll_objective, tx), shardings, batch, mesh)
    state, m = step(state, batch, state.rng)
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))  # only the update is bad
    assert float(m["finite"]) == 0.0 and int(state.skipped) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    # Without the update/parameter checks the 1e38 step would have been applied: it overflows the parameters.
    raw = optax.apply_updates(before, tx.update(jax.tree.map(jnp.ones_like, before), tx.init(before))[0])
    assert not np.isfinite(float(optax.tree.norm(raw)))


def test_huge_beta_is_skipped_and_counted_with_parameters_finite():
    """β = 1e30 is finite (accepted) but its gradients overflow: each step is skipped and counted with the
    parameters unchanged; ``fit`` stops such a run (every step skipped) with a one-line cause; a non-finite β is
    refused when the run starts."""
    from mojax.train import TrainConfig, dpo_objective, fit
    from mojax.train.run_dir import SkippedStepsError
    from mojax.train.state import create_train_state

    rs = np.random.RandomState(0)
    batches = [{**make_batch(s), "ref_logps": rs.normal(-8, 1, (8, 2)).astype(np.float32)} for s in range(2)]
    objective = dpo_objective()
    tx = optax.adam(1e-2)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    graphdef, state, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh,
                                                    hparams=objective.initial_hparams({"beta": 1e30}))
    before = jax.tree.map(np.asarray, state.params)
    step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batches[0], mesh)
    for b in batches:
        state, m = step(state, b, state.rng)
        assert float(m["finite"]) == 0.0
    assert int(state.skipped) == 2
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))

    seen = []
    config = TrainConfig(steps=2, log_every=1, progress=False)
    with pytest.raises(SkippedStepsError, match="skipped"):
        fit(lambda: TinyLM(rngs=nnx.Rngs(0)), objective, iter(batches), config=config, hparams={"beta": 1e30},
            on_metrics=lambda s, m: seen.append(int(m["skipped"])))
    assert seen and seen[-1] == len(seen)  # every logged step was a skipped one
    with pytest.raises(ValueError, match="finite"):
        fit(lambda: TinyLM(rngs=nnx.Rngs(0)), objective, iter(batches), config=config, hparams={"beta": np.inf})


def test_stateful_objective_carries_extras_through_microbatches():
    def fn(model, batch, rng, extras):
        loss, metrics = nll_objective(model, batch, rng)
        return loss, metrics, {"calls": extras["calls"] + 1}

    obj = StatefulObjective(fn=fn, init_extras=lambda model: {"calls": jnp.zeros((), jnp.int32)})
    tx = optax.sgd(0.1)
    mesh = make_mesh(MeshConfig())
    graphdef, state, _ = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh,
                                            extras=obj.init_extras(None))
    state, _ = jax.jit(make_train_step(graphdef, obj, tx, accum_steps=4))(state, make_batch(0), state.rng)
    assert int(state.extras["calls"]) == 4


def test_optimizer_config_schedule_and_errors():
    sched = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay_steps=110))
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6 and float(sched(110)) < 1e-6
    const = make_schedule(OptimizerConfig(learning_rate=0.5, warmup_steps=4))
    assert abs(float(const(2)) - 0.25) < 1e-7 and float(const(100)) == 0.5
    with pytest.raises(ValueError, match="learning_rate"):
        make_schedule(OptimizerConfig(learning_rate=0.0))
    with pytest.raises(ValueError, match="max_grad_norm"):
        make_optimizer(OptimizerConfig(max_grad_norm=-1.0))
    with pytest.raises(ValueError, match="accum_steps"):
        make_train_step(None, nll_objective, optax.sgd(0.1), accum_steps=0)


def test_clipping_bounds_the_update():
    """With SGD-like Adam disabled, clipping is visible through the optimizer chain: norm after clip ≤ max."""
    tx = optax.chain(optax.clip_by_global_norm(0.01), optax.sgd(1.0))
    _, graphdef, state, _ = _setup(tx)
    p0 = jax.tree.map(np.asarray, state.params)
    state, m = jax.jit(make_train_step(graphdef, nll_objective, tx))(state, make_batch(0), state.rng)
    delta = np.sqrt(sum(float(((np.asarray(a) - b) ** 2).sum()) for a, b in zip(jax.tree.leaves(state.params),
                                                                             jax.tree.leaves(p0))))
    assert float(m["grad_norm"]) > 0.01 and abs(delta - 0.01) < 1e-6


def test_eight_device_mesh_matches_one_device():
    """3 steps on a 2×2×2 CPU mesh give the losses of one device (≤1e-5), in a subprocess with 8 fake devices:
    TinyLM (all parameters trained) and the real tiny Decoder under LoRA-DPO."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "_train_worker.py"), "mesh_parity"], env=env, cwd=HERE,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["sharded_specs"], result
    one, eight = np.array(result["one"]), np.array(result["eight"])
    assert one.shape == (3,) and np.ptp(one) > 1e-3
    np.testing.assert_allclose(eight, one, atol=1e-5, rtol=0)
    # The real tiny Decoder with LoRA, DPO against the LoRA base: frozen weights sharded over fsdp and tensor.
    assert result["lora_sharded"]
    assert abs(result["lora_one"][0] - np.log(2)) < 1e-6
    np.testing.assert_allclose(result["lora_eight"], result["lora_one"], atol=1e-5, rtol=0)


def test_make_optimizer_is_shared_per_config():
    """Equal configs give one transformation (sweeps reuse compiled inits); different configs do not."""
    from mojax.train.step import OptimizerConfig, make_optimizer

    assert make_optimizer(OptimizerConfig(learning_rate=0.01)) is make_optimizer(OptimizerConfig(learning_rate=0.01))
    assert make_optimizer(OptimizerConfig(learning_rate=0.01)) is not make_optimizer(OptimizerConfig(learning_rate=0.02))
