"""Pairwise preference losses on sequence log-probs: DPO (sigmoid / hinge / IPO), SimPO, CPO, Bradley–Terry.

Every loss here has the same shape: turn the inputs into one logit per pair, apply a per-pair function,
reduce under the mask (:func:`pair_loss`). Variants are entries of a table of per-pair functions
(:data:`DPO_PAIR_LOSSES`), not string branches inside the loss.

All inputs are ``[...]`` arrays with one entry per pair (any leading batch shape), all of one shape (scalars
broadcast; mismatched shapes raise ``ValueError``, :func:`~mojax.losses._base.check_same_shape`); ``where`` is a
bool ``[...]`` mask (False for padding pairs); see :mod:`mojax.losses._base` for the masking / NaN policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from mojax.losses._base import (
    Array,
    ReduceFn,
    as_float,
    _is_concrete,
    check_positive,
    check_same_shape,
    check_unit_interval,
    check_where,
    log_sigmoid,
    mask_inputs,
    reduce_masked,
)

__all__ = [
    "DPO_PAIR_LOSSES",
    "bradley_terry_loss",
    "cpo_loss",
    "dpo_hinge",
    "dpo_ipo",
    "dpo_loss",
    "dpo_sigmoid",
    "ipo_loss",
    "pair_loss",
    "prepare_pairs",
    "preference_metrics",
    "simpo_loss",
]

PairLoss = Callable[..., Array]
_LOGPS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def prepare_pairs(
    where: Array | None, *arrays, names: Sequence[str] | None = None, caller: str = "loss"
) -> tuple[Array | None, tuple[Array, ...]]:
    """Check that ``arrays`` match in shape, upcast them to float, broadcast them to that shape, validate
    ``where`` and zero masked inputs.

    ``names`` (one per array) and ``caller`` make the shape error name the offending arguments
    (:func:`~mojax.losses._base.check_same_shape`).
    """
    names = tuple(names) if names is not None else tuple(f"argument {i}" for i in range(len(arrays)))
    if len(names) != len(arrays):
        raise ValueError(f"prepare_pairs: {len(names)} names for {len(arrays)} arrays")
    shape = check_same_shape(caller, dict(zip(names, arrays)))
    arrays = tuple(as_float(a) for a in arrays)
    arrays = tuple(jnp.broadcast_to(a, shape) for a in arrays)
    where = check_where(where, shape)
    return where, mask_inputs(where, *arrays)


def pair_loss(
    pair_fn: Callable[[Array], Array], logits: Array, *, where: Array | None = None, reduce_fn: ReduceFn = jnp.mean
) -> Array:
    r"""Shared pairwise helper: :math:`\mathrm{reduce}_{where}(\text{pair\_fn}(z))` for per-pair logits ``z``.

    ``logits`` must already be finite where masked (use :func:`prepare_pairs` on the inputs).

    >>> import jax.numpy as jnp
    >>> print(f"{float(pair_loss(lambda z: -log_sigmoid(z), jnp.array([0.0]))):.6f}")
    0.693147
    """
    return reduce_masked(pair_fn(logits), where, reduce_fn)


def dpo_sigmoid(h: Array, *, beta, label_smoothing: float = 0.0) -> Array:
    r"""DPO / conservative DPO per pair.

    .. math:: -(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)
    """
    z = beta * h
    return -(1.0 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)


def dpo_hinge(h: Array, *, beta, label_smoothing: float = 0.0) -> Array:
    r"""Hinge (SLiC-style) per pair: :math:`\max(0, 1 - \beta h)`."""
    del label_smoothing
    return jax.nn.relu(1.0 - beta * h)


def dpo_ipo(h: Array, *, beta, label_smoothing: float = 0.0) -> Array:
    r"""IPO per pair (Azar et al. 2023): :math:`(h - 1/(2\beta))^2`."""
    del label_smoothing
    return jnp.square(h - 1.0 / (2.0 * beta))


#: Per-pair DPO variants, keyed by ``loss_type``; each maps the log-ratio margin
#: :math:`h = \Delta[\log\pi_\theta - \log\pi_{ref}]` to a per-pair loss.
DPO_PAIR_LOSSES: Mapping[str, PairLoss] = MappingProxyType(
    {"sigmoid": dpo_sigmoid, "hinge": dpo_hinge, "ipo": dpo_ipo}
)


def preference_metrics(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta,
    where: Array | None = None,
) -> dict[str, Array]:
    r"""Implicit-reward metrics every preference run reports (means over valid pairs).

    ``chosen_rewards`` :math:`=\beta(\log\pi_\theta(y_w) - \log\pi_{ref}(y_w))`, ``rejected_rewards`` likewise,
    ``margins`` = their difference, ``accuracy`` = fraction of pairs with margin > 0, ``chosen_logps`` and
    ``rejected_logps`` the mean policy log-probs. All scalars.
    """
    where, (c, r, rc, rr) = prepare_pairs(where, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                          names=_LOGPS, caller="preference_metrics")
    c, r, rc, rr = (jax.lax.stop_gradient(x) for x in (c, r, rc, rr))
    chosen_rewards = beta * (c - rc)
    rejected_rewards = beta * (r - rr)
    margins = chosen_rewards - rejected_rewards

    def mean(x):
        return reduce_masked(x, where, jnp.mean)

    return {
        "chosen_rewards": mean(chosen_rewards),
        "rejected_rewards": mean(rejected_rewards),
        "margins": mean(margins),
        "accuracy": mean((margins > 0).astype(margins.dtype)),
        "chosen_logps": mean(c),
        "rejected_logps": mean(r),
    }


def dpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta,
    label_smoothing: float = 0.0,
    loss_type: str | PairLoss = "sigmoid",
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""Direct Preference Optimization (Rafailov et al. 2023) and its common variants.

    With :math:`h = [\log\pi_\theta(y_w) - \log\pi_{ref}(y_w)] - [\log\pi_\theta(y_l) - \log\pi_{ref}(y_l)]`:

    .. math::
        \ell_{sigmoid} = -(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h), \quad
        \ell_{hinge} = \max(0, 1 - \beta h), \quad \ell_{ipo} = (h - \tfrac{1}{2\beta})^2.

    Args:
      chosen_logps, rejected_logps: ``[...]`` policy sequence log-probs (:func:`~mojax.losses.sequence_logps`).
      ref_chosen_logps, ref_rejected_logps: ``[...]`` reference log-probs, the policy log-probs' shape (a scalar
        broadcasts; shapes that would broadcast to a larger one, ``[B, 1]`` against ``[B]``, raise ``ValueError``).
      beta: KL temperature :math:`\beta > 0` (scalar or broadcastable array).
      label_smoothing: :math:`\varepsilon \in [0, 1]` of conservative DPO (``loss_type="sigmoid"`` only).
      loss_type: a key of :data:`DPO_PAIR_LOSSES` or a callable ``f(h, *, beta, label_smoothing)``.
      where: bool ``[...]`` pair mask. reduce_fn: reduction (``None`` → per-pair values, masked 0).
      return_metrics: also return :func:`preference_metrics`.

    Returns:
      The reduced loss, or ``(loss, metrics)``.

    >>> print(f"{float(dpo_loss(0.0, -1.0, 0.0, 0.0, beta=1.0)):.6f}")   # -log sigmoid(1)
    0.313262
    """
    check_positive("beta", beta)
    check_unit_interval("label_smoothing", label_smoothing)
    if callable(loss_type):
        fn = loss_type
    elif loss_type in DPO_PAIR_LOSSES:
        fn = DPO_PAIR_LOSSES[loss_type]
        smoothing_is_set = not _is_concrete(label_smoothing) or np.any(np.asarray(label_smoothing) != 0)
        if smoothing_is_set and fn is not dpo_sigmoid:
            raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}")
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(DPO_PAIR_LOSSES)} or a callable")
    where, (c, r, rc, rr) = prepare_pairs(where, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                          names=_LOGPS, caller="dpo_loss")
    h = (c - rc) - (r - rr)
    loss = pair_loss(lambda x: fn(x, beta=beta, label_smoothing=label_smoothing), h, where=where, reduce_fn=reduce_fn)
    if return_metrics:
        return loss, preference_metrics(c, r, rc, rr, beta=beta, where=where)
    return loss


