"""The one shared toolkit of the decoder models: projections (with optional LoRA), norms, rotary embedding,
grouped-query attention with an optional KV cache, gated and ungated MLPs, and the transformer block.

Every parameter is created through :func:`mojax.sharding.partitioned` with logical axis names; key activations are
constrained with :func:`mojax.sharding.constrain`. Shapes: B batch, T new tokens, S key slots, D width, H query
heads, K key/value heads, G = H / K heads per group, h head width, F MLP width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mojax.models.config import DecoderConfig
from mojax.sharding import constrain, partitioned

_NEG = -1e30  # finite "minus infinity": fully masked rows (padding queries) give a uniform softmax, never NaN


def _f32_init(init):
    """``init`` drawn in float32 and then cast to the requested dtype: a bfloat16 model built from a seed holds the
    float32 model's weights rounded (the same model at another storage precision), not other random numbers."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape, jnp.float32).astype(dtype)


def activation_fn(name: str):
    """The MLP non-linearity for a Hugging Face ``hidden_act`` name."""
    if name == "silu":
        return jax.nn.silu
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unknown activation {name!r}")


class Dense(nnx.Module):
    """``y = x · W (+ b)`` contracting the trailing ``len(in_shape)`` axes of ``x`` with a kernel
    ``[*in_shape, *out_shape]``; an optional LoRA adapter (set by :func:`mojax.models.lora.add_lora`) adds
    ``(α/r) · (x·A)·B``, skipped when ``use_lora=False`` so one set of weights serves policy and reference.

    Args:
      in_shape, out_shape: trailing input dims contracted and output dims produced.
      names: logical axis names of the kernel, ``len(in_shape) + len(out_shape)`` of them.
      use_bias: add a bias ``[*out_shape]`` (named by the output names).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, names: Sequence[str | None],
                 use_bias: bool = False, std: float = 0.02, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if len(names) != len(self.in_shape) + len(self.out_shape):
            raise ValueError(f"need {len(self.in_shape) + len(self.out_shape)} logical names, got {names}")
        self.names = tuple(names)
        self.dtype = dtype
        self.kernel = nnx.Param(partitioned(_f32_init(nnx.initializers.normal(std)), *names)(
            rngs.params(), self.in_shape + self.out_shape, param_dtype))
        out_names = self.names[len(self.in_shape):]
        self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), *out_names)(
            rngs.params(), self.out_shape, param_dtype)) if use_bias else None
        self.lora = nnx.data(None)

    def __call__(self, x: jax.Array, *, use_lora: bool = True) -> jax.Array:
        n = len(self.in_shape)
        x = x.astype(self.dtype)
        y = jnp.tensordot(x, self.kernel[...].astype(self.dtype), axes=n)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if use_lora and self.lora is not None:
            y = y + self.lora(x).astype(self.dtype)
        return y


class Embed(nnx.Module):
    """A lookup table ``[num, D]`` stored in ``param_dtype``; ``names`` are its two logical axis names."""

    def __init__(self, num: int, features: int, *, names: tuple[str | None, str | None], std: float = 0.02,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.embedding = nnx.Param(partitioned(_f32_init(nnx.initializers.normal(std)), *names)(
            rngs.params(), (num, features), param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class Norm(nnx.Module):
    """RMSNorm (Zhang & Sennrich 2019: ``x / sqrt(mean x² + ε) · g``), LayerNorm (``(x-μ)/sqrt(σ²+ε) · g + b``)
    or Gemma's RMSNorm (``x / sqrt(mean x² + ε) · (1 + g)``, gains initialised at 0), over the last axis.

    Statistics in float32 whatever the compute dtype; as in Hugging Face Llama, the RMS-normalised input is cast
    back to the compute dtype before the gain is applied; Gemma's applies ``1 + g`` in float32 and casts after,
    as Hugging Face's Gemma does.
    """

    def __init__(self, features: int, *, kind: str, eps: float, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.kind, self.eps, self.dtype = kind, eps, dtype
        init = nnx.initializers.zeros_init() if kind == "gemma_rmsnorm" else nnx.initializers.ones_init()
        self.scale = nnx.Param(partitioned(init, "norm")(rngs.params(), (features,), param_dtype))
        self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), "norm")(
            rngs.params(), (features,), param_dtype)) if kind == "layernorm" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            return self.scale[...].astype(self.dtype) * y.astype(self.dtype)
        if self.kind == "gemma_rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
            return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32) \
            + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq, attention_scaling: float) -> jax.Array:
    """Rotary embedding, rotate-half layout, on the first ``2 * len(inv_freq)`` dims of each head.

    .. math:: x' = x \\cos(p\\,\\omega) + \\mathrm{rot}(x) \\sin(p\\,\\omega),\\quad
              \\mathrm{rot}([x_1, x_2]) = [-x_2, x_1]

    Args:
      x: ``[B, T, heads, h]``.
      positions: ``[B, T]`` integer positions.
      inv_freq: ``[R/2]`` inverse frequencies; ``attention_scaling`` multiplies cos and sin (YaRN).
    Returns:
      ``[B, T, heads, h]`` in ``x``'s dtype.
    """
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    rot = 2 * inv_freq.shape[0]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, R/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, R]
    cos = (jnp.cos(emb) * attention_scaling).astype(x.dtype)
    sin = (jnp.sin(emb) * attention_scaling).astype(x.dtype)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


ATTENTION_IMPLS = ("einsum", "fused", "auto")


def attention_impl(config: DecoderConfig) -> str:
    """The implementation a config's attention runs: ``"einsum"`` (the reference) or ``"fused"``
    (:func:`jax.nn.dot_product_attention`). ``"auto"`` is fused unless the family soft-caps its attention scores
    (Gemma 2), which the fused kernel cannot express."""
    if config.attention_impl == "auto":
        return "einsum" if config.attn_logit_softcap is not None else "fused"
    return config.attention_impl


def fused_backend(dtype) -> str | None:
    """The ``implementation=`` given to :func:`jax.nn.dot_product_attention`: cuDNN flash attention on a GPU in
    bfloat16/float16 (cuDNN's only dtypes), else ``None`` (JAX's XLA path: CPU, TPU, float32)."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else None


