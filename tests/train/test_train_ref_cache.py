"""Reference log-prob cache: a second run reuses it with identical losses; new weights, data or tokenizer miss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from _train_tiny import TinyLM, make_batch
from mojax.train import objectives as O
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.ref_cache import attach_ref_logps, cached_reference_logps, ref_axis_first
from mojax.train.state import create_train_state
from mojax.train.step import make_train_step


def _examples():
    return make_batch(11, batch=10)  # 10 examples: batches of 4 leave a padded last batch


def _dpo_losses(tables, examples):
    """Two DPO steps from the same initial state for each cached table (one compiled step for all)."""
    tx = optax.adam(1e-2)
    graphdef, state0, _ = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=make_mesh(MeshConfig()))
    step = jax.jit(make_train_step(graphdef, O.dpo_objective(beta=0.5), tx))
    out = []
    for table in tables:
        data = attach_ref_logps(examples, table)
        state, losses = state0, []
        for i in range(2):
            batch = {k: jnp.asarray(v[4 * i:4 * i + 4]) for k, v in data.items()}
            state, m = step(state, batch, jax.random.PRNGKey(i))
            losses.append(float(m["loss"]))
        out.append(losses)
    return out


def test_cache_reused_with_identical_losses_and_invalidated_by_weights_data_tokenizer(tmp_path):
    examples = _examples()
    reference = TinyLM(rngs=nnx.Rngs(5))
    first, hits = cached_reference_logps(reference, examples, cache_dir=tmp_path, tokenizer="tok-a", batch_size=4)
    assert hits == [False] and len(list(tmp_path.glob("*.npy"))) == 1
    direct = O.policy_logps(reference, {k: jnp.asarray(v) for k, v in examples.items()})
    np.testing.assert_allclose(first, direct, rtol=1e-6, atol=1e-6)
    assert first.shape == (10, 2)

    second, hits = cached_reference_logps(reference, examples, cache_dir=tmp_path, tokenizer="tok-a", batch_size=4)
    assert hits == [True]
    assert first.tobytes() == second.tobytes()
    losses_first, losses_second = _dpo_losses([first, second], examples)
    assert losses_first == losses_second

    changed = TinyLM(rngs=nnx.Rngs(5))
    changed.w_in[...] = changed.w_in[...] + 1e-3  # one weight tensor nudged
    third, hits = cached_reference_logps(changed, examples, cache_dir=tmp_path, tokenizer="tok-a", batch_size=4)
    assert hits == [False] and not np.array_equal(third, first)
    _, hits = cached_reference_logps(reference, examples, cache_dir=tmp_path, tokenizer="tok-b", batch_size=4)
    assert hits == [False]
    other = dict(examples, input_ids=np.where(examples["attention_mask"] > 0, (examples["input_ids"] + 1) % 16, 0))
    _, hits = cached_reference_logps(reference, other, cache_dir=tmp_path, tokenizer="tok-a", batch_size=4)
    assert hits == [False]
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_several_rounds_stack_and_reach_the_batch_layout(tmp_path):
    examples = _examples()
    rounds = [TinyLM(rngs=nnx.Rngs(s)) for s in (1, 2, 3)]
    _, hits = cached_reference_logps(rounds[:2], examples, cache_dir=tmp_path, batch_size=4)
    assert hits == [False, False]
    table, hits = cached_reference_logps(rounds, examples, cache_dir=tmp_path, batch_size=4)
    assert hits == [True, True, False] and table.shape == (3, 10, 2)  # SPO round 3 recomputes only π_2
    data = attach_ref_logps(examples, table)
    assert data["ref_logps"].shape == (10, 3, 2)
    batch = ref_axis_first({k: v[:4] for k, v in data.items()})
    assert batch["ref_logps"].shape == (3, 4, 2)
    np.testing.assert_array_equal(batch["ref_logps"], table[:, :4])
    loss, m = O.spo_objective(beta=0.5, alpha=(0.2, 0.4))(rounds[2], {k: jnp.asarray(v) for k, v in batch.items()},
                                                          None)
    assert np.isfinite(float(loss)) and 0.0 < float(m["phi_mean"]) < 1.0
