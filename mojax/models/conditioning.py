"""Weight-conditioned policies for COS-DPO behind one interface: HPT, deep HPT, w-mixed LoRA and hyper-LoRA.

A :class:`ConditionedPolicy` wraps a frozen decoder (``backbone``) and takes the objective weights ``w [B, K]`` (and,
for Temperature-COS-DPO, the temperatures, normalised to ``β/‖β‖₁`` here) as inputs of every call. The reference
stays the frozen base: ``policy.backbone(..., use_lora=False)`` (or cached reference log-probs). Which conditioning
is a config field, :attr:`ConditioningConfig.kind` (docs/methods/cos-dpo-conditioning.md):

- ``"hpt"`` — the paper's Hyper Prompt Tuning (COS-DPO §3): prefix embeddings ``M(w) ⊙ E``
  (:class:`mojax.models.hpt.HyperPromptTuning`) run through the frozen backbone; the real tokens read the prefix's
  keys/values at every layer through a separate softmax whose values are scaled by ``tanh(g)`` with the gate ``g``
  (per layer and key/value head) initialised at 0 — so at step 0 the policy *is* π_ref, for any w (the prefix no
  longer shifts every token's attention as a plain prompt does: 0.69 nats per response at this repo's tiny scale).
- ``"deep_hpt"`` — a key/value prefix generated from w at every layer (an MLP of w, P-tuning-v2 style), zero-gated
  likewise.
- ``"mixed_lora"`` — one LoRA adapter per objective, combined by w: ``ΔW(w) = Σ_k w_k·B_k A_k`` (optionally plus a
  shared, w-independent adapter).
- ``"hyper_lora"`` — one adapter set whose per-projection, per-rank scales come from an MLP of (w, temperatures):
  ``ΔW(w) = B·diag(s_l(w))·A``.

The adapter-based kinds are linear in their adapter factors, so a fixed w folds into plain kernels:
:meth:`ConditionedPolicy.merged` returns a plain :class:`~mojax.models.Decoder` (and :func:`export_hf` writes it
with :func:`mojax.models.save_hf`) — one training run, any trade-off exported as a normal checkpoint.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mojax.models.hpt import HPTConfig, HyperPromptTuning, conditioning_vector
from mojax.models.layers import Dense
from mojax.models.lora import LoRAConfig, add_lora, lora_targets, merge_lora
from mojax.sharding import partitioned

__all__ = ["CONDITIONINGS", "ConditioningConfig", "ConditionedPolicy", "ScaledLoRAAdapter", "build_conditioned",
           "export_hf"]

CONDITIONINGS = ("hpt", "deep_hpt", "mixed_lora", "hyper_lora")
PREFIX_KINDS = ("hpt", "deep_hpt")

# The per-row adapter scales of the current ConditionedPolicy call. A context variable rather than a new decoder
# argument: every family's Dense calls its adapter as ``lora(x)``, so the scales reach every projection without
# threading an argument through Decoder → Block → Attention/MLP → Dense. Read at trace time only.
_SCALES: contextvars.ContextVar = contextvars.ContextVar("mojax_conditioning_scales", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditioningConfig:
    """How a :class:`ConditionedPolicy` reads the objective weights.

    Attributes:
      kind: one of :data:`CONDITIONINGS`.
      num_objectives: K, the length of ``w``.
      condition_on_temperature: T-COS-DPO: also read ``β/‖β‖₁`` (not with ``mixed_lora``, which is linear in w).
      num_prefix_tokens: P of the prefix kinds.
      rank: rank of HPT's mask ``M = A·Bᵀ`` (``hpt``).
      hidden_dim: width of the hidden layer of the MLPs of w (``hpt``, ``deep_hpt``, ``hyper_lora``).
      lora: the adapters: per objective for ``mixed_lora`` (K adapters of this rank), the one set of
        ``hyper_lora``; for the prefix kinds an optional plain, w-independent LoRA under the prefix (the paper's
        "HPT on top of LoRA"); None there means the prefix alone.
      shared_adapter: ``mixed_lora``: add one w-independent adapter of the same rank.
      prefix_init_std: std of the deep prefix's keys/values at init (``deep_hpt``; the gate keeps the model exact).
      hyper_init_scale: std (relative to ``1/√hidden_dim``) of the w-dependent part of hyper-LoRA's scales at init.
    """

    kind: str = "mixed_lora"
    num_objectives: int = 2
    condition_on_temperature: bool = False
    num_prefix_tokens: int = 4
    rank: int = 4
    hidden_dim: int = 32
    lora: LoRAConfig | None = LoRAConfig(rank=4, alpha=8.0)
    shared_adapter: bool = False
    prefix_init_std: float = 0.5
    hyper_init_scale: float = 1.0

    def __post_init__(self):
        if self.kind not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.kind!r}; choose from {CONDITIONINGS}")
        for name in ("num_objectives", "num_prefix_tokens", "rank", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ConditioningConfig.{name} must be a positive int, got {value!r}")
        if self.kind in ("mixed_lora", "hyper_lora") and self.lora is None:
            raise ValueError(f"conditioning {self.kind!r} needs a LoRAConfig (lora=...)")
        if self.kind == "mixed_lora" and self.condition_on_temperature:
            raise ValueError("mixed_lora combines adapters linearly in w and cannot read temperatures; use "
                             "hyper_lora or a prefix kind for T-COS-DPO")
        if self.prefix_init_std <= 0 or self.hyper_init_scale < 0:
            raise ValueError("prefix_init_std must be > 0 and hyper_init_scale >= 0")

    @property
    def input_dim(self) -> int:
        """Width of the conditioning vector: K, or 2K with temperatures."""
        return self.num_objectives * (2 if self.condition_on_temperature else 1)


class ScaledLoRAAdapter(nnx.Module):
    """``(α/r)·((x·A) ⊙ s)·B`` on one :class:`~mojax.models.layers.Dense`: a LoRA adapter of total rank R whose
    rank components are scaled per example by ``s [rows, R]``, set by the calling :class:`ConditionedPolicy`.

    ``B = 0`` at init (the policy equals its base for every w). ``slot`` indexes this projection in per-projection
    scales ``[rows, n_slots, R]`` (hyper-LoRA); shared scales ``[rows, R]`` (mixed LoRA) ignore it.
    """

    def __init__(self, dense: Dense, *, rank: int, scale: float, slot: int, rngs: nnx.Rngs):
        in_names = dense.names[: len(dense.in_shape)]
        out_names = dense.names[len(dense.in_shape):]
        fan_in = int(np.prod(dense.in_shape))
        self.n_in = len(dense.in_shape)
        self.scale = scale
        self.slot = slot
        self.dtype = dense.dtype
        self.lora_a = nnx.LoRAParam(partitioned(nnx.initializers.normal(1.0 / math.sqrt(fan_in)), *in_names,
                                                "lora_rank")(rngs.params(), dense.in_shape + (rank,), jnp.float32))
        self.lora_b = nnx.LoRAParam(partitioned(nnx.initializers.zeros_init(), "lora_rank", *out_names)(
            rngs.params(), (rank,) + dense.out_shape, jnp.float32))

    def _scales(self, s: jax.Array) -> jax.Array:
        return s[:, self.slot] if s.ndim == 3 else s

    def __call__(self, x: jax.Array) -> jax.Array:
        s = _SCALES.get()
        if s is None:
            raise RuntimeError("a w-conditioned adapter was called without weights: call the ConditionedPolicy "
                               "(not its backbone with use_lora=True), or merge it at a weight first (merged(w))")
        s = self._scales(s)
        low = jnp.tensordot(x, self.lora_a[...].astype(self.dtype), axes=self.n_in)  # [rows, ..., R]
        if s.shape[0] != low.shape[0]:
            raise ValueError(f"conditioning has {s.shape[0]} rows, the projection's input {low.shape[0]}")
        low = low * s.reshape((s.shape[0],) + (1,) * (low.ndim - 2) + (s.shape[-1],)).astype(low.dtype)
        return jnp.tensordot(low, self.lora_b[...].astype(self.dtype), axes=1) * self.scale

    def delta_at(self, s: jax.Array) -> jax.Array:
        """The kernel update ``(α/r)·(A ⊙ s)·B`` at scales ``s`` (``[R]`` or ``[n_slots, R]``), float32."""
        s = jnp.asarray(s, jnp.float32)
        s = s[self.slot] if s.ndim == 2 else s
        return jnp.tensordot(self.lora_a[...] * s, self.lora_b[...], axes=1) * self.scale

    def delta(self) -> jax.Array:
        """Refused: the update depends on w (merge with :meth:`ConditionedPolicy.merged` first)."""
        raise ValueError("a w-conditioned adapter has no single kernel update; export ConditionedPolicy.merged(w)")


def _mlp_init(hidden: int, scale: float):
    return jax.nn.initializers.normal(scale / math.sqrt(hidden))


class _HyperLoRAScales(nnx.Module):
    """MLP ``c → s [rows, n_slots, r]``: output bias 1 (plain LoRA at init), kernel ``N(0, (scale/√H)²)`` so the
    scales already depend on w at step 0."""

    def __init__(self, config: ConditioningConfig, n_slots: int, rank: int, *, rngs: nnx.Rngs):
        h = config.hidden_dim
        dense = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.hidden = nnx.Linear(config.input_dim, h, kernel_init=dense, rngs=rngs)
        self.out_kernel = nnx.Param(_mlp_init(h, config.hyper_init_scale)(rngs.params(), (h, n_slots, rank)))
        self.out_bias = nnx.Param(jnp.ones((n_slots, rank), jnp.float32))

    def __call__(self, c: jax.Array) -> jax.Array:
        return jnp.einsum("BH,HSR->BSR", jax.nn.gelu(self.hidden(c)), self.out_kernel[...]) + self.out_bias[...]


class _DeepPrefix(nnx.Module):
    """Per-layer keys/values ``E_l + MLP_l(c)`` ``[rows, P, K, h]`` each, and the zero-initialised gates."""

    def __init__(self, config: ConditioningConfig, dc: Any, *, rngs: nnx.Rngs):
        h, p = config.hidden_dim, config.num_prefix_tokens
        shape = (dc.num_layers, p, 2, dc.kv_heads, dc.head_size)
        dense = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.hidden = nnx.Linear(config.input_dim, h, kernel_init=dense, rngs=rngs)
        self.out_kernel = nnx.Param(_mlp_init(h, config.prefix_init_std)(rngs.params(), (h,) + shape))
        self.base = nnx.Param(jax.nn.initializers.normal(config.prefix_init_std)(rngs.params(), shape))
        self.gate = nnx.Param(jnp.zeros((dc.num_layers, dc.kv_heads), jnp.float32))

    def __call__(self, c: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        kv = jnp.einsum("BH,HLPSKh->BLPSKh", jax.nn.gelu(self.hidden(c)), self.out_kernel[...]) + self.base[...]
        gate = jnp.tanh(self.gate[...])
        return [(kv[:, i, :, 0], kv[:, i, :, 1] * gate[i][None, None, :, None]) for i in range(kv.shape[1])]


class _GatedHPT(nnx.Module):
    """The paper's HPT prefix ``M(w) ⊙ E`` plus per-layer, per-KV-head gates (zero at init)."""

    def __init__(self, config: ConditioningConfig, dc: Any, *, rngs: nnx.Rngs):
        hpt = HPTConfig(num_objectives=config.num_objectives, num_prefix_tokens=config.num_prefix_tokens,
                        rank=config.rank, hidden_dim=config.hidden_dim,
                        condition_on_temperature=config.condition_on_temperature,
                        prefix_init_std=dc.initializer_range)
        self.hpt = HyperPromptTuning(hpt, d_model=dc.d_model, rngs=rngs)
        self.gate = nnx.Param(jnp.zeros((dc.num_layers, dc.kv_heads), jnp.float32))

    def __call__(self, c: jax.Array, backbone: Any, use_lora: bool) -> list[tuple[jax.Array, jax.Array]]:
        # The prefix passes through the frozen backbone as in the paper (its own keys/values at every layer): one
        # cached pass over P prefix slots plus one padding token (the cache API needs a token; it is causal after
        # the prefix, so it changes nothing there, and is dropped).
        cfg = self.hpt.config
        prefix = jnp.einsum("BPR,BDR->BPD", *self._factors(c)) * self.hpt.prefix[...]
        rows, p = c.shape[0], cfg.num_prefix_tokens
        cache = backbone.init_cache(rows, p + 1, jnp.float32)
        _, cache = backbone(jnp.zeros((rows, 1), jnp.int32), attention_mask=jnp.zeros((rows, 1), bool),
                            prefix_embeds=prefix, cache=cache, return_hidden=True, use_lora=use_lora)
        gate = jnp.tanh(self.gate[...])
        return [(k[:, :p], v[:, :p] * gate[i][None, None, :, None].astype(v.dtype))
                for i, (k, v) in enumerate(zip(cache.keys, cache.values))]

    def _factors(self, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.hpt
        a = jnp.einsum("BH,HPR->BPR", jax.nn.gelu(h.a_hidden(c)), h.a_kernel[...]) + h.a_bias[...]
        b = jnp.einsum("BH,HDR->BDR", jax.nn.gelu(h.b_hidden(c)), h.b_kernel[...]) + h.b_bias[...]
        return a, b


class ConditionedPolicy(nnx.Module):
    """A decoder conditioned on objective weights (and optionally temperatures) by one of :data:`CONDITIONINGS`.

    Build with :func:`build_conditioned`. Train ``wrt=ConditionedPolicy.trainable`` (the conditioning's parameters
    and every adapter; the base weights stay frozen). ``policy.backbone(..., use_lora=False)`` is the reference.

    Attributes:
      backbone: the wrapped decoder (carrying the adapters of the LoRA kinds).
      conditioner: the parameters that read w (None for ``mixed_lora``, whose adapters are combined by w directly).
      config: the :class:`ConditioningConfig`.
    """

    trainable = nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("conditioner")))

    def __init__(self, backbone: Any, config: ConditioningConfig, *, rngs: nnx.Rngs):
        dc = backbone.config
        self.config = config
        self.backbone = backbone
        self.n_slots = 0
        if config.kind in ("mixed_lora", "hyper_lora"):
            lc = config.lora
            rank = lc.rank * (config.num_objectives + int(config.shared_adapter)) if config.kind == "mixed_lora" \
                else lc.rank
            found = list(lora_targets(backbone, lc.targets))
            if not found:
                raise ValueError(f"no projection named {lc.targets} in the backbone")
            for slot, (path, dense) in enumerate(found):
                if dense.lora is not None:
                    raise ValueError(f"{'/'.join(map(str, path))} already has a LoRA adapter")
                dense.lora = ScaledLoRAAdapter(dense, rank=rank, scale=lc.scale, slot=slot, rngs=rngs)
            self.n_slots = len(found)
        elif config.lora is not None:
            add_lora(backbone, config.lora, rngs=rngs)
        if config.kind == "hpt":
            self.conditioner = _GatedHPT(config, dc, rngs=rngs)
        elif config.kind == "deep_hpt":
            self.conditioner = _DeepPrefix(config, dc, rngs=rngs)
        elif config.kind == "hyper_lora":
            self.conditioner = _HyperLoRAScales(config, self.n_slots, config.lora.rank, rngs=rngs)
        else:
            self.conditioner = None

    def _vector(self, weights, temperatures, rows: int) -> jax.Array:
        cfg = self.config
        c = conditioning_vector(weights, temperatures, num_objectives=cfg.num_objectives,
                                condition_on_temperature=cfg.condition_on_temperature)
        if rows % c.shape[0]:
            raise ValueError(f"weights batch {c.shape[0]} does not divide the {rows} input rows")
        return jnp.repeat(c, rows // c.shape[0], axis=0)  # [B, ..., T] inputs: w shared by the middle axes

    def scales(self, c: jax.Array) -> jax.Array:
        """Adapter scales of the LoRA kinds for conditioning vectors ``c [rows, C]``: ``[rows, R]`` (mixed) or
        ``[rows, n_slots, r]`` (hyper)."""
        cfg = self.config
        if cfg.kind == "hyper_lora":
            return self.conditioner(c)
        s = jnp.repeat(c, cfg.lora.rank, axis=-1)  # w_k on the k-th adapter's r rank components
        if cfg.shared_adapter:
            s = jnp.concatenate([s, jnp.ones((c.shape[0], cfg.lora.rank), s.dtype)], axis=-1)
        return s

    def __call__(self, input_ids: jax.Array, *, weights: jax.Array, temperatures: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 return_hidden: bool = False, use_lora: bool = True, cache: Any = None,
                 prefix_embeds: jax.Array | None = None):
        """Backbone outputs at weights ``w``.

        Args:
          input_ids: ``[B, ..., T]`` tokens (``w`` is shared by the middle axes, e.g. the N responses of a list).
          weights: ``[B, K]``; temperatures: ``[B, K]`` (T-COS-DPO), normalised to ``β/‖β‖₁`` here.
          attention_mask, positions, return_hidden, cache, prefix_embeds: as :class:`~mojax.models.Decoder` takes.
          use_lora: apply the adapters (``False`` with a prefix kind keeps the prefix on the base weights).
        Returns:
          logits or hidden states (and the new cache when one is given), as the backbone returns them.
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim < 2:
            raise ValueError(f"input_ids must be [B, ..., T], got shape {input_ids.shape}")
        rows = int(np.prod(input_ids.shape[:-1]))
        c = self._vector(weights, temperatures, rows)
        kw = dict(attention_mask=attention_mask, positions=positions, return_hidden=return_hidden,
                  use_lora=use_lora, prefix_embeds=prefix_embeds)
        if cache is not None:
            kw["cache"] = cache
        kind = self.config.kind
        if kind == "hpt":
            return self.backbone(input_ids, layer_prefixes=self.conditioner(c, self.backbone, use_lora), **kw)
        if kind == "deep_hpt":
            return self.backbone(input_ids, layer_prefixes=self.conditioner(c), **kw)
        token = _SCALES.set(self.scales(c))
        try:
            return self.backbone(input_ids, **kw)
        finally:
            _SCALES.reset(token)

    def unembedding(self) -> jax.Array:
        """The backbone's unembedding ``[D, V]`` (for log-probs from hidden states)."""
        return self.backbone.unembedding()

    def merged(self, weights: Any, temperatures: Any = None) -> nnx.Module:
        """A plain decoder (a copy; this policy is unchanged) with the adapters at ``w`` folded into its kernels.

        Only the adapter kinds (and a prefix kind's plain LoRA has no w to fold: a prefix cannot be merged).
        ``weights``: ``[K]``; ``temperatures``: ``[K]`` for T-COS-DPO.
        """
        if self.config.kind in PREFIX_KINDS:
            raise ValueError(f"conditioning {self.config.kind!r} is a prefix: it cannot be merged into plain weights "
                             "(use at(w) to run it at a fixed weight)")
        w = jnp.asarray(weights, jnp.float32).reshape(1, -1)
        t = None if temperatures is None else jnp.asarray(temperatures, jnp.float32).reshape(1, -1)
        s = self.scales(conditioning_vector(w, t, num_objectives=self.config.num_objectives,
                                            condition_on_temperature=self.config.condition_on_temperature))[0]
        graphdef, state = nnx.split(self.backbone)
        model = nnx.merge(graphdef, jax.tree.map(lambda x: jnp.array(x, copy=True), state))
        for _, dense in lora_targets(model):
            if isinstance(dense.lora, ScaledLoRAAdapter):
                dense.kernel[...] = dense.kernel[...] + dense.lora.delta_at(s)
                dense.lora = None
        return merge_lora(model)

    def at(self, weights: Any, temperatures: Any = None) -> nnx.Module:
        """This policy as a plain LM at one weight (for :func:`mojax.models.generate` and log-prob passes): the
        merged decoder for the adapter kinds, a pinned wrapper for the prefix kinds."""
        if self.config.kind not in PREFIX_KINDS:
            return self.merged(weights, temperatures)
        return _Pinned(self, weights, temperatures)


class _Pinned(nnx.Module):
    """A prefix-kind :class:`ConditionedPolicy` pinned to one weight, with the decoder's call and cache API."""

    def __init__(self, policy: ConditionedPolicy, weights: Any, temperatures: Any = None):
        self.policy = policy
        self.config = policy.backbone.config
        self.weights = nnx.Variable(jnp.asarray(weights, jnp.float32).reshape(1, -1))
        self.temperatures = None if temperatures is None else nnx.Variable(
            jnp.asarray(temperatures, jnp.float32).reshape(1, -1))

    def __call__(self, input_ids, **kw):
        rows = int(np.prod(jnp.shape(input_ids)[:-1]))
        w = jnp.broadcast_to(self.weights[...], (rows, self.weights.shape[-1]))
        t = None if self.temperatures is None else jnp.broadcast_to(self.temperatures[...], w.shape)
        return self.policy(input_ids, weights=w, temperatures=t, **kw)

    def init_cache(self, *args, **kw):
        """The backbone's empty KV cache."""
        return self.policy.backbone.init_cache(*args, **kw)

    def unembedding(self) -> jax.Array:
        """The backbone's unembedding."""
        return self.policy.unembedding()


def build_conditioned(backbone: Any, config: ConditioningConfig, *, rngs: nnx.Rngs | int = 0) -> ConditionedPolicy:
    """Wrap ``backbone`` (a :class:`~mojax.models.Decoder`, changed in place: adapters are attached to it; pass a
    copy to keep the original) in the conditioning of ``config.kind``; at init the policy equals the backbone for
    every w (zero gates, zero adapter ``B``)."""
    rngs = nnx.Rngs(rngs) if isinstance(rngs, int) else rngs
    return ConditionedPolicy(backbone, config, rngs=rngs)


def export_hf(policy: ConditionedPolicy, weights: Any, path: Any, *, temperatures: Any = None, **kw) -> None:
    """Write the policy at ``weights`` as a plain Hugging Face checkpoint (:func:`mojax.models.save_hf` of
    :meth:`ConditionedPolicy.merged`); ``kw`` go to ``save_hf``."""
    from mojax.models.hf import save_hf  # hf imports lora lazily; a late import keeps this module light

    save_hf(policy.merged(weights, temperatures), path, **kw)
