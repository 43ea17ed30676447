"""The mixed-precision policy of training: float32 master weights for parameters stored in bfloat16.

The policy (issue 13 §4), end to end:

- **parameters** are stored in ``DecoderConfig.param_dtype`` (float32, or bfloat16: half the memory of the weights
  and of the frozen reference copy);
- **compute** runs in ``DecoderConfig.dtype`` (bfloat16 matrix products; norm statistics, attention softmax, logits,
  log-probs and the loss stay float32 — the model and :mod:`mojax.losses` do that whatever the dtypes);
- **gradients** are accumulated, clipped and fed to the optimizer in float32 (the step casts them);
- **optimizer state and master weights** are float32: when a trainable parameter is not float32,
  :func:`master_weights` keeps a float32 copy of every trainable parameter in the optimizer state, applies the
  update to that copy and the step stores the copy rounded to the parameter's dtype (MaxText's and Mixed Precision
  Training's (Micikevicius et al. 2018) recipe). An update smaller than half a bfloat16 ulp of the weight — e.g.
  lr·1 = 1e-3 on a weight of 1.0, whose bfloat16 spacing is 2^-7 ≈ 7.8e-3 — would be rounded away by a bfloat16
  ``p + u``; the master copy accumulates it until it shows.

:func:`mojax.train.fit` wraps the optimizer with :func:`master_weights` by itself when :func:`needs_master` says so;
callers building their own step (``create_train_state`` + ``make_train_step``) wrap it themselves:
``tx = master_weights(tx)`` for both.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class MasterWeightsState(NamedTuple):
    """Optimizer state of :func:`master_weights`: ``master`` (float32 copy of the trainable parameters, sharded like
    them) and the wrapped transformation's ``inner`` state (moments float32, since they are built from ``master``)."""

    master: Any
    inner: Any


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def to_float32(tree: Any) -> Any:
    """Every floating leaf of ``tree`` as float32 (others unchanged); a no-op on float32 leaves."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float(x) else x, tree)


def needs_master(params: Any) -> bool:
    """Whether a tree of (possibly abstract) trainable parameters holds a floating leaf that is not float32."""
    return any(_is_float(x) and jnp.result_type(x) != jnp.float32 for x in jax.tree.leaves(params))


@functools.lru_cache(maxsize=64)
def master_weights(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` run on a float32 master copy of the parameters (see the module docstring).

    ``init(params)`` stores ``master = float32(params)`` and ``tx.init(master)``; ``update(grads, state, params)``
    casts the gradients to float32, runs ``tx`` against ``master`` and adds its updates to it. The returned
    updates are the float32 ones (for norms and logs); the parameters to store are :func:`master_params` of the new
    state — not ``params + updates``, which would round every update to the parameter's dtype. Cached per ``tx``
    (the same wrapper for the same transformation, so :func:`mojax.train.fit`'s step cache keeps hitting).
    """

    def init(params):
        master = to_float32(params)  # (optax.tree_map_params's placeholder has no leaves and passes through)
        return MasterWeightsState(master=master, inner=tx.init(master))

    def update(grads, state, params=None):
        del params  # the update is computed against the float32 master, never the rounded copy
        updates, inner = tx.update(to_float32(grads), state.inner, state.master)
        master = optax.apply_updates(state.master, updates)
        return updates, MasterWeightsState(master=master, inner=inner)

    return optax.GradientTransformation(init, update)


def master_params(opt_state: Any, params: Any) -> Any:
    """The parameters to store after an update: the master copy of a :class:`MasterWeightsState` rounded to each
    parameter's dtype. ``opt_state`` must be a :class:`MasterWeightsState`."""
    return jax.tree.map(lambda m, p: m.astype(p.dtype), opt_state.master, params)


def apply_update(params: Any, updates: Any, opt_state: Any) -> Any:
    """The new parameters: :func:`master_params` when the optimizer keeps master weights, else
    ``optax.apply_updates(params, updates)``."""
    if isinstance(opt_state, MasterWeightsState):
        return master_params(opt_state, params)
    return optax.apply_updates(params, updates)
