"""A tiny decoder-shaped model and objective for the training-engine tests (shared by in-process and subprocess tests).

The model has the call signature of ``mojax.models.Decoder`` that the engine relies on —
``model(input_ids [B, T], *, attention_mask, return_hidden=False, use_lora=True)`` and ``unembedding() [D, V]`` —
and parameters carrying logical axis names that shard over ``fsdp`` and ``tensor``, so the engine can be tested
without the real model. It is deliberately not causal-attention-correct: it is a per-token MLP plus a running mean
over the prefix, enough to make log-probs depend on context.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mojax.sharding import partitioned

VOCAB, WIDTH, HIDDEN = 16, 8, 16


class TinyLM(nnx.Module):
    """Embedding → causal running mean → MLP (+ optional LoRA on the MLP input) → tied-free unembedding."""

    def __init__(self, *, rngs: nnx.Rngs, lora_rank: int = 0, vocab: int = VOCAB, width: int = WIDTH,
                 hidden: int = HIDDEN):
        init = nnx.initializers.normal(0.5)
        self.embed = nnx.Param(partitioned(init, "vocab", "embed")(rngs.params(), (vocab, width)))
        self.w_in = nnx.Param(partitioned(init, "embed", "mlp")(rngs.params(), (width, hidden)))
        self.w_out = nnx.Param(partitioned(init, "mlp", "embed")(rngs.params(), (hidden, width)))
        self.unembed = nnx.Param(partitioned(init, "embed", "vocab")(rngs.params(), (width, vocab)))
        self.lora_rank = lora_rank
        if lora_rank:
            self.lora_a = nnx.LoRAParam(partitioned(init, "embed", "lora_rank")(rngs.params(), (width, lora_rank)))
            self.lora_b = nnx.LoRAParam(partitioned(nnx.initializers.zeros, "lora_rank", "mlp")(
                rngs.params(), (lora_rank, hidden)))

    def __call__(self, input_ids, *, attention_mask=None, positions=None, prefix_embeds=None, return_hidden=False,
                 use_lora=True):
        x = self.embed[...][input_ids]  # [B, T, D]
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        m = attention_mask.astype(x.dtype)[..., None]
        ctx = jnp.cumsum(x * m, axis=-2) / jnp.maximum(jnp.cumsum(m, axis=-2), 1.0)
        if prefix_embeds is not None:
            ctx = ctx + jnp.mean(prefix_embeds, axis=-2, keepdims=True)
        w_in = self.w_in[...]
        if self.lora_rank and use_lora:
            w_in = w_in + self.lora_a[...] @ self.lora_b[...]
        h = x + ctx + jnp.tanh(ctx @ w_in) @ self.w_out[...]
        if return_hidden:
            return h
        return h @ self.unembed[...]

    def unembedding(self):
        return self.unembed[...]


def token_logps(model, input_ids, attention_mask, loss_mask, **kwargs):
    """Σ_t loss_mask_t · log p(y_t | y_<t) per row, for ids of any leading shape ``[..., T]`` (one forward)."""
    lead, t = input_ids.shape[:-1], input_ids.shape[-1]
    logits = model(input_ids.reshape(-1, t), attention_mask=attention_mask.reshape(-1, t), **kwargs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, :-1]
    tok = jnp.take_along_axis(logp, input_ids.reshape(-1, t)[:, 1:, None], axis=-1)[..., 0]
    out = jnp.sum(tok * loss_mask.reshape(-1, t)[:, 1:], axis=-1)
    return out.reshape(lead)


def nll_objective(model, batch, rng):
    """Mean over valid examples of −log p(chosen), weighted by an optional float ``scale`` entry (for NaN tests)."""
    del rng
    logps = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[:, 0]  # [B]
    valid = batch.get("example_mask", jnp.ones(logps.shape, bool))
    per = -logps * batch.get("scale", jnp.ones(logps.shape))
    count = jnp.sum(valid)
    loss = jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(count, 1)
    return loss, {"chosen_logps": jnp.sum(jnp.where(valid, logps, 0.0)) / jnp.maximum(count, 1), "count": count}


def make_batch(seed: int, batch: int = 8, n: int = 2, t: int = 6, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """A random pair batch in the engine's layout: prompt of 2 tokens, response of the rest, some right padding."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, size=(batch, n, t)).astype(np.int32)
    lengths = rs.randint(4, t + 1, size=(batch, n))
    pos = np.arange(t)
    attn = (pos[None, None, :] < lengths[..., None]).astype(np.int32)
    loss_mask = (pos[None, None, :] >= 2) & attn.astype(bool)
    ids = ids * attn
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}
