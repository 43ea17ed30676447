"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the decoder's projections.

A target projection ``y = x·W`` becomes ``y = x·W + (α/r)·dropout(x)·A·B`` with ``A [in, r]`` (normal, std
``1/r``-ish as in the paper's Kaiming init) and ``B [r, out]`` zero-initialised, so the adapted model equals the base
model at step 0. Adapter weights are ``nnx.LoRAParam``: train only them with
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` or ``nnx.split(model, nnx.LoRAParam, ...)``. Note ``LoRAParam``
subclasses ``nnx.Param``: to select the base weights alone use ``nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))``.
``model(..., use_lora=False)`` runs the base (reference) model from the same weights.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mojax.models.layers import Dense
from mojax.sharding import partitioned

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Rank ``rank`` adapters scaled by ``alpha / rank`` on the projections named in ``targets`` (any of
    ``LORA_TARGETS``), with dropout ``dropout`` on the adapter's input."""

    rank: int = 8
    """Rank r of each adapter ``A·B`` (A ``[in, r]``, B ``[r, out]``, B initialised to zero)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's output is multiplied by ``alpha / rank``."""
    dropout: float = 0.0
    """Dropout rate on the adapter's input."""
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Projections that get adapters (any of ``LORA_TARGETS``)."""

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"unknown LoRA targets {bad or self.targets}; choose from {LORA_TARGETS}")

    @property
    def scale(self) -> float:
        """The adapter's output scale ``alpha / rank``."""
        return self.alpha / self.rank


class LoRAAdapter(nnx.Module):
    """The low-rank update ``(α/r)·dropout(x)·A·B`` of one :class:`~mojax.models.layers.Dense`:
    ``A [*in_shape, r]``, ``B [r, *out_shape]`` (zeros)."""

    def __init__(self, dense: Dense, config: LoRAConfig, *, rngs: nnx.Rngs):
        in_names = dense.names[: len(dense.in_shape)]
        out_names = dense.names[len(dense.in_shape):]
        fan_in = int(np.prod(dense.in_shape))
        self.n_in = len(dense.in_shape)
        self.scale = config.scale
        self.dtype = dense.dtype
        # A ~ N(0, 1/fan_in): unit-variance x·A at init; B = 0 makes the update vanish at step 0.
        self.lora_a = nnx.LoRAParam(partitioned(nnx.initializers.normal(1.0 / math.sqrt(fan_in)),
                                                *in_names, "lora_rank")(
            rngs.params(), dense.in_shape + (config.rank,), jnp.float32))
        self.lora_b = nnx.LoRAParam(partitioned(nnx.initializers.zeros_init(), "lora_rank", *out_names)(
            rngs.params(), (config.rank,) + dense.out_shape, jnp.float32))
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs) if config.dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout is not None:
            x = self.dropout(x)
        low = jnp.tensordot(x, self.lora_a[...].astype(self.dtype), axes=self.n_in)
        return jnp.tensordot(low, self.lora_b[...].astype(self.dtype), axes=1) * self.scale

    def delta(self) -> jax.Array:
        """The dense kernel update ``(α/r)·A·B`` with the kernel's shape ``[*in_shape, *out_shape]`` (float32)."""
        return jnp.tensordot(self.lora_a[...], self.lora_b[...], axes=1) * self.scale


def lora_targets(model: nnx.Module, names: tuple[str, ...] = LORA_TARGETS):
    """``(path, Dense)`` of every projection of ``model`` named in ``names`` (the places adapters go)."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Dense) and path and path[-1] in names:
            yield path, module


_targets = lora_targets


def add_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Attach adapters to every projection named in ``config.targets`` (in place; returns ``model``).

    Raises if no projection matches or one already has an adapter.
    """
    found = list(_targets(model, config.targets))
    if not found:
        raise ValueError(f"no projection named {config.targets} in the model")
    for path, dense in found:
        if dense.lora is not None:
            raise ValueError(f"{'/'.join(map(str, path))} already has a LoRA adapter")
        dense.lora = LoRAAdapter(dense, config, rngs=rngs)
    return model


def effective_kernels(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """``{path + ("kernel",): W + (α/r)·A·B}`` (float32 NumPy) for every projection carrying an adapter."""
    out = {}
    for path, dense in _targets(model, LORA_TARGETS):
        if dense.lora is not None:
            out[tuple(path) + ("kernel",)] = np.asarray(jax.device_get(dense.kernel[...] + dense.lora.delta()),
                                                        np.float32)
    return out


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base kernel (``W ← W + (α/r)·A·B``) and remove it (in place; returns
    ``model``), e.g. before :func:`mojax.models.save_hf` or to serve without the adapter overhead."""
    for _, dense in _targets(model, LORA_TARGETS):
        if dense.lora is not None:
            dense.kernel[...] = dense.kernel[...] + dense.lora.delta()
            dense.lora = None
    return model
