"""Stable Preference Optimisation (derived in docs/methods/stable-po.md): penalty and one-step bilevel forms.

The upper level is a preference loss (DPO, SimPO, CPO: :mod:`mojax.losses.pairwise`); the lower level is SFT on
the chosen responses. Two solvers:

* penalty form: ``L = L_pref + λ·E[max(0, logπ_ref(y_w) − logπ_θ(y_w))]`` (:func:`stable_po_loss`);
* one-step bilevel form: ``θ⁺ = θ − η∇L_SFT(θ)``, ``L = L_pref(θ⁺) + λ·hinge(θ⁺)``, differentiated through the
  inner step (:func:`bilevel_objective`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mojax.losses._base import Array, ReduceFn, check_positive, reduce_masked
from mojax.losses.pairwise import prepare_pairs

__all__ = ["bilevel_objective", "likelihood_hinge", "stable_po_loss"]


def likelihood_hinge(
    chosen_logps: Array,
    ref_chosen_logps: Array,
    *,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    r"""The Stable PO penalty :math:`\max(0, \log\pi_{ref}(y_w) - \log\pi_\theta(y_w))` per chosen response.

    Zero while the chosen response is at least as likely as under the reference (SFT) model; grows linearly
    as likelihood displacement pushes it below.

    >>> print(float(likelihood_hinge(-3.0, -2.0)))
    1.0
    """
    where, (c, rc) = prepare_pairs(where, chosen_logps, ref_chosen_logps, names=("chosen_logps", "ref_chosen_logps"),
                                   caller="likelihood_hinge")
    return reduce_masked(jax.nn.relu(rc - c), where, reduce_fn)


def stable_po_loss(
    pref_losses: Array,
    chosen_logps: Array,
    ref_chosen_logps: Array,
    *,
    penalty: float,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""Stable PO, penalty form: :math:`\ell = \ell_{pref} + \lambda \max(0, \log\pi_{ref}(y_w) - \log\pi_\theta(y_w))`.

    The preference term is any per-pair loss, e.g. ``dpo_loss(..., reduce_fn=None)``, ``simpo_loss(...)`` or
    ``cpo_loss(...)`` (so no string switch between them is needed here). Pass the same ``where`` to the
    preference loss: padding masked only here could still send NaN through the preference term's gradient.

    Args:
      pref_losses: ``[...]`` per-pair preference losses (unreduced).
      chosen_logps: ``[...]`` policy log-probs of the chosen responses.
      ref_chosen_logps: ``[...]`` reference (SFT) log-probs of the chosen responses.
      penalty: :math:`\lambda \ge 0` (0 recovers the preference loss).
      where, reduce_fn: as in :func:`~mojax.losses.dpo_loss`.
      return_metrics: also return ``{"preference_loss", "hinge", "hinge_active"}`` (means over valid pairs;
        ``hinge_active`` is the fraction of pairs whose chosen log-prob fell below the reference).

    >>> print(float(stable_po_loss(0.5, -3.0, -2.0, penalty=2.0)))   # 0.5 + 2·1
    2.5
    """
    check_positive("penalty", penalty, allow_zero=True)
    where, (pref, c, rc) = prepare_pairs(where, pref_losses, chosen_logps, ref_chosen_logps,
                                         names=("pref_losses", "chosen_logps", "ref_chosen_logps"),
                                         caller="stable_po_loss")
    hinge = jax.nn.relu(rc - c)
    loss = reduce_masked(pref + penalty * hinge, where, reduce_fn)
    if return_metrics:
        h = jax.lax.stop_gradient(hinge)
        metrics = {
            "preference_loss": reduce_masked(jax.lax.stop_gradient(pref), where),
            "hinge": reduce_masked(h, where),
            "hinge_active": reduce_masked((h > 0).astype(h.dtype), where),
        }
        return loss, metrics
    return loss


def bilevel_objective(
    sft_loss_fn: Callable[[Any, Any], Array],
    pref_loss_fn: Callable[[Any, Any], Array],
    *,
    inner_lr: float,
    penalty: float = 0.0,
    hinge_fn: Callable[[Any, Any], Array] | None = None,
    first_order: bool = False,
) -> Callable[[Any, Any], Array]:
    r"""One-step bilevel Stable PO objective as a pure function ``f(params, batch) -> loss``.

    .. math::
        \theta^+ = \theta - \eta \nabla_\theta L_{SFT}(\theta), \qquad
        L(\theta) = L_{pref}(\theta^+) + \lambda\, \mathrm{hinge}(\theta^+)

    ``jax.grad(f)`` differentiates through the inner step, giving the hypergradient
    :math:`(I - \eta \nabla^2 L_{SFT}(\theta))\,\nabla L(\theta^+)` (a Hessian-vector product; no Hessian is
    formed). ``first_order=True`` stops the gradient through :math:`\nabla L_{SFT}`, dropping the Hessian term
    (cheaper, as first-order MAML).

    Args:
      sft_loss_fn: ``(params, batch) -> scalar`` lower-level SFT loss (e.g. token NLL of the chosen responses).
      pref_loss_fn: ``(params, batch) -> scalar`` upper-level preference loss.
      inner_lr: :math:`\eta \ge 0` (0 gives the penalty form evaluated at θ).
      penalty: :math:`\lambda \ge 0`; needs ``hinge_fn`` when positive.
      hinge_fn: ``(params, batch) -> scalar`` mean likelihood hinge (e.g. via :func:`likelihood_hinge`).
      first_order: drop second-order terms.

    Returns:
      ``f(params, batch) -> scalar``, pure and jit-able; params may be any pytree of float arrays.
    """
    check_positive("inner_lr", inner_lr, allow_zero=True)
    check_positive("penalty", penalty, allow_zero=True)
    if penalty and hinge_fn is None:
        raise ValueError("penalty > 0 needs hinge_fn(params, batch) -> scalar")

    def objective(params: Any, batch: Any) -> Array:
        inner_grads = jax.grad(sft_loss_fn)(params, batch)
        if first_order:
            inner_grads = jax.lax.stop_gradient(inner_grads)
        inner_params = jax.tree.map(lambda p, g: p - inner_lr * g, params, inner_grads)
        loss = pref_loss_fn(inner_params, batch)
        if penalty:
            loss = loss + penalty * hinge_fn(inner_params, batch)
        return loss

    return objective
