"""Shared checks of the loss contract (docs/contracts.md), used by every tests/losses file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import settings

FAST = settings(max_examples=25, deadline=None, derandomize=True)


def rng_arrays(seed: int, *shapes, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return tuple((scale * rng.standard_normal(s)).astype(np.float32) for s in shapes)


def check_loss_contract(fn, arrays, *, where_shape=None, rtol=1e-5, atol=1e-6):
    """Check masking, reductions, batch shapes and jit for ``fn(*arrays, where=, reduce_fn=)``.

    ``arrays`` share a leading example axis of size n (even, >= 4); ``where_shape`` is the mask's shape
    (default ``(n,)``; ``(n, L)`` for listwise losses, whose examples are whole lists).
    """
    arrays = tuple(jnp.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    where_shape = (n,) if where_shape is None else tuple(where_shape)
    keep = n - 2
    example_valid = np.arange(n) < keep
    where = jnp.asarray(np.broadcast_to(example_valid.reshape((n,) + (1,) * (len(where_shape) - 1)), where_shape))
    # Padding examples hold NaN: the contract says they can never reach a value or a gradient.
    garbage = tuple(
        jnp.where(jnp.asarray(example_valid).reshape((n,) + (1,) * (a.ndim - 1)), a, jnp.nan) for a in arrays
    )
    argnums = tuple(range(len(arrays)))
    none = jnp.zeros(where_shape, bool)
    leads = ((2, 1, n // 2),)  # two batch axes and a singleton: covers any leading shape

    def grad_of(w):
        return jax.grad(lambda *xs: fn(*xs, where=w), argnums=argnums)

    # Everything is traced into one jitted program: one compile per loss instead of one per primitive.
    @jax.jit
    def run(arrays, garbage):
        truncated_arrays = tuple(a[:keep] for a in arrays)
        return {
            "full": fn(*arrays, where=None),
            "all_true": fn(*arrays, where=jnp.ones(where_shape, bool)),
            "masked": fn(*garbage, where=where),
            "truncated": fn(*truncated_arrays, where=None),
            "grads": grad_of(where)(*garbage),
            "truncated_grads": grad_of(None)(*truncated_arrays),
            "none": fn(*garbage, where=none),
            "none_grads": grad_of(none)(*garbage),
            "per": fn(*garbage, where=where, reduce_fn=None),
            "sum": fn(*garbage, where=where, reduce_fn=jnp.sum),
            "lead": [
                fn(*(a.reshape(lead + a.shape[1:]) for a in garbage), where=where.reshape(lead + where.shape[1:]))
                for lead in leads
            ],
            "lead_per": [
                fn(*(a.reshape(lead + a.shape[1:]) for a in garbage), where=where.reshape(lead + where.shape[1:]),
                   reduce_fn=None)
                for lead in leads
            ],
        }

    out = jax.tree.map(np.asarray, run(arrays, garbage))
    # 1. An all-True mask changes nothing.
    np.testing.assert_allclose(out["all_true"], out["full"], rtol=rtol, atol=atol)
    # 2. Masking equals truncation, with finite gradients that vanish on padding.
    np.testing.assert_allclose(out["masked"], out["truncated"], rtol=rtol, atol=atol)
    for g, gt in zip(out["grads"], out["truncated_grads"]):
        assert np.all(np.isfinite(g)), "gradient not finite under a mask"
        np.testing.assert_array_equal(g[keep:], 0.0)
        np.testing.assert_allclose(g[:keep], gt, rtol=1e-4, atol=1e-6)
    # 3. All masked: 0 with finite gradients.
    assert float(out["none"]) == 0.0
    for g in out["none_grads"]:
        assert np.all(np.isfinite(g))
    # 4. Unreduced values: masked entries 0, their sum is the sum reduction, their valid mean the mean.
    per = out["per"]
    assert per.shape == (n,), per.shape
    np.testing.assert_array_equal(per[keep:], 0.0)
    np.testing.assert_allclose(per.sum(), out["sum"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(per[:keep].mean(), out["masked"], rtol=rtol, atol=atol)
    # 5. Arbitrary leading batch shapes.
    for lead, value, lead_per in zip(leads, out["lead"], out["lead_per"]):
        np.testing.assert_allclose(value, out["masked"], rtol=rtol, atol=atol)
        assert lead_per.shape == lead
        np.testing.assert_allclose(lead_per.reshape(-1), per, rtol=rtol, atol=atol)
    # 6. jit equals eager.
    np.testing.assert_allclose(fn(*garbage, where=where), out["masked"], rtol=rtol, atol=atol)
    return out["full"]