def ipo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""IPO (Azar et al. 2023): :math:`(h - 1/(2\beta))^2` with :math:`h` the DPO log-ratio margin.

    Same arguments as :func:`dpo_loss`.

    >>> print(f"{float(ipo_loss(1.0, 0.0, 0.0, 0.0, beta=0.5)):.1f}")   # (1 - 1)^2
    0.0
    """
    # Checked here too so a shape error names ipo_loss, the function the caller called.
    check_same_shape("ipo_loss", dict(zip(_LOGPS, (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps))))
    return dpo_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
        beta=beta, loss_type="ipo", where=where, reduce_fn=reduce_fn, return_metrics=return_metrics,
    )


def bradley_terry_loss(
    chosen_rewards: Array,
    rejected_rewards: Array,
    *,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""Reward-model loss :math:`-\log\sigma(r(x, y_w) - r(x, y_l))` (Bradley–Terry; MORE's per-dataset loss).

    Args:
      chosen_rewards, rejected_rewards: ``[...]`` scalar rewards. where: bool ``[...]``.
      return_metrics: also return ``{"accuracy", "margin", "chosen_rewards", "rejected_rewards"}`` (means over
        valid pairs) and ``"confidence"`` = :math:`\sigma(r_w - r_l)` per pair (masked 0), the input to ECE.

    >>> print(f"{float(bradley_terry_loss(1.0, 1.0)):.6f}")   # log 2
    0.693147
    """
    where, (rw, rl) = prepare_pairs(where, chosen_rewards, rejected_rewards,
                                    names=("chosen_rewards", "rejected_rewards"), caller="bradley_terry_loss")
    margin = rw - rl
    loss = pair_loss(lambda z: -log_sigmoid(z), margin, where=where, reduce_fn=reduce_fn)
    if not return_metrics:
        return loss
    m = jax.lax.stop_gradient(margin)
    metrics = {
        "accuracy": reduce_masked((m > 0).astype(m.dtype), where),
        "margin": reduce_masked(m, where),
        "chosen_rewards": reduce_masked(jax.lax.stop_gradient(rw), where),
        "rejected_rewards": reduce_masked(jax.lax.stop_gradient(rl), where),
        "confidence": reduce_masked(jax.nn.sigmoid(m), where, None),
    }
    return loss, metrics


def simpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    chosen_lengths: Array,
    rejected_lengths: Array,
    *,
    beta,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""SimPO (Meng et al. 2024): reference-free, length-normalised, with a target margin :math:`\gamma`.

    .. math:: z = \frac{\beta}{|y_w|}\log\pi_\theta(y_w) - \frac{\beta}{|y_l|}\log\pi_\theta(y_l) - \gamma, \quad
              \ell = -(1-\varepsilon)\log\sigma(z) - \varepsilon\log\sigma(-z)

    Args:
      chosen_logps, rejected_logps: ``[...]`` summed sequence log-probs.
      chosen_lengths, rejected_lengths: ``[...]`` response token counts (:func:`~mojax.losses.token_counts`);
        clipped below at 1.
      beta, gamma: scale and margin (docs/methods/dpo-family.md). label_smoothing: as in :func:`dpo_loss`.
      return_metrics: also return the mean length-normalised rewards, margin and accuracy.

    >>> print(f"{float(simpo_loss(-2.0, -4.0, 2.0, 2.0, beta=1.0, gamma=1.0)):.6f}")  # -log sigmoid(0)
    0.693147
    """
    check_positive("beta", beta)
    check_unit_interval("label_smoothing", label_smoothing)
    where, (c, r, nc, nr) = prepare_pairs(
        where, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths,
        names=("chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths"), caller="simpo_loss")
    chosen_rewards = beta * c / jnp.maximum(nc, 1.0)
    rejected_rewards = beta * r / jnp.maximum(nr, 1.0)
    z = chosen_rewards - rejected_rewards - gamma
    loss = pair_loss(
        lambda x: dpo_sigmoid(x, beta=1.0, label_smoothing=label_smoothing), z, where=where, reduce_fn=reduce_fn
    )
    if not return_metrics:
        return loss
    cr, rr = jax.lax.stop_gradient(chosen_rewards), jax.lax.stop_gradient(rejected_rewards)
    metrics = {
        "chosen_rewards": reduce_masked(cr, where),
        "rejected_rewards": reduce_masked(rr, where),
        "margins": reduce_masked(cr - rr, where),
        "accuracy": reduce_masked((cr > rr).astype(cr.dtype), where),
    }
    return loss, metrics


def cpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    *,
    beta,
    nll_weight: float = 1.0,
    chosen_lengths: Array | None = None,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""CPO (Xu et al. 2024): reference-free preference term plus an NLL (behaviour-cloning) term on :math:`y_w`.

    .. math:: \ell = -\log\sigma\big(\beta[\log\pi_\theta(y_w) - \log\pi_\theta(y_l)]\big)
              - \lambda_{nll}\,\frac{\log\pi_\theta(y_w)}{|y_w|}

    Args:
      chosen_logps, rejected_logps: ``[...]`` summed sequence log-probs.
      beta: temperature. nll_weight: :math:`\lambda_{nll} \ge 0`.
      chosen_lengths: optional ``[...]`` token counts :math:`|y_w|` (per-token NLL as in the CPO paper);
        ``None`` uses the summed log-prob (``|y_w| = 1``).
      return_metrics: also return ``{"preference_loss", "nll"}`` means over valid pairs.

    >>> print(f"{float(cpo_loss(-1.0, -1.0, beta=1.0, nll_weight=1.0)):.6f}")  # log 2 + 1
    1.693147
    """
    check_positive("beta", beta)
    check_positive("nll_weight", nll_weight, allow_zero=True)
    lengths = 1.0 if chosen_lengths is None else chosen_lengths
    where, (c, r, n) = prepare_pairs(where, chosen_logps, rejected_logps, lengths,
                                     names=("chosen_logps", "rejected_logps", "chosen_lengths"), caller="cpo_loss")
    pref = -log_sigmoid(beta * (c - r))
    nll = -c / jnp.maximum(n, 1.0)
    loss = pair_loss(lambda x: x, pref + nll_weight * nll, where=where, reduce_fn=reduce_fn)
    if return_metrics:
        metrics = {
            "preference_loss": reduce_masked(jax.lax.stop_gradient(pref), where),
            "nll": reduce_masked(jax.lax.stop_gradient(nll), where),
        }
        return loss, metrics
    return loss
