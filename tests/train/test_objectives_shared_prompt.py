"""Shared prompt (issue 13 §3): the prompt of a pair runs once and both responses attend to its keys/values. DPO
losses, log-probs and every parameter gradient equal the unshared step on the same pairs (≤ 1e-5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mojax.models import Decoder, DecoderConfig
from mojax.train.objectives import AnchoredPolicy, LMOpening, dpo_objective, policy_logps, split_shared_prompt

PROMPTS = (5, 2, 7, 1)  # prompt lengths per pair (one of a single token)
RESPONSES = ((3, 6), (4, 1), (2, 5), (6, 6))


def _batch(vocab: int, t: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded ``prompt + response`` rows; the two responses of a pair share the prompt tokens."""
    rs = np.random.RandomState(seed)
    b, n = len(PROMPTS), 2
    ids = np.zeros((b, n, t), np.int32)
    mask = np.zeros((b, n, t), np.int32)
    loss = np.zeros((b, n, t), bool)
    for i, (p, lens) in enumerate(zip(PROMPTS, RESPONSES)):
        prompt = rs.randint(1, vocab, p)
        for j, r in enumerate(lens):
            ids[i, j, :p + r] = np.concatenate([prompt, rs.randint(1, vocab, r)])
            mask[i, j, :p + r] = 1
            loss[i, j, p:p + r] = True
    ref = rs.normal(-20, 2, (b, n)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "ref_logps": ref,
            "example_mask": np.array([True, True, True, False])}


def _jb(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _loss_and_grads(objective, model, batch):
    """Jitted loss and parameter gradients (eager nnx would dispatch op by op: minutes on a loaded CPU)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def f(params, b):
        return jax.value_and_grad(lambda p: objective(nnx.merge(graphdef, p, rest), b, jax.random.PRNGKey(0))[0])(
            params)

    return f(params, _jb(batch))


def _logps(model, batch, **kw):
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, b: policy_logps(nnx.merge(graphdef, s), b, **kw))(state, _jb(batch)))


def test_split_layout_and_refusals():
    batch = _batch(64)
    split = split_shared_prompt(batch, multiple=8)
    assert split["prompt_ids"].shape == (4, 8) and split["input_ids"].shape == (4, 2, 8)
    np.testing.assert_array_equal(split["prompt_mask"].sum(-1), PROMPTS)
    np.testing.assert_array_equal(split["attention_mask"].sum(-1), RESPONSES)
    np.testing.assert_array_equal(split["loss_mask"].sum(-1), RESPONSES)
    np.testing.assert_array_equal(split["ref_logps"], batch["ref_logps"])
    bad = {**batch, "input_ids": batch["input_ids"].copy()}
    bad["input_ids"][2, 1, 0] += 1  # pair 2's responses no longer share the prompt
    with pytest.raises(ValueError, match="example 2: its responses do not share the prompt"):
        split_shared_prompt(bad)
    with pytest.raises(ValueError, match="needs a shared-prompt batch"):
        LMOpening(shared_prompt=True)(Decoder(DecoderConfig.tiny(), rngs=nnx.Rngs(0)), _jb(batch))


@pytest.mark.parametrize("family,scan", [("llama", False), ("gpt2", False), ("gemma3_text", True)])
def test_shared_prompt_equals_unshared_dpo(family, scan):
    """Llama (rotary), GPT-2 (learned positions, LayerNorm) and Gemma 3 scanned (stacked cache, q/k norms,
    local/global layers whose window covers the row): loss and every gradient within 1e-5."""
    cfg = DecoderConfig.tiny(family, scan_layers=scan, **({"sliding_window": 64} if family == "gemma3_text" else {}))
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    batch = _batch(cfg.vocab_size)
    split = split_shared_prompt(batch, multiple=8)
    assert split["prompt_ids"].shape[1] + split["input_ids"].shape[2] == 16  # 8 + 8 slots against 16 per response
    full = _logps(model, batch)
    np.testing.assert_allclose(_logps(model, split), full, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_logps(model, split, chunk_size=None), full, atol=1e-5, rtol=0)
    objective = dpo_objective(beta=0.5, ref_mode="cached")
    loss, grads = _loss_and_grads(objective, model, batch)
    loss_s, grads_s = _loss_and_grads(objective, model, split)
    assert abs(float(loss) - float(loss_s)) <= 1e-5 and abs(float(loss) - np.log(2)) > 1e-3
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_s)):
        scale = max(1.0, float(jnp.max(jnp.abs(g))))
        assert float(jnp.max(jnp.abs(g - h))) <= 1e-5 * scale


def test_shared_prompt_reference_model_and_jit():
    """A frozen reference (``ref_mode="model"``) reads the shared layout too; under jit, same loss."""
    cfg = DecoderConfig.tiny("llama")
    policy, reference = Decoder(cfg, rngs=nnx.Rngs(1)), Decoder(cfg, rngs=nnx.Rngs(2))
    model = AnchoredPolicy(policy, reference)
    batch = _batch(cfg.vocab_size, seed=3)
    objective = dpo_objective(beta=0.1, ref_mode="model")
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss_of(state, b):
        return objective(nnx.merge(graphdef, state), b, jax.random.PRNGKey(0))[0]

    full = float(loss_of(state, {k: jnp.asarray(v) for k, v in batch.items()}))
    shared = float(loss_of(state, {k: jnp.asarray(v) for k, v in split_shared_prompt(batch).items()}))
    assert abs(full - shared) <= 1e-5 and abs(full - np.log(2)) > 1e-4