def _scale(c: DecoderConfig) -> float:
    h = c.head_size
    return 1.0 / math.sqrt(h) if c.query_pre_attn_scalar is None else c.query_pre_attn_scalar ** -0.5


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, config: DecoderConfig,
                   causal: bool = False, window: int | None = None,
                   prefix_kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """``softmax(scale · q·kᵀ [soft-capped] masked) · v`` with grouped-query heads, by the config's
    :func:`attention_impl`.

    Args:
      q: ``[B, T, H, h]``; k, v: ``[B, S, K, h]`` (same dtype as ``q``).
      mask: bool ``[B, T, S]``, True = may attend; it alone defines the result. A fully masked row (a padding
        query) gives the uniform average of ``v`` in both implementations.
      causal, window: static hints for the fused kernel that ``mask`` already includes the top-left-aligned causal
        mask (``k ≤ q``, no KV cache) and the sliding window ``k > q - window``; they let cuDNN skip masked blocks.
      prefix_kv: optional ``(keys, values)`` ``[B, P, K, h]`` attended through a separate, unmasked softmax whose
        output is added (a conditioning's per-layer prefix).
    Returns:
      ``[B, T, H, h]`` in ``v``'s dtype.
    """
    c = config
    B, T, H, h = q.shape
    K = k.shape[2]
    G = H // K
    scale = _scale(c)
    if attention_impl(c) == "fused":
        impl = fused_backend(q.dtype)
        win = (window - 1, 0) if (causal and window is not None) else None
        out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, is_causal=causal,
                                           local_window_size=win, implementation=impl)
        if prefix_kv is not None:
            pk, pv = prefix_kv
            out = out + jax.nn.dot_product_attention(q, pk.astype(q.dtype), pv.astype(q.dtype), scale=scale,
                                                     implementation=impl).astype(out.dtype)
        return out.astype(v.dtype)
    qg = q.reshape(B, T, K, G, h)
    scores = jnp.einsum("BTKGh,BSKh->BKGTS", qg, k, preferred_element_type=jnp.float32)
    scores = scores * scale if c.query_pre_attn_scalar is not None else scores / math.sqrt(h)
    if c.attn_logit_softcap is not None:
        scores = jnp.tanh(scores / c.attn_logit_softcap) * c.attn_logit_softcap
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKh->BTKGh", probs, v)
    if prefix_kv is not None:  # separate softmax: the prefix's share never dilutes the tokens' attention
        pk, pv = prefix_kv
        ps = jnp.einsum("BTKGh,BPKh->BKGTP", qg, pk.astype(qg.dtype), preferred_element_type=jnp.float32)
        ps = ps / math.sqrt(h) if c.query_pre_attn_scalar is None else ps * c.query_pre_attn_scalar ** -0.5
        out = out + jnp.einsum("BKGTP,BPKh->BTKGh", jax.nn.softmax(ps, axis=-1).astype(v.dtype),
                               pv.astype(v.dtype))
    return out.reshape(B, T, H, h)


