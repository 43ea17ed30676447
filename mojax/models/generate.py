"""Batched autoregressive decoding with a KV cache: greedy, temperature and nucleus (top-p) sampling.

One jitted function per (model graph, shapes, greedy/sampled): the prompt (left padded, optionally
after prefix embeddings) fills the cache in one pass, then a ``lax.while_loop`` appends one token per step and stops
early once every row has produced EOS. A sharded model is traced under its mesh (``jax.set_mesh``), so the
models' activation constraints (:func:`mojax.sharding.constrain`) are part of the program rather than dropped.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jax.sharding import Mesh, NamedSharding

from mojax.models.decoder import Decoder


class GenerateOutput(NamedTuple):
    """Result of :func:`generate`.

    Attributes:
      tokens: int32 ``[B, max_new_tokens]``; ``pad_id`` after a row's EOS (and in steps never run).
      mask: bool ``[B, max_new_tokens]``, True for generated tokens (EOS included).
    """

    tokens: jax.Array
    mask: jax.Array


def top_p_filter(logits: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (Holtzman et al. 2020);
    the others get ``-inf``. The most likely token is always kept. ``logits [..., V]``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass strictly above each sorted token
    keep_sorted = before < top_p
    # threshold: the smallest kept probability; ties at the threshold are kept too
    threshold = jnp.min(jnp.where(keep_sorted, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


def _next_token(logits, rng, temperature, top_p, greedy: bool):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    return jax.random.categorical(rng, top_p_filter(scaled, top_p), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "use_lora"))
def _generate(graphdef, state, prompt_ids, prompt_mask, prefix_embeds, rng, temperature, top_p, eos_id, pad_id, *,
              max_new_tokens: int, greedy: bool, use_lora: bool):
    model = nnx.merge(graphdef, state)
    B, T = prompt_ids.shape
    P = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    cache = model.init_cache(B, P + T + max_new_tokens)
    logits, cache = model(prompt_ids, attention_mask=prompt_mask, prefix_embeds=prefix_embeds, cache=cache,
                          use_lora=use_lora)
    last = logits[:, -1]  # left padding: the last column is every row's last real token

    def cond(carry):
        step, _, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, last, tokens, mask, done, rng = carry
        rng, sub = jax.random.split(rng)
        tok = _next_token(last, sub, temperature, top_p, greedy)
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        tokens = tokens.at[:, step].set(tok)
        mask = mask.at[:, step].set(live)
        done = done | (tok == eos_id)  # eos_id = -1 (no EOS) never matches a token id
        logits, cache = model(tok[:, None], attention_mask=live[:, None], cache=cache, use_lora=use_lora)
        return step + 1, cache, logits[:, -1], tokens, mask, done, rng

    tokens = jnp.full((B, max_new_tokens), pad_id, jnp.int32)
    mask = jnp.zeros((B, max_new_tokens), bool)
    done = jnp.zeros((B,), bool)
    carry = (jnp.zeros((), jnp.int32), cache, last, tokens, mask, done, rng)
    _, _, _, tokens, mask, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, mask


def model_mesh(state) -> Mesh | None:
    """The mesh a model's parameters are sharded over (the first multi-device ``NamedSharding`` among the leaves
    of its state), or ``None`` for a single-device model."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def generate(model: Decoder, prompt_ids: jax.Array, *, attention_mask: jax.Array | None = None,
             max_new_tokens: int, rng: jax.Array | None = None, temperature: float = 0.0, top_p: float = 1.0,
             eos_id: int | None = None, pad_id: int = 0, prefix_embeds: jax.Array | None = None,
             use_lora: bool = True, mesh: Mesh | None = None) -> GenerateOutput:
    """Decode ``max_new_tokens`` tokens after left-padded prompts.

    Args:
      model: a :class:`~mojax.models.Decoder`.
      prompt_ids: int ``[B, T]``, left padded (right padding would put padding between prompt and continuation).
      attention_mask: ``[B, T]``, 1 for real prompt tokens; default all ones.
      max_new_tokens: number of decoding steps (the output width).
      rng: PRNG key, required when ``temperature > 0``.
      temperature: 0 for greedy (argmax) decoding, else sampling from ``softmax(logits / temperature)``.
      top_p: nucleus sampling mass (1.0 = no truncation).
      eos_id: a row stops after emitting it (the EOS itself is kept and masked True); ``None`` = never stop.
      pad_id: filler after EOS.
      prefix_embeds: optional ``[B, P, D]`` embeddings before the prompt (see :class:`~mojax.models.Decoder`).
      use_lora: decode with LoRA adapters (False: the base model).
      mesh: trace and run under this mesh (``jax.set_mesh``); default the mesh of the model's parameter shardings
        (:func:`model_mesh`), none for a single-device model.
    Returns:
      :class:`GenerateOutput` ``(tokens [B, N], mask [B, N])``.
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2:
        raise ValueError(f"prompt_ids must be [B, T], got shape {prompt_ids.shape}")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    greedy = temperature == 0.0
    if not greedy and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key")
    if attention_mask is None:
        attention_mask = jnp.ones(prompt_ids.shape, bool)
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    if attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != prompt shape {prompt_ids.shape}")
    if rng is None:
        rng = jax.random.key(0)
    graphdef, state = nnx.split(model)
    mesh = model_mesh(state) if mesh is None else mesh
    args = (graphdef, state, prompt_ids, attention_mask, prefix_embeds, rng, jnp.float32(max(temperature, 1e-6)),
            jnp.float32(top_p), jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id))
    kwargs = dict(max_new_tokens=max_new_tokens, greedy=greedy, use_lora=use_lora)
    if mesh is None:
        tokens, mask = _generate(*args, **kwargs)
    else:
        with jax.set_mesh(mesh):  # constrain() reads the mesh while tracing; without it every constraint is dropped
            tokens, mask = _generate(*args, **kwargs)
    return GenerateOutput(tokens=tokens, mask=mask)
