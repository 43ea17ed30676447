"""The mixed-precision policy (issue 13 §4, ``mojax.train.precision``): bfloat16 parameters train through float32
master weights that accumulate updates below bfloat16's resolution; bf16 vs f32 DPO losses agree within a stated
tolerance; checkpoint/resume of a bf16 run is exact; nothing non-finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_tiny import make_batch
from flax import nnx

from mojax.models import Decoder, DecoderConfig
from mojax.train import CheckpointConfig, OptimizerConfig, TrainConfig, dpo_objective, fit, policy_logps
from mojax.train.precision import MasterWeightsState, master_weights, needs_master

F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)


class _Weights(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((4,), jnp.bfloat16))


def _pull_up(model, batch, rng):
    """Loss −Σ w: gradient −1 on every weight, so Adam's step is exactly the learning rate each time."""
    del batch, rng
    return -jnp.sum(model.w[...].astype(jnp.float32)), {}


def _floats(tree):
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_master_weights_accumulate_updates_below_bfloat16_resolution():
    lr, steps = 1e-3, 12
    # The control: near 1.0 bfloat16's spacing is 2^-7 ≈ 7.8e-3, so a bf16 ``p + u`` drops a 1e-3 update entirely.
    assert optax.apply_updates(jnp.ones((), jnp.bfloat16), jnp.float32(lr)) == 1.0
    opt = OptimizerConfig(learning_rate=lr, max_grad_norm=0.0)  # Adam: constant gradient → update = lr each step
    result = fit(_Weights(), _pull_up, iter([{"x": np.zeros((1, 1), np.float32)}] * steps),
                 config=TrainConfig(steps=steps, log_every=1, progress=False), optimizer=opt)
    opt_state = result.state.opt_state
    assert isinstance(opt_state, MasterWeightsState)
    assert _floats(opt_state) == {F32} and _floats(result.state.params) == {BF16}
    master = np.asarray(jax.tree.leaves(opt_state.master)[0])
    # Closed form in float64: 1 + steps·lr·(1 − ε/(1+ε)) with Adam's ε = 1e-8; float32 sums good to ~1e-6.
    np.testing.assert_allclose(master, 1.0 + steps * lr, atol=2e-6, rtol=0)
    stored = np.asarray(result.state.params["w"][...], np.float32)
    np.testing.assert_array_equal(stored, np.asarray(jnp.asarray(master).astype(jnp.bfloat16), np.float32))
    assert (stored > 1.0).all()  # 1.012 rounds to 1.0078125: the accumulated updates show in the stored weights
    assert np.isfinite(result.metrics("loss")).all() and result.skipped == 0


def test_master_weights_wrapper_only_for_low_precision_and_reused():
    assert not needs_master({"a": jnp.zeros(2), "n": jnp.zeros(2, jnp.int32)})
    assert needs_master({"a": jnp.zeros(2), "b": jax.ShapeDtypeStruct((2,), jnp.bfloat16)})
    tx = optax.adam(1e-3)
    assert master_weights(tx) is master_weights(tx)  # one wrapper per transformation: fit's step cache hits
    # The sharding helper of create_train_state maps the master copy like the parameters.
    params = {"a": jnp.zeros(3, jnp.bfloat16)}
    mapped = optax.tree_map_params(master_weights(tx), lambda p: "param", master_weights(tx).init(params),
                                   transform_non_params=lambda _: "other")
    assert mapped.master == {"a": "param"} and mapped.inner[0].mu == {"a": "param"}


def _pairs(seed: int, model) -> dict[str, np.ndarray]:
    batch = make_batch(seed, batch=4, n=2, t=10, vocab=model.config.vocab_size)
    # Cached reference log-probs: the float32 starting model's, perturbed so the loss is not exactly ln 2.
    ref = np.asarray(policy_logps(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    return {**batch, "ref_logps": ref + np.random.RandomState(seed).normal(0, 0.5, ref.shape).astype(np.float32)}


# bf16 vs f32 tolerance on the DPO loss (≈ 0.6–0.8): with bf16 parameters *and* compute, every weight and matmul
# input is rounded to 8 mantissa bits (relative 2^-9 ≈ 2e-3 each); the loss reads the policy's summed response
# log-probs (≈ 8 tokens · ln 128 ≈ 40 nats) through β = 0.1, so an error of ~0.1 % on them moves the loss by
# ~β · 0.04 / 4 ≈ 1e-3. Logits, log-softmax and the loss are float32. Measured over 6 steps on a 2-layer version:
# max |Δ| = 2.0e-4; the bound is 3e-3 (the estimate's order, 15× the measurement).
BF16_DPO_ATOL = 3e-3


@pytest.mark.filterwarnings("ignore:resuming at step")  # the resumed run is given the remaining batches itself
def test_bfloat16_params_and_compute_match_float32_dpo_then_resume_exactly(tmp_path):
    base = Decoder(DecoderConfig.tiny("llama", num_layers=1), rngs=nnx.Rngs(0))
    batches = [_pairs(s, base) for s in range(6)]
    half = base.with_precision(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert _floats(nnx.state(half, nnx.Param)) == {BF16}
    objective = dpo_objective(beta=0.1, ref_mode="cached")
    opt = OptimizerConfig(learning_rate=1e-3)
    train = TrainConfig(steps=6, log_every=1, progress=False)
    f32 = fit(base, objective, iter(batches), config=train, optimizer=opt)
    bf16 = fit(half, objective, iter(batches), config=train, optimizer=opt)
    diff = np.abs(bf16.metrics("loss") - f32.metrics("loss"))
    assert np.isfinite(bf16.metrics("loss")).all() and bf16.skipped == 0
    assert diff.max() <= BF16_DPO_ATOL, (f32.metrics("loss"), bf16.metrics("loss"))
    assert diff.max() > 1e-6  # the policy reached the model
    # State: parameters bf16, master and Adam moments float32, every leaf finite.
    assert _floats(bf16.state.params) == {BF16} and _floats(bf16.state.opt_state) == {F32}
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(bf16.state))
    model = bf16.model()
    assert model.config.param_dtype == BF16 and model.embed.embedding[...].dtype == BF16

    # Checkpoint / resume: 3 steps, then resume to 6 from the checkpoint == the uninterrupted bf16 run, bit for bit
    # (master weights, moments and the rounded parameters all restored).
    ckpt = CheckpointConfig(every_steps=3, async_save=False)
    fit(half, objective, iter(batches[:3]), config=TrainConfig(steps=3, log_every=1, progress=False),
        optimizer=opt, run_dir=tmp_path / "run", checkpoint=ckpt)
    resumed = fit(half, objective, iter(batches[3:]), config=train, optimizer=opt, run_dir=tmp_path / "run",
                  checkpoint=ckpt)
    assert resumed.start_step == 3
    assert isinstance(resumed.state.opt_state, MasterWeightsState)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(bf16.state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