class Attention(nnx.Module):
    """Multi-head attention with grouped-query heads (K key/value heads shared by G = H/K query heads), rotary
    positions and an optional KV cache.

    Projections ``q_proj [D,H,h]``, ``k_proj``/``v_proj [D,K,h]``, ``o_proj [H,h,D]``; optional per-head norms
    ``q_norm``/``k_norm [h]`` before the rotary embedding (Qwen3, Gemma 3); scores ``softmax(q·kᵀ/√h + mask)`` in
    float32, with ``query_pre_attn_scalar^-1/2`` instead of ``1/√h`` and ``cap · tanh(s / cap)`` soft-capping when
    configured (Gemma 2). ``local``: a sliding-window layer (its rotary base may differ: Gemma 3).
    """

    def __init__(self, config: DecoderConfig, *, local: bool = False, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.local = local
        H, K, h, D = c.num_heads, c.kv_heads, c.head_size, c.d_model
        kw = dict(std=c.initializer_range, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.q_proj = Dense((D,), (H, h), names=("embed", "heads", "head_dim"), use_bias=c.qkv_bias, **kw)
        self.k_proj = Dense((D,), (K, h), names=("embed", "kv_heads", "head_dim"), use_bias=c.qkv_bias, **kw)
        self.v_proj = Dense((D,), (K, h), names=("embed", "kv_heads", "head_dim"), use_bias=c.qkv_bias, **kw)
        self.o_proj = Dense((H, h), (D,), names=("heads", "head_dim", "embed"), use_bias=c.attn_out_bias, **kw)
        norm = dict(kind=c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.q_norm = Norm(h, **norm) if c.qk_norm else None
        self.k_norm = Norm(h, **norm) if c.qk_norm else None

    def __call__(self, x: jax.Array, *, positions: jax.Array, mask: jax.Array,
                 kv_cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | None = None,
                 use_lora: bool = True, prefix_kv: tuple[jax.Array, jax.Array] | None = None,
                 local: jax.Array | None = None, causal: bool = False, window: int | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Args:
          x: ``[B, T, D]``; positions ``[B, T]``; mask: bool ``[B, T, S]`` (True = may attend): the whole mask
            (causality, padding, window, segments), so the einsum reference needs nothing else.
          local: a traced bool scalar overriding ``self.local`` for the rotary base (scanned layers, where a Python
            attribute cannot vary per layer); ``None``: ``self.local``.
          causal, window: static hints for the fused kernel that ``mask`` already contains the top-left-aligned
            causal mask (no KV cache) and, when ``window`` is set, the sliding window of that size, so a kernel
            (cuDNN) can skip masked blocks; they never change the result.
          kv_cache: ``(keys, values)`` each ``[B, S, K, h]``; the new keys/values are written at slot
            ``cache_index`` and attention runs over all S slots. Without a cache, S = T.
          prefix_kv: optional ``(keys, values)`` each ``[B, P, K, h]`` (a conditioning's per-layer prefix,
            :mod:`mojax.models.conditioning`): every query also attends to them through *their own* softmax, whose
            output is added; values scaled by a gate of 0 leave the layer exactly unchanged (zero-init gating).
        Returns:
          ``([B, T, D], updated (keys, values) or None)``.
        """
        c = self.config
        B, T, _ = x.shape
        q = self.q_proj(x, use_lora=use_lora)  # [B, T, H, h]
        k = self.k_proj(x, use_lora=use_lora)  # [B, T, K, h]
        v = self.v_proj(x, use_lora=use_lora)
        q = constrain(q, "batch", "seq", "heads", "head_dim")
        k = constrain(k, "batch", "seq", "kv_heads", "head_dim")
        v = constrain(v, "batch", "seq", "kv_heads", "head_dim")
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if c.positional == "rope":
            q, k = self._rope(q, k, positions, local)
        new_cache = None
        if kv_cache is not None:
            ck, cv = kv_cache
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            new_cache = (ck, cv)
            k, v = ck.astype(q.dtype), cv.astype(q.dtype)
        out = attention_core(q, k, v, mask, config=c, causal=causal and kv_cache is None, window=window,
                             prefix_kv=prefix_kv)
        out = constrain(out, "batch", "seq", "heads", "head_dim")
        return self.o_proj(out, use_lora=use_lora), new_cache

    def _rope(self, q, k, positions, local):
        c = self.config
        if local is None or c.rope_local_theta is None:  # the local and global rotary are the same unless set
            inv_freq, scaling = c.rope_inv_freq(local=self.local if local is None else False)
            return apply_rope(q, positions, inv_freq, scaling), apply_rope(k, positions, inv_freq, scaling)
        rotated = []
        for is_local in (False, True):  # both bases, then a per-layer select (a traced flag: no Python branch)
            inv_freq, scaling = c.rope_inv_freq(local=is_local)
            rotated.append((apply_rope(q, positions, inv_freq, scaling), apply_rope(k, positions, inv_freq, scaling)))
        (qg, kg), (ql, kl) = rotated
        return jnp.where(local, ql, qg), jnp.where(local, kl, kg)


class MLP(nnx.Module):
    """``down(act(gate x) ⊙ up x)`` when gated (SwiGLU, Shazeer 2020), else ``down(act(up x))``."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(std=c.initializer_range, dtype=c.dtype, param_dtype=c.param_dtype, use_bias=c.mlp_bias, rngs=rngs)
        self.gated = c.gated_mlp
        self.act = c.activation
        self.gate_proj = Dense((c.d_model,), (c.mlp_dim,), names=("embed", "mlp"), **kw) if c.gated_mlp else None
        self.up_proj = Dense((c.d_model,), (c.mlp_dim,), names=("embed", "mlp"), **kw)
        self.down_proj = Dense((c.mlp_dim,), (c.d_model,), names=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, *, use_lora: bool = True) -> jax.Array:
        act = activation_fn(self.act)
        up = self.up_proj(x, use_lora=use_lora)
        hidden = act(self.gate_proj(x, use_lora=use_lora)) * up if self.gated else act(up)
        hidden = constrain(hidden, "batch", "seq", "mlp")
        return self.down_proj(hidden, use_lora=use_lora)


class Block(nnx.Module):
    """A pre-norm transformer block: sequential ``x += attn(n1 x); x += mlp(n2 x)`` or, with
    ``parallel_residual``, ``x += attn(n1 x) + mlp(n2 x)``; with ``sandwich_norms`` each branch's output is
    normalised too before its add (``post_attn_norm``, ``post_mlp_norm``: Gemma 2/3)."""

    def __init__(self, config: DecoderConfig, *, local: bool = False, rngs: nnx.Rngs):
        c = config
        self.parallel = c.parallel_residual
        norm = dict(kind=c.norm, eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.attn_norm = Norm(c.d_model, **norm)
        self.attn = Attention(c, local=local, rngs=rngs)
        self.post_attn_norm = Norm(c.d_model, **norm) if c.sandwich_norms else None
        self.mlp_norm = Norm(c.d_model, **norm)
        self.mlp = MLP(c, rngs=rngs)
        self.post_mlp_norm = Norm(c.d_model, **norm) if c.sandwich_norms else None

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 kv_cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | None = None,
                 *, use_lora: bool = True, prefix_kv: tuple[jax.Array, jax.Array] | None = None,
                 local: jax.Array | None = None, causal: bool = False, window: int | None = None):
        """One block; the arguments are :class:`Attention`'s. Returns ``(x [B, T, D], new (keys, values) or None)``."""
        a, new_cache = self.attn(self.attn_norm(x), positions=positions, mask=mask, kv_cache=kv_cache,
                                 cache_index=cache_index, use_lora=use_lora, prefix_kv=prefix_kv, local=local,
                                 causal=causal, window=window)
        if self.post_attn_norm is not None:
            a = self.post_attn_norm(a)
        h = x if self.parallel else x + a  # the MLP reads the block input (parallel) or the attention's sum
        m = self.mlp(self.mlp_norm(h), use_lora=use_lora)
        if self.post_mlp_norm is not None:
            m = self.post_mlp_norm(m)
        x = x + a + m if self.parallel else h + m
        return constrain(x, "batch", "seq", "act_embed"), new_cache
