"""Configuration of the decoder-only language models (GPT-2, Llama 2/3, Mistral, Qwen2/3, GPT-NeoX, Gemma 2/3).

One frozen, keyword-only :class:`DecoderConfig` describes every supported family; the differences between families
are a handful of switches (norm type, gated MLP, learned vs rotary positions, parallel residual, biases, tying,
q/k norms, soft-capping, per-layer sliding windows). Each switch defaults to the plain Llama behaviour, so a family
that does not set it computes exactly what it did before the switch existed. Which ``model_type`` values exist is
decided by :mod:`mojax.models.families` (one module per family). Parameters are stored in ``param_dtype``
(float32 by default, or bfloat16); ``dtype`` is the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
NORMS = ("rmsnorm", "layernorm", "gemma_rmsnorm")
LAYER_TYPES = ("full_attention", "sliding_attention")
# "none" = no rematerialisation; the others name jax.checkpoint_policies members.
REMAT_POLICIES = ("none", "nothing_saveable", "everything_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots", "checkpoint_dots_with_no_batch_dims")
# scan_layers=None scans from this depth on; None: never by default. Off because scanning does not yet pay on CPU:
# with parameters stored per layer and stacked inside the step, the scanned DPO step compiled slower than the
# unrolled one at 2, 8 and 32 layers (docs/accelerator.md "Compile depth"). Storing parameters stacked is the fix.
SCAN_MIN_LAYERS: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Rotary-embedding frequency scaling, as in Hugging Face's ``rope_parameters`` (``rope_scaling`` in v4 configs).

    ``type`` is one of ``"linear"`` (position interpolation, Chen et al. 2023: every inverse frequency divided by
    ``factor``), ``"llama3"`` (Llama 3.1: low frequencies divided by ``factor``, high ones kept, a smooth ramp in
    between, set by ``low_freq_factor``/``high_freq_factor``/``original_max_positions``) or ``"yarn"`` (Peng et al.
    2023, arXiv:2309.00071: NTK-by-parts ramp between ``beta_fast`` and ``beta_slow`` plus the attention factor
    ``0.1 ln(factor) + 1`` on cos/sin). ``"dynamic"`` NTK is not supported: its frequencies depend on the longest
    sequence seen so far, i.e. on call history.
    """

    type: str
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_positions: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise ValueError(f"rope scaling type {self.type!r} is not supported; supported: {ROPE_TYPES}")
        if self.type in ("linear", "llama3") and self.factor is None:
            raise ValueError(f"rope scaling {self.type!r} needs a factor")
        if self.type == "llama3" and None in (self.low_freq_factor, self.high_freq_factor, self.original_max_positions):
            raise ValueError("llama3 rope scaling needs low_freq_factor, high_freq_factor and original_max_positions")
        if self.type == "yarn" and self.original_max_positions is None:
            raise ValueError("yarn rope scaling needs original_max_positions")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """A decoder-only transformer.

    Attributes:
      model_type: Hugging Face family name, used for import/export: a key of the family registry
        (:func:`mojax.models.families.model_types`).
      vocab_size, d_model, num_layers, num_heads: the usual sizes (V, D, layers, query heads H).
      num_kv_heads: key/value heads for grouped-query attention (Ainslie et al. 2023); ``None`` means ``num_heads``.
      head_dim: per-head width; ``None`` means ``d_model // num_heads``.
      mlp_dim: hidden width of the MLP.
      max_positions: learned-position table size (GPT-2) and the nominal context length.
      norm: ``"rmsnorm"`` (Llama family), ``"layernorm"`` (GPT-2, NeoX) or ``"gemma_rmsnorm"`` (Gemma:
        ``x / rms(x) · (1 + g)`` in float32, gains initialised at 0); ``norm_eps`` its epsilon.
      activation: MLP non-linearity (HF ``hidden_act`` names); ``gated_mlp``: ``down(act(gate x) * up x)`` (SwiGLU)
        instead of ``down(act(up x))``.
      positional: ``"rope"`` (rotary, Su et al. 2021, rotate-half layout) or ``"learned"`` (absolute table).
      rope_theta: rotary base; ``rope_scaling``: optional :class:`RopeScaling`; ``rotary_pct``: fraction of each head
        that is rotated (GPT-NeoX partial rotary; 1.0 elsewhere).
      parallel_residual: ``x + attn(ln1 x) + mlp(ln2 x)`` (GPT-NeoX/GPT-J) instead of sequential residuals.
      qkv_bias, attn_out_bias, mlp_bias: biases on the q/k/v, output and MLP projections.
      tie_embeddings: the unembedding is the transposed token embedding.
      sliding_window: sliding-window attention (key slot > query slot - window); ``None`` for full.
      layer_types: per layer ``"full_attention"`` or ``"sliding_attention"`` (Gemma 2/3 alternate them); ``None``:
        every layer slides when ``sliding_window`` is set (Mistral), else none does.
      rope_local_theta: rotary base of the sliding layers (Gemma 3's local base, default rotary without scaling);
        ``None``: the sliding layers use ``rope_theta``/``rope_scaling`` like the others.
      qk_norm: normalise each head of q and k (over ``head_dim``, with the ``norm`` kind) before the rotary
        embedding (Qwen3, Gemma 3).
      scale_embeddings: multiply the token embeddings by √d_model (Gemma); the tied unembedding is not scaled.
      query_pre_attn_scalar: scores are ``q·k · query_pre_attn_scalar^-1/2`` (Gemma); ``None``: ``q·k / √h``.
      attn_logit_softcap, final_logit_softcap: ``cap · tanh(x / cap)`` on the attention scores / the output logits
        (Gemma 2); ``None`` for none.
      sandwich_norms: also normalise each block's attention and MLP outputs before their residual add
        (``post_attn_norm``, ``post_mlp_norm``; Gemma 2/3).
      bos_token_id, eos_token_id, pad_token_id: special tokens carried for export and generation.
      initializer_range: std of the normal initialiser of weights.
      checkpoint_dtype: the floating dtype of the checkpoint the weights came from (``"bfloat16"``, ...):
        :func:`mojax.models.save_hf` writes that dtype by default; ``None`` (a fresh model) writes float32.
      dtype: compute dtype of the matrix products (logits, norm statistics and attention softmax stay float32).
      param_dtype: storage dtype of the parameters, float32 (default) or bfloat16 (half the memory; training then
        keeps float32 master weights in the optimizer state, :func:`mojax.train.master_weights`).
      remat: rematerialise each block in the backward pass (saves activation memory); the same as
        ``remat_policy="nothing_saveable"``.
      attention_impl: ``"einsum"`` (the reference: explicit float32 scores), ``"fused"``
        (:func:`jax.nn.dot_product_attention`: cuDNN flash attention on GPU in bf16/f16, XLA elsewhere) or
        ``"auto"`` (fused unless ``attn_logit_softcap`` is set, which the fused kernel cannot express). See
        ``docs/accelerator.md``.
      scan_layers: run the blocks under one ``jax.lax.scan`` (one compiled block whatever the depth) instead of a
        Python loop; ``None`` (default): scanned from ``SCAN_MIN_LAYERS`` layers on (currently never, see there). Parameters keep their
        per-layer layout (``blocks.{i}``) either way, so import/export, LoRA and checkpoints do not change.
      remat_policy: rematerialisation of each block in the backward pass, a ``jax.checkpoint_policies`` name
        (``REMAT_POLICIES``: ``"nothing_saveable"`` recomputes everything, ``"dots_saveable"`` keeps the matrix
        products, ...) or ``"none"``; ``None``: ``"nothing_saveable"`` if ``remat`` else ``"none"``.
    """

    model_type: str = "llama"
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int
    max_positions: int = 2048
    norm: Literal["rmsnorm", "layernorm", "gemma_rmsnorm"] = "rmsnorm"
    norm_eps: float = 1e-6
    activation: str = "silu"
    gated_mlp: bool = True
    positional: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rotary_pct: float = 1.0
    parallel_residual: bool = False
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None
    qk_norm: bool = False
    scale_embeddings: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sandwich_norms: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    checkpoint_dtype: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    attention_impl: Literal["einsum", "fused", "auto"] = "auto"
    scan_layers: bool | None = None
    remat_policy: str | None = None

    def __post_init__(self):
        from mojax.models.families import get_family  # the registry imports this module: import it late

        get_family(self.model_type)  # raises ValueError naming the supported families
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; set head_dim")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; supported: {ACTIVATIONS}")
        if self.positional not in ("rope", "learned"):
            raise ValueError(f"positional must be 'rope' or 'learned', got {self.positional!r}")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.positional == "rope" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(f"rotary dimension int(head_dim * rotary_pct) = {self.rotary_dim} must be even and >= 2")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        if self.layer_types is not None:
            if not isinstance(self.layer_types, tuple):  # a list would make the config unhashable (jit static)
                object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(f"layer_types must give one of {LAYER_TYPES} per layer ({self.num_layers}), got "
                                 f"{self.layer_types}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
        for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.checkpoint_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"checkpoint_dtype must be float32, bfloat16, float16 or None, got "
                             f"{self.checkpoint_dtype!r}")
        if self.attention_impl not in ("einsum", "fused", "auto"):
            raise ValueError(f"attention_impl must be 'einsum', 'fused' or 'auto', got {self.attention_impl!r}")
        if self.attention_impl == "fused" and self.attn_logit_softcap is not None:
            raise ValueError("attention_impl='fused' cannot soft-cap attention scores (attn_logit_softcap="
                             f"{self.attn_logit_softcap}); use 'auto' or 'einsum'")
        if self.remat_policy is not None and self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise ValueError(f"compute dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if jnp.dtype(self.param_dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"param_dtype must be float32 or bfloat16, got {self.param_dtype}")

    # ---- derived sizes
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``num_kv_heads`` or ``num_heads``)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        """Per-head width (``head_dim`` or ``d_model // num_heads``)."""
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def rotary_dim(self) -> int:
        """Number of leading dimensions of each head that are rotated: ``int(head_size * rotary_pct)``."""
        return int(self.head_size * self.rotary_pct)

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer, whether its attention is restricted to the sliding window."""
        if self.layer_types is None:
            return (self.sliding_window is not None,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def scanned(self) -> bool:
        """Whether the blocks run under ``lax.scan`` (``scan_layers``, or depth ≥ ``SCAN_MIN_LAYERS`` when unset)."""
        if self.scan_layers is None:
            return SCAN_MIN_LAYERS is not None and self.num_layers >= SCAN_MIN_LAYERS
        return bool(self.scan_layers)

    @property
    def remat_policy_name(self) -> str:
        """The effective rematerialisation policy (``remat_policy``, else from ``remat``)."""
        if self.remat_policy is not None:
            return self.remat_policy
        return "nothing_saveable" if self.remat else "none"

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (e.g. ``config.replace(dtype=jnp.bfloat16, remat=True)``)."""
        return dataclasses.replace(self, **changes)

    def rope_inv_freq(self, *, local: bool = False) -> tuple[np.ndarray, float]:
        """Inverse frequencies ``[rotary_dim // 2]`` (float32) and the cos/sin scale factor of the rotary embedding.

        Default: :math:`\\omega_i = \\theta^{-2i/d_r}`. Scaled variants follow Hugging Face's
        ``modeling_rope_utils`` (computed here in float64, then rounded to float32). ``local=True`` gives a
        sliding layer's frequencies: the default rotary with ``rope_local_theta`` when that is set.
        """
        dim = self.rotary_dim
        if local and self.rope_local_theta is not None:
            inv = 1.0 / (self.rope_local_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
            return inv.astype(np.float32), 1.0
        inv = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        rs = self.rope_scaling
        if rs is None or rs.type == "default":
            return inv.astype(np.float32), 1.0
        if rs.type == "linear":
            return (inv / rs.factor).astype(np.float32), 1.0
        if rs.type == "llama3":
            old = rs.original_max_positions
            low_wavelen = old / rs.low_freq_factor
            high_wavelen = old / rs.high_freq_factor
            wavelen = 2 * math.pi / inv
            out = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
            smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
            smoothed = (1 - smooth) * out / rs.factor + smooth * out
            medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
            return np.where(medium, smoothed, out).astype(np.float32), 1.0
        # yarn
        factor = rs.factor if rs.factor is not None else self.max_positions / rs.original_max_positions

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attn = rs.attention_factor
        if attn is None:
            attn = mscale(factor, rs.mscale) / mscale(factor, rs.mscale_all_dim) if (rs.mscale and rs.mscale_all_dim) \
                else mscale(factor)
        beta_fast, beta_slow = rs.beta_fast or 32.0, rs.beta_slow or 1.0

        def corr_dim(rot):
            return dim * math.log(rs.original_max_positions / (rot * 2 * math.pi)) / (2 * math.log(self.rope_theta))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rs.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # HF's guard against a zero-width ramp
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        out = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        return out.astype(np.float32), float(attn)

    # ---- presets
    @classmethod
    def tiny(cls, model_type: str = "llama", **overrides: Any) -> DecoderConfig:
        """A tiny model of the given family (a few thousand parameters) for tests and CPU demos."""
        from mojax.models.families import get_family

        fam = get_family(model_type)
        fields = {**dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_positions=128),
                  **fam.defaults, **fam.tiny, **overrides}
        if fam.sliding_pattern and "layer_types" not in overrides:  # e.g. Gemma 2: local, global, local, ...
            fields["layer_types"] = fam.layer_types(fields["num_layers"])
        return cls(model_type=model_type, **fields)

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> DecoderConfig:
        """GPT-2 small (124M; Radford et al. 2019)."""
        return cls(model_type="gpt2", **{**dict(vocab_size=50257, d_model=768, num_layers=12, num_heads=12,
                                               mlp_dim=3072, max_positions=1024, bos_token_id=50256,
                                               eos_token_id=50256), **_defaults("gpt2"), **overrides})

    @classmethod
    def llama2_7b(cls, **overrides: Any) -> DecoderConfig:
        """Llama 2 7B (Touvron et al. 2023)."""
        return cls(model_type="llama", **{**dict(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
                                                mlp_dim=11008, max_positions=4096, norm_eps=1e-5, bos_token_id=1,
                                                eos_token_id=2), **overrides})

    @classmethod
    def llama3_8b(cls, **overrides: Any) -> DecoderConfig:
        """Llama 3.1 8B (GQA 32/8, rope theta 5e5, llama3 rope scaling)."""
        return cls(model_type="llama", **{**dict(
            vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
            max_positions=131072, norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
            rope_scaling=RopeScaling(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_positions=8192)), **overrides})

    @classmethod
    def mistral_7b(cls, **overrides: Any) -> DecoderConfig:
        """Mistral 7B v0.1 (GQA 32/8, sliding window 4096)."""
        return cls(model_type="mistral", **{**dict(
            vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
            max_positions=32768, norm_eps=1e-5, sliding_window=4096, bos_token_id=1, eos_token_id=2), **overrides})

    @classmethod
    def qwen2_0_5b(cls, **overrides: Any) -> DecoderConfig:
        """Qwen2 0.5B (GQA 14/2, qkv bias, tied embeddings)."""
        return cls(model_type="qwen2", **{**dict(
            vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2, mlp_dim=4864,
            max_positions=32768, rope_theta=1000000.0, qkv_bias=True, tie_embeddings=True, eos_token_id=151643,
            bos_token_id=151643), **overrides})

    @classmethod
    def qwen3_0_6b(cls, **overrides: Any) -> DecoderConfig:
        """Qwen3 0.6B (GQA 16/8, head_dim 128, q/k norms, tied embeddings)."""
        return cls(model_type="qwen3", **{**dict(
            vocab_size=151936, d_model=1024, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=3072,
            max_positions=40960, rope_theta=1000000.0, qk_norm=True, tie_embeddings=True, bos_token_id=151643,
            eos_token_id=151645), **overrides})

    @classmethod
    def gemma2_2b(cls, **overrides: Any) -> DecoderConfig:
        """Gemma 2 2B (GQA 8/4, head_dim 256, local/global alternating with window 4096, soft-caps 50/30)."""
        return cls(model_type="gemma2", **{**_defaults("gemma2"), **dict(
            vocab_size=256000, d_model=2304, num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256, mlp_dim=9216,
            max_positions=8192, query_pre_attn_scalar=256.0, sliding_window=4096, bos_token_id=2, eos_token_id=1,
            pad_token_id=0, layer_types=tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                                              for i in range(26))), **overrides})

    @classmethod
    def gemma3_1b(cls, **overrides: Any) -> DecoderConfig:
        """Gemma 3 1B text (MQA 4/1, head_dim 256, q/k norms, 5 local (window 512, base 1e4) : 1 global (1e6))."""
        return cls(model_type="gemma3_text", **{**_defaults("gemma3_text"), **dict(
            vocab_size=262144, d_model=1152, num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256, mlp_dim=6912,
            max_positions=32768, query_pre_attn_scalar=256.0, sliding_window=512, bos_token_id=2, eos_token_id=1,
            pad_token_id=0, layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                              for i in range(26))), **overrides})

    @classmethod
    def pythia_160m(cls, **overrides: Any) -> DecoderConfig:
        """Pythia 160M (GPT-NeoX: parallel residual, 25% partial rotary, untied)."""
        return cls(model_type="gpt_neox", **{**dict(vocab_size=50304, d_model=768, num_layers=12, num_heads=12,
                                                   mlp_dim=3072, max_positions=2048, bos_token_id=0,
                                                   eos_token_id=0), **_defaults("gpt_neox"), **overrides})


def _defaults(model_type: str) -> dict[str, Any]:
    from mojax.models.families import get_family

    return dict(get_family(model_type).defaults)
