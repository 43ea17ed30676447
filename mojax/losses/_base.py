"""Shared numerics for every loss: masking, reduction, stable log-sigmoid, masked softmax.

Masking / NaN policy (one rule for the whole library):

* ``where`` is a boolean mask broadcastable to the per-example (or per-item) shape; True = valid.
* Masked entries of the *inputs* are replaced by 0 before any arithmetic (:func:`mask_inputs`), so NaN,
  ``inf`` or garbage in padding never reaches a value or a gradient (``0 * nan`` would otherwise poison
  ``jnp.where``'s backward pass).
* Masked entries of the per-example output are exactly 0, so ``sum(loss(reduce_fn=None)) ==
  loss(reduce_fn=jnp.sum)``.
* ``reduce_fn=jnp.mean`` averages over the valid entries only: ``sum / max(count, 1)``; an all-masked
  input therefore gives 0 with a finite (zero) gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ReduceFn = Callable[[Array], Array] | None

__all__ = [
    "as_float",
    "check_positive",
    "check_same_shape",
    "check_unit_interval",
    "check_where",
    "log_sigmoid",
    "mask_inputs",
    "masked_log_softmax",
    "masked_softmax",
    "reduce_masked",
]


def log_sigmoid(z: Array) -> Array:
    r"""Numerically stable :math:`\log\sigma(z) = -\operatorname{softplus}(-z)`.

    Finite for every finite ``z`` (``jnp.log(jax.nn.sigmoid(z))`` underflows to ``-inf`` near ``z = -104``
    in float32), with the exact gradient :math:`\sigma(-z)`.

    >>> print(f"{float(log_sigmoid(0.0)):.6f}")
    -0.693147
    """
    return -jax.nn.softplus(-z)


def as_float(x: Any) -> Array:
    """``x`` as a floating array of at least float32 precision (bf16 log-probs are upcast; float64 kept)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` if a concrete ``value`` is not (strictly) positive; traced values pass through."""
    if value is None:
        raise ValueError(f"{name} is required")
    if not _is_concrete(value):
        return
    # NumPy, not jnp: inside a jit trace every jnp op on a constant would itself be a tracer.
    arr = np.asarray(value, dtype=np.float64)
    bad = np.any(arr < 0) if allow_zero else np.any(arr <= 0)
    if bad or np.any(np.isnan(arr)):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_unit_interval(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless a concrete ``value`` lies in [0, 1]; traced values pass through."""
    if _is_concrete(value) and not np.all((np.asarray(value, np.float64) >= 0) & (np.asarray(value) <= 1)):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_same_shape(caller: str, arrays: Mapping[str, Any]) -> tuple[int, ...]:
    """The common shape of ``arrays`` (argument name -> array-like), or a ``ValueError`` naming each shape.

    Inputs match when they broadcast to the shape of one of them: equal shapes, scalars, and size-1 or missing
    leading axes that fill in (``[B, 1, L]`` scores against ``[B, K, L]`` labels) are fine. An outer product that
    makes the result larger than every input is refused: ``[B, 1]`` reference log-probs against ``[B]`` policy
    log-probs would broadcast to ``[B, B]`` and give a plausible but wrong loss. Only static shapes are read, so
    the check costs nothing under ``jit``.

    >>> check_same_shape("f", {"a": np.zeros(3), "b": 1.0})
    (3,)
    """
    shapes = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    listing = ", ".join(f"{name} {_fmt(s)}" for name, s in shapes.items())
    try:
        shape = tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        raise ValueError(f"{caller}: input shapes do not match: {listing} (they do not broadcast together)") from None
    if shapes and shape not in shapes.values():
        raise ValueError(f"{caller}: input shapes do not match: {listing} (broadcasting would give {_fmt(shape)}, "
                         "larger than every input; pass one shape, or scalars)")
    return shape


def check_where(where: Any, shape: tuple[int, ...], name: str = "where") -> Array | None:
    """Validate a boolean mask and broadcast it to ``shape``; ``None`` stays ``None``."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{name} must be a boolean mask, got dtype {where.dtype}")
    try:
        jnp.broadcast_shapes(where.shape, shape)
    except ValueError as e:
        raise ValueError(f"{name} of shape {where.shape} does not broadcast to {shape}") from e
    if jnp.broadcast_shapes(where.shape, shape) != tuple(shape):
        raise ValueError(f"{name} of shape {where.shape} would enlarge the values' shape {shape}")
    return jnp.broadcast_to(where, shape)


def mask_inputs(where: Array | None, *arrays: Array) -> tuple[Array, ...]:
    """Replace masked entries of each array by 0 so padding can never produce NaN values or gradients."""
    if where is None:
        return arrays
    return tuple(jnp.where(where, a, jnp.zeros((), a.dtype)) for a in arrays)


def reduce_masked(values: Array, where: Array | None = None, reduce_fn: ReduceFn = jnp.mean) -> Array:
    r"""Zero the masked entries of ``values`` and reduce them.

    ``reduce_fn=jnp.mean`` gives :math:`\sum_{i \in where} v_i / \max(|where|, 1)` (mean over valid entries,
    0 when none is valid); ``None`` returns ``values`` with masked entries 0; any other callable receives the
    zero-filled array (so ``jnp.sum`` is the masked sum).

    >>> import jax.numpy as jnp
    >>> print(reduce_masked(jnp.array([1.0, 2.0, 9.0]), jnp.array([True, True, False])))
    1.5
    """
    if where is not None:
        where = check_where(where, values.shape)
        values = jnp.where(where, values, jnp.zeros((), values.dtype))
    if reduce_fn is None:
        return values
    if reduce_fn is jnp.mean and where is not None:
        return jnp.sum(values) / jnp.maximum(jnp.sum(where), 1).astype(values.dtype)
    return reduce_fn(values)


def masked_log_softmax(scores: Array, where: Array | None = None, axis: int = -1) -> Array:
    r""":math:`\log \mathrm{softmax}` over the valid entries of ``axis``; masked entries return 0.

    Equivalent to giving masked scores :math:`-\infty`, but a slice with no valid entry yields zeros (not NaN)
    and every gradient stays finite.
    """
    scores = as_float(scores)
    if where is None:
        return jax.nn.log_softmax(scores, axis=axis)
    where = check_where(where, scores.shape)
    scores = jnp.where(where, scores, 0.0)
    # The max is only a shift for stability; its gradient cancels exactly, so stop it.
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(where, scores, -jnp.inf), axis=axis, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    exp = jnp.where(where, jnp.exp(scores - shift), 0.0)
    total = jnp.sum(exp, axis=axis, keepdims=True)
    log_total = jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(where, scores - shift - log_total, 0.0)


def masked_softmax(scores: Array, where: Array | None = None, axis: int = -1) -> Array:
    """Softmax over the valid entries of ``axis``; masked entries (and fully masked slices) are 0."""
    out = jnp.exp(masked_log_softmax(scores, where, axis))
    return out if where is None else jnp.where(check_where(where, out.shape), out, 0.0)
