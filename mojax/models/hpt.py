"""Hyper Prompt Tuning (HPT): conditioning a frozen decoder on a preference-weight vector through a prefix.

COS-DPO (Ren et al., "COS-DPO: conditioned one-shot multi-objective fine-tuning", §3 and Fig. 4; docs/methods/cos-dpo.md).
A weight vector ``w`` on the simplex (and, for Temperature-COS-DPO, the temperature direction ``β/‖β‖₁``) is mapped
by two small MLPs to ``A(w) ∈ R^{P×r}`` and ``B(w) ∈ R^{D×r}``; their product is a mask ``M(w) = A(w)·B(w)ᵀ`` that
multiplies entrywise a trainable prefix block ``E ∈ R^{P×D}``. The result ``M(w) ⊙ E`` is handed to the backbone as
``prefix_embeds``: the backbone prepends it to its input embeddings and returns outputs at real token positions only.
The backbone itself is never rewritten: :class:`ConditionedLM` wraps it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mojax.sharding import partitioned

__all__ = ["HPTConfig", "HyperPromptTuning", "ConditionedLM", "conditioning_vector"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HPTConfig:
    """Configuration of :class:`HyperPromptTuning`.

    Attributes:
      num_objectives: K, the length of the weight vector ``w``.
      num_prefix_tokens: P, the number of virtual prefix tokens.
      rank: r, the inner dimension of the mask ``M = A·Bᵀ`` (so ``M`` has rank ≤ r).
      hidden_dim: width of the hidden layer of each of the two MLPs (``w → A`` and ``w → B``).
      condition_on_temperature: Temperature-COS-DPO (eqs. 15–16): also condition on ``β/‖β‖₁`` (input width 2K).
      prefix_init_std: standard deviation of the prefix block ``E`` at init. 0.02 is the usual token-embedding init
        of GPT-2-style models (``initializer_range``), so the prefix starts at the scale of a real token embedding.
      mask_init_scale: scale of the ``w``-dependent part of ``A`` and ``B`` at init, relative to their constant
        part (see :class:`HyperPromptTuning` for the init).
    """

    num_objectives: int
    num_prefix_tokens: int = 8
    rank: int = 4
    hidden_dim: int = 64
    condition_on_temperature: bool = False
    prefix_init_std: float = 0.02
    mask_init_scale: float = 0.1

    def __post_init__(self):
        for name in ("num_objectives", "num_prefix_tokens", "rank", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HPTConfig.{name} must be a positive int, got {value!r}")
        if self.prefix_init_std <= 0 or self.mask_init_scale < 0:
            raise ValueError("HPTConfig.prefix_init_std must be > 0 and mask_init_scale >= 0, got "
                             f"{self.prefix_init_std} and {self.mask_init_scale}")

    @classmethod
    def tiny(cls, num_objectives: int = 2) -> HPTConfig:
        """A 2-token, rank-2 preset for tests."""
        return cls(num_objectives=num_objectives, num_prefix_tokens=2, rank=2, hidden_dim=8)

    @property
    def input_dim(self) -> int:
        """Width of the conditioning vector fed to the MLPs: K, or 2K with temperature conditioning."""
        return self.num_objectives * (2 if self.condition_on_temperature else 1)


def conditioning_vector(weights: jax.Array, temperatures: jax.Array | None, *, num_objectives: int,
                        condition_on_temperature: bool) -> jax.Array:
    """The vector HPT (and a conditioned ranker) reads: ``w`` or ``[w, β/‖β‖₁]``.

    By COS-DPO Prop. 3.1 the losses depend on the parameters only through ``β·(f_θ − f_ref)``, so only the direction
    of β carries information the model must learn; its scale is applied afterwards (linear transformation).

    Args:
      weights: ``[B, K]`` objective weights (normally on the simplex; not renormalised here).
      temperatures: ``[B, K]`` positive temperatures β, required iff ``condition_on_temperature``.
    Returns:
      ``[B, K]`` or ``[B, 2K]``, float32.
    Raises:
      ValueError: on a shape mismatch, or temperatures given/missing against ``condition_on_temperature``.
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 2 or weights.shape[-1] != num_objectives:
        raise ValueError(f"weights must have shape [B, {num_objectives}], got {weights.shape}")
    weights = weights.astype(jnp.float32)
    if not condition_on_temperature:
        if temperatures is not None:
            raise ValueError("temperatures were given but condition_on_temperature=False; set it in the config "
                             "(Temperature-COS-DPO) or drop the argument")
        return weights
    if temperatures is None:
        raise ValueError("condition_on_temperature=True needs temperatures [B, K]")
    temperatures = jnp.asarray(temperatures, jnp.float32)
    if temperatures.shape != weights.shape:
        raise ValueError(f"temperatures must have the shape of weights {weights.shape}, got {temperatures.shape}")
    # ‖β‖₁ is clamped at the smallest normal float so an all-zero β gives 0 rather than NaN.
    l1 = jnp.maximum(jnp.sum(jnp.abs(temperatures), axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.concatenate([weights, temperatures / l1], axis=-1)


class HyperPromptTuning(nnx.Module):
    """Maps weights ``w ∈ R^K`` (and optionally ``β/‖β‖₁``) to a prefix block ``M(w) ⊙ E ∈ R^{P×D}``.

    .. math::
        A(w) = W_A^{(2)} \\cdot \\mathrm{gelu}(W_A^{(1)} c + b_A^{(1)}) + b_A^{(2)} \\in R^{P\\times r},\\quad
        B(w) = (\\text{same form}) \\in R^{D\\times r},\\quad
        \\text{prefix} = (A(w) B(w)^\\top) \\odot E

    with ``c = w`` (W-COS-DPO) or ``c = [w, β/‖β‖₁]`` (T-COS-DPO).

    Init (why): if ``A`` or ``B`` started at zero, ``M = 0`` and every gradient (to E, A and B) would vanish; and a
    prefix far larger than token embeddings would derail the frozen backbone at step 0. So the output biases of both
    MLPs start at the constant ``1/√r`` — making ``M`` ≈ the all-ones matrix, i.e. the prefix starts as a plain
    prompt-tuning block ``E`` — and the output kernels start at ``N(0, (mask_init_scale/√hidden)²)`` so ``M`` already
    depends (weakly, smoothly) on ``w``; ``E ~ N(0, prefix_init_std²)`` sits at token-embedding scale. Then
    ``∂prefix/∂E = M ≈ 1``, ``∂M/∂A = B ≠ 0`` and ``∂M/∂B = A ≠ 0``: small, but every parameter gets gradient.

    Args:
      config: :class:`HPTConfig`.
      d_model: D, the backbone's embedding width.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, config: HPTConfig, *, d_model: int, rngs: nnx.Rngs):
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.config = config
        self.d_model = d_model
        c, h, p, r = config.input_dim, config.hidden_dim, config.num_prefix_tokens, config.rank
        # LeCun variance with a plain normal (a truncated normal compiles slowly, per shape, on CPU).
        dense = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        zeros = jax.nn.initializers.zeros
        out_kernel = jax.nn.initializers.normal(config.mask_init_scale / math.sqrt(h))
        out_bias = jax.nn.initializers.constant(1.0 / math.sqrt(r))
        # Two separate MLPs (the paper's "simple trainable MLPs"), one per factor.
        self.a_hidden = nnx.Linear(c, h, kernel_init=partitioned(dense, "objectives", None),
                                   bias_init=partitioned(zeros, None), rngs=rngs)
        self.b_hidden = nnx.Linear(c, h, kernel_init=partitioned(dense, "objectives", None),
                                   bias_init=partitioned(zeros, None), rngs=rngs)
        self.a_kernel = nnx.Param(partitioned(out_kernel, None, "prefix", "lora_rank")(rngs.params(), (h, p, r)))
        self.a_bias = nnx.Param(partitioned(out_bias, "prefix", "lora_rank")(rngs.params(), (p, r)))
        self.b_kernel = nnx.Param(partitioned(out_kernel, None, "embed", "lora_rank")(rngs.params(), (h, d_model, r)))
        self.b_bias = nnx.Param(partitioned(out_bias, "embed", "lora_rank")(rngs.params(), (d_model, r)))
        self.prefix = nnx.Param(partitioned(jax.nn.initializers.normal(config.prefix_init_std), "prefix", "embed")(
            rngs.params(), (p, d_model)))

    def factors(self, weights: jax.Array, temperatures: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The two factors ``A(w)`` ``[B, P, r]`` and ``B(w)`` ``[B, D, r]`` of the mask."""
        cfg = self.config
        cond = conditioning_vector(weights, temperatures, num_objectives=cfg.num_objectives,
                                   condition_on_temperature=cfg.condition_on_temperature)
        a = jnp.einsum("BH,HPR->BPR", jax.nn.gelu(self.a_hidden(cond)), self.a_kernel[...]) + self.a_bias[...]
        b = jnp.einsum("BH,HDR->BDR", jax.nn.gelu(self.b_hidden(cond)), self.b_kernel[...]) + self.b_bias[...]
        return a, b

    def mask(self, weights: jax.Array, temperatures: jax.Array | None = None) -> jax.Array:
        """The mask ``M(w) = A(w)·B(w)ᵀ``, ``[B, P, D]``."""
        a, b = self.factors(weights, temperatures)
        return jnp.einsum("BPR,BDR->BPD", a, b)

    def __call__(self, weights: jax.Array, temperatures: jax.Array | None = None) -> jax.Array:
        """Prefix embeddings ``M(w) ⊙ E``.

        Args:
          weights: ``[B, K]`` objective weights.
          temperatures: ``[B, K]`` temperatures β (only with ``condition_on_temperature``).
        Returns:
          ``prefix_embeds`` ``[B, P, D]`` float32, to pass to a backbone as ``prefix_embeds=``.
        """
        return self.mask(weights, temperatures) * self.prefix[...]


class ConditionedLM(nnx.Module):
    """A backbone LM conditioned on objective weights through Hyper Prompt Tuning (COS-DPO §3), *ungated*: the
    prefix is prepended to the input, so the model differs from π_ref already at step 0. The zero-gated HPT (exact
    at init) and the other conditionings are :class:`mojax.models.conditioning.ConditionedPolicy`
    (docs/methods/cos-dpo-conditioning.md).

    A wrapper, not a fork: ``self.backbone`` is the unchanged decoder (its own LoRA adapters, if any, stay inside
    it) and ``self.hpt`` holds every conditioning parameter. For W/T-COS-DPO (paper: HPT on top of LoRA) train
    ``ConditionedLM.trainable`` = ``nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("hpt")))``;
    ``ConditionedLM.hpt_only`` selects the HPT parameters alone. The frozen base weights are then never touched, and
    ``use_lora=False`` with ``weights`` still gives a conditioned model on the base weights — for the *reference*
    policy call the backbone directly (``model.backbone(ids, use_lora=False)``), with no prefix.

    Args:
      backbone: a module with ``__call__(input_ids, *, attention_mask, positions, prefix_embeds, return_hidden,
        use_lora)`` that returns outputs at real token positions only (``mojax.models.Decoder``), and
        ``unembedding()``.
      hpt: a :class:`HyperPromptTuning` whose ``d_model`` equals the backbone's width.
    """

    trainable = nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("hpt")))
    hpt_only = nnx.All(nnx.Param, nnx.PathContains("hpt"))

    def __init__(self, backbone: Any, hpt: HyperPromptTuning):
        d_model = getattr(getattr(backbone, "config", None), "d_model", None)
        if d_model is not None and d_model != hpt.d_model:
            raise ValueError(f"HPT d_model={hpt.d_model} != backbone d_model={d_model}")
        self.backbone = backbone
        self.hpt = hpt

    def __call__(self, input_ids: jax.Array, *, weights: jax.Array, temperatures: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 return_hidden: bool = False, use_lora: bool = True) -> jax.Array:
        """Backbone outputs with the HPT prefix for ``weights``.

        Args:
          input_ids: ``[B, T]`` or ``[B, N, T]`` int tokens (the ``[B, P, D]`` prefix is shared by the N responses
            of an example: the backbone broadcasts it over the middle axes).
          weights: ``[B, K]`` objective weights; temperatures ``[B, K]`` for T-COS-DPO.
          attention_mask, positions: as the backbone takes them (for the real tokens; the backbone extends them
            over the P prefix positions).
        Returns:
          logits ``[B, ..., T, V]`` or, with ``return_hidden``, hidden states ``[B, ..., T, D]`` — real tokens only.
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim < 2:
            raise ValueError(f"input_ids must be [B, ..., T], got shape {input_ids.shape}")
        if jnp.shape(weights)[0] != input_ids.shape[0]:
            raise ValueError(f"weights batch {jnp.shape(weights)[0]} != input_ids batch {input_ids.shape[0]}")
        prefix = self.hpt(weights, temperatures)
        return self.backbone(input_ids, attention_mask=attention_mask, positions=positions, prefix_embeds=prefix,
                             return_hidden=return_hidden, use_lora=use_lora)

    def unembedding(self) -> jax.Array:
        """The backbone's unembedding matrix (for chunked log-prob computation from hidden states)."""
        return self.backbone.unembedding()
