"""SPO: sequential preference optimisation (loss derived in docs/methods/spo.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mojax.losses._base import Array, ReduceFn, as_float, check_positive, log_sigmoid, reduce_masked
from mojax.losses.pairwise import pair_loss, prepare_pairs, preference_metrics

__all__ = ["spo_loss"]


def spo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    prev_chosen_logps: Array,
    prev_rejected_logps: Array,
    *,
    beta,
    alpha,
    where: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
    return_metrics: bool = False,
):
    r"""Round-n SPO loss on dimension-n preference pairs, constrained by the n − 1 earlier dimensions.

    With :math:`u_k = \log\pi_k - \log\pi_{k-1}` (the implicit reward of round k, up to β) and
    :math:`\Delta f = f(x, y_w) - f(x, y_l)`:

    .. math::
        z = \beta\,\Delta[\log\pi_\theta - \log\pi_{n-1}] - \sum_{k=1}^{n-1} \alpha_k \Delta u_k, \qquad
        \ell = -\log\sigma(z), \qquad \phi = \sigma(-z).

    A scalar α telescopes: :math:`\sum_k \alpha\,\Delta u_k = \alpha\,\Delta[\log\pi_{n-1} - \log\pi_0]`.
    α = 0 is S-DPO (plain DPO against :math:`\pi_{n-1}`); n = 1 is round-1 DPO against :math:`\pi_0`.
    :math:`\phi` is the per-pair gradient weight (:math:`\nabla\ell = -\phi\,\beta\nabla\Delta\log\pi_\theta`):
    pairs whose preferred response also won earlier dimensions (:math:`\Delta u > 0`) get more weight.

    Args:
      chosen_logps, rejected_logps: ``[...]`` policy log-probs :math:`\log\pi_\theta`.
      prev_chosen_logps, prev_rejected_logps: ``[n, ...]`` log-probs of the checkpoints
        :math:`\pi_0, \dots, \pi_{n-1}` (row 0 the SFT model, row n − 1 the reference of this round).
      beta: :math:`\beta > 0`.
      alpha: :math:`\alpha \ge 0`, a scalar or ``[n - 1]`` (one multiplier per earlier dimension).
      where: bool ``[...]`` pair mask. reduce_fn: as in :func:`~mojax.losses.dpo_loss`.
      return_metrics: also return metrics: ``phi`` (per-pair ϕ ``[...]``, masked 0), ``phi_mean`` and the
        :func:`~mojax.losses.preference_metrics` against :math:`\pi_{n-1}`.

    Returns:
      The loss, or ``(loss, metrics)``.

    >>> import jax.numpy as jnp
    >>> # n = 2: z = 1·(1 - 0) - 1·((0 - 0) - (0 - 1)) = 0 → log 2.
    >>> prev_c, prev_r = jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0])
    >>> print(f"{float(spo_loss(1.0, 0.0, prev_c, prev_r, beta=1.0, alpha=1.0)):.6f}")
    0.693147
    """
    check_positive("beta", beta)
    check_positive("alpha", alpha, allow_zero=True)
    prev_c, prev_r = as_float(prev_chosen_logps), as_float(prev_rejected_logps)
    if prev_c.ndim < 1 or prev_c.shape[0] < 1 or prev_c.shape[0] != prev_r.shape[0]:
        raise ValueError(
            f"prev_chosen_logps {prev_c.shape} and prev_rejected_logps {prev_r.shape} need a leading axis n >= 1 "
            "of earlier checkpoints pi_0..pi_{n-1}"
        )
    n = prev_c.shape[0]
    alpha = as_float(alpha)
    if alpha.ndim not in (0, 1) or (alpha.ndim == 1 and alpha.shape[0] != n - 1):
        raise ValueError(f"alpha must be a scalar or shape [n - 1] = [{n - 1}], got shape {alpha.shape}")

    # Earlier checkpoints' margins m_k = Δlogπ_k, [n, ...]; move n last so pairs broadcast on the leading axes.
    prev_margin = jnp.moveaxis(prev_c - prev_r, 0, -1)
    where, (c, r, m_last, m_first) = prepare_pairs(
        where, chosen_logps, rejected_logps, prev_margin[..., n - 1], prev_margin[..., 0],
        names=("chosen_logps", "rejected_logps", "prev_chosen/rejected_logps[n-1]", "prev_chosen/rejected_logps[0]"),
        caller="spo_loss",
    )
    if alpha.ndim == 0:
        constraint = alpha * (m_last - m_first)  # telescoped Σ_k α Δu_k
    else:
        delta_u = jnp.diff(prev_margin, axis=-1)  # [..., n-1]: Δu_k = m_k - m_{k-1}
        constraint = jnp.sum(alpha * delta_u, axis=-1)
        if where is not None:
            constraint = jnp.where(where, jnp.broadcast_to(constraint, where.shape), 0.0)
    z = beta * ((c - r) - m_last) - constraint
    loss = pair_loss(lambda x: -log_sigmoid(x), z, where=where, reduce_fn=reduce_fn)
    if not return_metrics:
        return loss
    phi = reduce_masked(jax.nn.sigmoid(-jax.lax.stop_gradient(z)), where, None)
    prev_c_last = jnp.moveaxis(prev_c, 0, -1)[..., n - 1]
    prev_r_last = jnp.moveaxis(prev_r, 0, -1)[..., n - 1]
    metrics = preference_metrics(c, r, prev_c_last, prev_r_last, beta=beta, where=where)
    metrics["phi"] = phi
    metrics["phi_mean"] = reduce_masked(phi, where) if where is not None else jnp.mean(phi)
    return loss, metrics
