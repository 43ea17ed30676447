"""Configuration of the decoder-only language models (GPT-2, Llama 2/3, Mistral, Qwen2, GPT-NeoX).

One frozen, keyword-only :class:`DecoderConfig` describes every supported family; the differences between families
are a handful of switches (norm type, gated MLP, learned vs rotary positions, parallel residual, biases, tying).
Parameters are always stored in float32; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


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
      model_type: Hugging Face family name, used for import/export: one of ``MODEL_TYPES``.
      vocab_size, d_model, num_layers, num_heads: the usual sizes (V, D, layers, query heads H).
      num_kv_heads: key/value heads for grouped-query attention (Ainslie et al. 2023); ``None`` means ``num_heads``.
      head_dim: per-head width; ``None`` means ``d_model // num_heads``.
      mlp_dim: hidden width of the MLP.
      max_positions: learned-position table size (GPT-2) and the nominal context length.
      norm: ``"rmsnorm"`` (Llama family) or ``"layernorm"`` (GPT-2, NeoX); ``norm_eps`` its epsilon.
      activation: MLP non-linearity (HF ``hidden_act`` names); ``gated_mlp``: ``down(act(gate x) * up x)`` (SwiGLU)
        instead of ``down(act(up x))``.
      positional: ``"rope"`` (rotary, Su et al. 2021, rotate-half layout) or ``"learned"`` (absolute table).
      rope_theta: rotary base; ``rope_scaling``: optional :class:`RopeScaling`; ``rotary_pct``: fraction of each head
        that is rotated (GPT-NeoX partial rotary; 1.0 elsewhere).
      parallel_residual: ``x + attn(ln1 x) + mlp(ln2 x)`` (GPT-NeoX/GPT-J) instead of sequential residuals.
      qkv_bias, attn_out_bias, mlp_bias: biases on the q/k/v, output and MLP projections.
      tie_embeddings: the unembedding is the transposed token embedding.
      sliding_window: Mistral's sliding-window attention (key index > query index - window); ``None`` for full.
      bos_token_id, eos_token_id, pad_token_id: special tokens carried for export and generation.
      initializer_range: std of the normal initialiser of weights.
      dtype: compute dtype (parameters stay float32; logits and norms are computed in float32).
      remat: rematerialise each block in the backward pass (saves activation memory).
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
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
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
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; supported: {MODEL_TYPES}")
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_positions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; set head_dim")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
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
        if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise ValueError(f"compute dtype must be float32, bfloat16 or float16, got {self.dtype}")

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

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (e.g. ``config.replace(dtype=jnp.bfloat16, remat=True)``)."""
        return dataclasses.replace(self, **changes)

    def rope_inv_freq(self) -> tuple[np.ndarray, float]:
        """Inverse frequencies ``[rotary_dim // 2]`` (float32) and the cos/sin scale factor of the rotary embedding.

        Default: :math:`\\omega_i = \\theta^{-2i/d_r}`. Scaled variants follow Hugging Face's
        ``modeling_rope_utils`` (computed here in float64, then rounded to float32).
        """
        dim = self.rotary_dim
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
        base = dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_positions=128)
        fam = _FAMILY_DEFAULTS[model_type]
        if model_type in ("llama", "mistral", "qwen2"):
            base.update(num_kv_heads=2)
        return cls(model_type=model_type, **{**base, **fam, **overrides})

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> DecoderConfig:
        """GPT-2 small (124M; Radford et al. 2019)."""
        return cls(model_type="gpt2", **{**dict(vocab_size=50257, d_model=768, num_layers=12, num_heads=12,
                                               mlp_dim=3072, max_positions=1024, bos_token_id=50256,
                                               eos_token_id=50256), **_FAMILY_DEFAULTS["gpt2"], **overrides})

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
    def pythia_160m(cls, **overrides: Any) -> DecoderConfig:
        """Pythia 160M (GPT-NeoX: parallel residual, 25% partial rotary, untied)."""
        return cls(model_type="gpt_neox", **{**dict(vocab_size=50304, d_model=768, num_layers=12, num_heads=12,
                                                   mlp_dim=3072, max_positions=2048, bos_token_id=0,
                                                   eos_token_id=0), **_FAMILY_DEFAULTS["gpt_neox"], **overrides})


_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(norm="layernorm", norm_eps=1e-5, activation="gelu_new", gated_mlp=False, positional="learned",
                 qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True),
    "llama": dict(),
    "mistral": dict(),
    "qwen2": dict(qkv_bias=True),
    "gpt_neox": dict(norm="layernorm", norm_eps=1e-5, activation="gelu", gated_mlp=False, rotary_pct=0.25,
                     parallel_residual=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True),
}
