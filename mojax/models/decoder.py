"""The decoder-only language model (one module for GPT-2, Llama 2/3, Mistral, Qwen2/3, GPT-NeoX, Gemma 2/3).

Positions of padded inputs come from the attention mask (``cumsum(mask) - 1``), so a left-padded prompt gives the
same logits as the unpadded one (and as Hugging Face with ``position_ids`` from the mask, which ``generate`` uses).
Attention is causal by *slot index* and masks padding keys, exactly as Hugging Face's ``create_causal_mask``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mojax.models.config import DecoderConfig
from mojax.models.layers import Block, Dense, Embed, Norm
from mojax.sharding import constrain


class KVCache(NamedTuple):
    """Keys and values of every layer for ``S`` slots, filled left to right.

    Attributes:
      keys, values: per layer ``[B, S, K, h]``: a tuple over layers, or (scanned models, ``config.scanned``) one
        stacked ``[L, B, S, K, h]`` array each; ``keys[i]`` is layer i's either way.
      key_mask: bool ``[B, S]``, True for slots holding a real (non-padding) token.
      index: int32 scalar, the next free slot.
      lengths: int32 ``[B]``, real tokens seen so far per row (the next token's position).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    key_mask: jax.Array
    index: jax.Array
    lengths: jax.Array


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Positions ``offset + cumsum(mask) - 1`` clipped at 0: a real token's position counts the real tokens before
    it, whatever padding sits in between. ``mask [B, T]`` → int32 ``[B, T]``."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1 + jnp.asarray(offset, jnp.int32)[..., None]
    return jnp.maximum(pos, 0)


class Decoder(nnx.Module):
    """A decoder-only transformer language model.

    ``Decoder(config, rngs=nnx.Rngs(0))``; parameters: ``embed [V, D]``, ``pos_embed [max_positions, D]`` (learned
    positions only), ``blocks[i]`` (:class:`mojax.models.layers.Block`), ``final_norm``, ``lm_head [D, V]``
    (untied only).
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        pdt = c.param_dtype
        self.embed = Embed(c.vocab_size, c.d_model, names=("vocab", "embed"), std=c.initializer_range,
                           param_dtype=pdt, rngs=rngs)
        self.pos_embed = Embed(c.max_positions, c.d_model, names=(None, "embed"), std=c.initializer_range,
                               param_dtype=pdt, rngs=rngs) if c.positional == "learned" else None
        self.blocks = nnx.List([Block(c, local=local, rngs=rngs) for local in c.sliding_layers])
        self.final_norm = Norm(c.d_model, kind=c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=pdt, rngs=rngs)
        self.lm_head = None if c.tie_embeddings else Dense(
            (c.d_model,), (c.vocab_size,), names=("embed", "vocab"), std=c.initializer_range, dtype=c.dtype,
            param_dtype=pdt, rngs=rngs)

    def unembedding(self) -> jax.Array:
        """The output matrix ``[D, V]`` (in ``param_dtype``): logits = final-normed hidden ``@ unembedding()``.

        Raises ``ValueError`` for a model with ``final_logit_softcap`` (Gemma 2), whose logits are
        ``cap · tanh(hidden @ W / cap)``: a caller computing log-probs from the hidden states would silently skip
        the cap, so it must use the model's own logits (e.g. ``chunk_size=None`` in the LM objectives).
        """
        if self.config.final_logit_softcap is not None:
            raise ValueError(f"{self.config.model_type} soft-caps its logits (final_logit_softcap="
                             f"{self.config.final_logit_softcap}): hidden @ unembedding() is not its logits; use the "
                             "model's logits (chunk_size=None) instead")
        return self._output_matrix()

    def output_head(self) -> tuple[jax.Array, float | None]:
        """``(unembedding [D, V], logit_softcap)``: logits = ``cap · tanh(hidden @ W / cap)`` when the cap is set
        (Gemma 2), else ``hidden @ W``. For from-hidden log-prob paths that apply the cap themselves
        (``logit_softcap=`` of :func:`mojax.losses.sequence_logps_from_hidden`); :meth:`unembedding` keeps refusing
        soft-capped models so that a caller unaware of the cap cannot skip it."""
        return self._output_matrix(), self.config.final_logit_softcap

    def with_precision(self, *, dtype=None, param_dtype=None) -> Decoder:
        """A copy with another compute ``dtype`` and/or parameter storage ``param_dtype`` (``None`` keeps the
        current one): the same weights, cast (float32 → bfloat16 rounds to nearest even), each on its current
        sharding. For a model built or loaded without the policy (experiments' cached π_0, a tiny test model).
        Refused on a model holding LoRA adapters or other non-parameter state (apply the policy before
        ``add_lora``)."""
        c = self.config
        config = c.replace(dtype=c.dtype if dtype is None else dtype,
                           param_dtype=c.param_dtype if param_dtype is None else param_dtype)
        _, state = nnx.split(self)
        abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
        graphdef, target = nnx.split(abstract)
        src, dst = nnx.to_pure_dict(state), nnx.to_pure_dict(target)
        if jax.tree.structure(src) != jax.tree.structure(dst):
            raise ValueError("with_precision needs a plain Decoder (no LoRA adapters or other added state); "
                             "apply the precision before add_lora")
        cast = jax.tree.map(lambda x, t: x.astype(t.dtype), src, dst)
        nnx.replace_by_pure_dict(target, cast)
        return nnx.merge(graphdef, target)

    def _output_matrix(self) -> jax.Array:
        if self.lm_head is None:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
        """An empty :class:`KVCache` with ``max_length`` slots (prefix + prompt + new tokens)."""
        c = self.config
        dtype = c.dtype if dtype is None else dtype
        shape = (batch_size, max_length, c.kv_heads, c.head_size)
        if c.scanned:  # one [L, B, S, K, h] array per side: the scan reads and writes it without restacking
            keys, values = jnp.zeros((c.num_layers,) + shape, dtype), jnp.zeros((c.num_layers,) + shape, dtype)
        else:
            keys = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
            values = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
        return KVCache(keys=keys, values=values,
                       key_mask=jnp.zeros((batch_size, max_length), bool), index=jnp.zeros((), jnp.int32),
                       lengths=jnp.zeros((batch_size,), jnp.int32))

    def _can_scan(self) -> bool:
        # Blocks holding state other than parameters (a LoRA dropout's RNG stream) would need it threaded through
        # the scan per layer; they run unrolled instead (the same result, a bigger program).
        return self.config.scanned and not jax.tree.leaves(nnx.state(self.blocks, nnx.Not(nnx.Param)))

    def _remat(self, fn, *, nnx_module: bool):
        name = self.config.remat_policy_name
        if name == "none":
            return fn
        policy = getattr(jax.checkpoint_policies, name)
        if nnx_module:
            return nnx.remat(fn, policy=policy)
        return jax.checkpoint(fn, policy=policy, prevent_cse=False)  # inside scan CSE cannot merge layers

    def _loop_blocks(self, x, pos, attn_mask, local_mask, kv_in, index, layer_prefixes, *, use_lora, causal):
        """The blocks in a Python loop (a program that grows with depth)."""
        c = self.config

        def apply(block, x, pos, mask, kv, index, prefix_kv, window):
            return block(x, pos, mask, kv, index, use_lora=use_lora, prefix_kv=prefix_kv, causal=causal,
                         window=window)

        apply = self._remat(apply, nnx_module=True)
        new_keys, new_values = [], []
        for i, block in enumerate(self.blocks):
            kv = None if kv_in is None else (kv_in[0][i], kv_in[1][i])
            local = c.sliding_layers[i]
            x, new_kv = apply(block, x, pos, local_mask if local else attn_mask, kv, index,
                              None if layer_prefixes is None else layer_prefixes[i],
                              c.sliding_window if local else None)
            if new_kv is not None:
                new_keys.append(new_kv[0])
                new_values.append(new_kv[1])
        if kv_in is None:
            return x, None
        if not isinstance(kv_in[0], (tuple, list)):  # a stacked cache stays stacked
            return x, (jnp.stack(new_keys), jnp.stack(new_values))
        return x, (tuple(new_keys), tuple(new_values))

    def _stacked_blocks(self):
        """``(graphdef of one block, its state with every leaf stacked [L, ...])``: the scan's input. Stacked here,
        inside the traced step, from the per-layer parameters (one concatenate per leaf, sliced back in the
        backward pass); a subclass storing its blocks stacked returns them as they are
        (``benchmarks/compile_depth.py --layout stacked`` measures the difference)."""
        graphdef, _ = nnx.split(self.blocks[0])  # blocks differ only in `local`, overridden by the scanned flag
        return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in self.blocks])

    def _scan_blocks(self, x, pos, attn_mask, local_mask, kv_in, index, layer_prefixes, *, use_lora, causal):
        """The blocks under one ``lax.scan`` over their stacked parameters: one compiled block whatever the depth.

        The per-layer parameters (``blocks.{i}``, the layout import/export, LoRA and checkpoints address) are
        stacked here, inside the traced step; a layer's sliding window and rotary base are scanned inputs (a flag
        per layer), not Python branches.
        """
        c = self.config
        graphdef, stacked = self._stacked_blocks()
        flags = jnp.asarray(c.sliding_layers)
        mixed = len(set(c.sliding_layers)) > 1
        window = c.sliding_window if all(c.sliding_layers) else None
        stack = lambda t: t if not isinstance(t, (tuple, list)) else jnp.stack(t)  # noqa: E731
        kv = None if kv_in is None else (stack(kv_in[0]), stack(kv_in[1]))
        prefixes = None if layer_prefixes is None else (stack([p[0] for p in layer_prefixes]),
                                                        stack([p[1] for p in layer_prefixes]))

        def body(x, xs):
            state, flag, kv_i, prefix_i = xs
            block = nnx.merge(graphdef, state)
            if mixed:
                mask = jnp.where(flag, local_mask, attn_mask)
            else:
                mask = local_mask if c.sliding_layers[0] else attn_mask
            return block(x, pos, mask, kv_i, index, use_lora=use_lora, prefix_kv=prefix_i,
                         local=flag if mixed else None, causal=causal, window=window)

        x, new_kv = jax.lax.scan(self._remat(body, nnx_module=False), x, (stacked, flags, kv, prefixes))
        if kv_in is None:
            return x, None
        if isinstance(kv_in[0], (tuple, list)):
            return x, (tuple(new_kv[0]), tuple(new_kv[1]))
        return x, new_kv

    def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, prefix_embeds: jax.Array | None = None,
                 return_hidden: bool = False, use_lora: bool = True, cache: KVCache | None = None,
                 layer_prefixes: tuple | None = None, segment_ids: jax.Array | None = None):
        """Run the model.

        Args:
          input_ids: int ``[*lead, T]``; any leading axes (e.g. ``[B, N, T]`` response pairs) are flattened into one
            batch axis internally and restored on the output.
          attention_mask: ``[*lead, T]``, 1/True for real tokens (left or right padding); default all ones.
          positions: optional int ``[*lead, T]`` token positions (e.g. for packing); default from the mask. With a
            prefix, given positions are shifted by P.
          prefix_embeds: optional ``[*lead', P, D]`` embeddings placed before the tokens (after the token and
            position embedding), with mask 1 and positions ``0..P-1``; ``lead'`` may be a leading part of ``lead``
            (e.g. ``[B, P, D]`` for ``[B, N, T]`` inputs: the same prefix for every response). Outputs cover only
            the T token positions.
          return_hidden: return the final-normed hidden states ``[*lead, T, D]`` (compute dtype) instead of logits.
          use_lora: apply LoRA adapters if present; ``False`` gives the base (reference) model.
          cache: a :class:`KVCache` (2-D inputs only): the new tokens are appended at ``cache.index`` and attend to
            every earlier real slot; the call then returns ``(output, new_cache)``.
          layer_prefixes: optional per-layer ``(keys, values)`` ``[B, P, K, h]`` read by every query through a
            separate softmax (a conditioning's deep prefix; see :class:`mojax.models.layers.Attention`). None (the
            default) leaves every family's computation unchanged.
          segment_ids: optional int ``[*lead, T]`` for packed rows (several sequences per row): a token attends only
            to earlier tokens of its own segment, and default positions restart at 0 in each segment. Not with a
            cache or a prefix.
        Returns:
          logits float32 ``[*lead, T, V]`` (or hidden ``[*lead, T, D]``), plus the new cache when one was given.
        """
        c = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim < 2:
            raise ValueError(f"input_ids must be [..., B, T] with at least 2 axes, got shape {input_ids.shape}")
        lead, T = input_ids.shape[:-1], input_ids.shape[-1]
        if cache is not None and len(lead) != 1:
            raise ValueError("a KV cache needs 2-D input_ids [B, T]")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
        ids = input_ids.reshape(-1, T)
        mask = attention_mask.reshape(-1, T).astype(bool)
        B = ids.shape[0]

        P = 0
        if prefix_embeds is not None:
            if prefix_embeds.ndim < 3 or prefix_embeds.shape[-1] != c.d_model:
                raise ValueError(f"prefix_embeds must be [..., P, {c.d_model}], got {prefix_embeds.shape}")
            plead = prefix_embeds.shape[:-2]
            if tuple(lead[: len(plead)]) != tuple(plead):
                raise ValueError(f"prefix_embeds leading axes {plead} must be a leading part of input axes {lead}")
            P = prefix_embeds.shape[-2]
            prefix = prefix_embeds.reshape(plead + (1,) * (len(lead) - len(plead)) + prefix_embeds.shape[-2:])
            prefix = jnp.broadcast_to(prefix, tuple(lead) + prefix_embeds.shape[-2:]).reshape(B, P, c.d_model)
            mask = jnp.concatenate([jnp.ones((B, P), bool), mask], axis=1)

        seg = None
        if segment_ids is not None:
            if cache is not None or P:
                raise ValueError("segment_ids cannot be combined with a KV cache or prefix_embeds")
            if segment_ids.shape != input_ids.shape:
                raise ValueError(f"segment_ids shape {segment_ids.shape} != input_ids shape {input_ids.shape}")
            seg = segment_ids.reshape(-1, T)
        offset = jnp.zeros((B,), jnp.int32) if cache is None else cache.lengths
        if positions is None and seg is not None:  # real tokens before this one in its own segment
            same = (seg[:, :, None] == seg[:, None, :]) & jnp.tril(jnp.ones((T, T), bool))[None] & mask[:, None, :]
            pos = jnp.maximum(jnp.sum(same, axis=-1, dtype=jnp.int32) - 1, 0)
        elif positions is None:
            pos = positions_from_mask(mask, offset)
        else:
            tok_pos = positions.reshape(-1, T).astype(jnp.int32) + P + offset[:, None]
            pos = jnp.concatenate([offset[:, None] + jnp.arange(P, dtype=jnp.int32)[None], tok_pos], axis=1)
        tok_pos = pos[:, P:]

        x = self.embed(ids)
        if c.scale_embeddings:  # Gemma: × √D in the compute dtype (HF casts the factor to the weights' dtype)
            x = x.astype(c.dtype) * jnp.asarray(math.sqrt(c.d_model), c.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(jnp.minimum(tok_pos, c.max_positions - 1))
        if P:
            x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
        x = constrain(x.astype(c.dtype), "batch", "seq", "act_embed")

        L = P + T  # new slots written by this call
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if cache is None:
            key_mask = mask
        else:
            key_mask = jax.lax.dynamic_update_slice_in_dim(cache.key_mask, mask, index, axis=1)
        S = key_mask.shape[1]
        q_idx = index + jnp.arange(L, dtype=jnp.int32)  # slot of each new query
        k_idx = jnp.arange(S, dtype=jnp.int32)
        allowed = k_idx[None, :] <= q_idx[:, None]  # [L, S] causal by slot
        attn_mask = allowed[None] & key_mask[:, None, :]  # [B, L, S]
        if seg is not None:  # packed rows: a token sees only its own segment
            attn_mask = attn_mask & (seg[:, :, None] == seg[:, None, :])
        local_mask = None
        if any(c.sliding_layers):
            window = k_idx[None, :] > q_idx[:, None] - c.sliding_window
            local_mask = attn_mask & window[None]

        if layer_prefixes is not None and len(layer_prefixes) != c.num_layers:
            raise ValueError(f"layer_prefixes must have one (keys, values) per layer ({c.num_layers}), got "
                             f"{len(layer_prefixes)}")
        kv_in = None if cache is None else (cache.keys, cache.values)
        run = self._scan_blocks if self._can_scan() else self._loop_blocks
        x, new_kv = run(x, pos, attn_mask, local_mask, kv_in, index, layer_prefixes, use_lora=use_lora,
                        causal=cache is None)
        x = self.final_norm(x[:, P:])
        if return_hidden:
            out = x.reshape(tuple(lead) + (T, c.d_model))
        else:
            logits = jnp.dot(x, self._output_matrix().astype(c.dtype), preferred_element_type=jnp.float32)
            if c.final_logit_softcap is not None:  # Gemma 2: cap · tanh(logits / cap), in float32
                logits = jnp.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
            logits = constrain(logits, "batch", "seq", "vocab")
            out = logits.reshape(tuple(lead) + (T, c.vocab_size))
        if cache is None:
            return out
        new_cache = KVCache(keys=new_kv[0], values=new_kv[1], key_mask=key_mask, index=index + L,
                            lengths=cache.lengths + jnp.sum(mask, axis=1, dtype=jnp.int32))
        return out, new_cache
