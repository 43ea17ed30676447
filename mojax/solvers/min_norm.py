"""Minimum-norm point in the convex hull of K gradients (the MGDA / MORE quadratic program).

Given per-objective gradients ``g_1..g_K`` (rows of ``grads``, shape ``[K, P]``) the weights are

.. math::

    \\lambda^\\star = \\arg\\min_{\\lambda \\in \\Delta^K} \\Big\\|\\sum_k \\lambda_k g_k\\Big\\|_2^2
                   = \\arg\\min_{\\lambda \\in \\Delta^K} \\lambda^\\top G \\lambda, \\qquad G = \\mathrm{grads}\\,\\mathrm{grads}^\\top,

a convex QP on the K x K Gram matrix G (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization";
used by MORE, Zeng et al. 2024, docs/methods/more.md). Everything here works on G, so the cost after forming G is
independent of P.

Algorithm (K >= 3): Wolfe's (1976) minimum-norm-point active-set method in Gram form, run for a fixed number of
steps (``num_iters``, default 2K + 2) from the uniform weights. Each step solves the equality-constrained QP on the
current support exactly (one (K+1)x(K+1) KKT solve) and either adds the most violating vertex
``j = argmin_i (Gλ)_i`` or moves to the boundary of the simplex and drops the blocking index. Every move strictly
decreases the objective, the method is finite, and once λ is optimal every further step is a no-op, so a fixed
count is safe under jit and vmap; the loop (a ``lax.while_loop``) stops at the first step that changes nothing,
which returns exactly what the remaining no-op steps would (typically after a handful of steps rather than 2K + 2).
The weights carry no gradient (a ``stop_gradient`` is applied to G): callers treat λ as a constant, as MORE does,
and ``jax.grad`` of a loss that uses λ works (its derivative through λ is zero). Starting at the uniform point makes degenerate inputs (zero or identical
gradients, where every λ on a face is optimal) return a deterministic answer: uniform when nothing improves on it.
Measured (docs/methods/more.md): worst KKT residual 7e-16 over 200 random float64 problems with K in 3..16
(well-conditioned, rank-deficient, strongly correlated and badly scaled gradients); projected-gradient FISTA alone,
by contrast, stalls at 1e-5 after 200 steps on the badly scaled ones. ``fista_iters`` optional FISTA steps
(accelerated projected gradient with :func:`optax.projections.projection_simplex`, step ``1/||G||_F``, gradient
restart) can warm-start it; they are off by default because they cost more than they save at K <= 16.

K = 2 uses the exact closed form ``γ = clip((g2·g2 − g1·g2)/‖g1 − g2‖², 0, 1)``, ``λ = (γ, 1 − γ)`` (γ = 1/2 when
g1 = g2, where every γ is optimal). K = 1 returns ``[1]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from optax.projections import projection_simplex

__all__ = [
    "min_norm_weights",
    "gram_min_norm_weights",
    "min_norm_kkt_residual",
    "normalize_rows",
    "ema_update",
]



def _check_gram(gram: jax.Array) -> jax.Array:
    gram = jnp.asarray(gram)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram must be a square [K, K] matrix with K >= 1, got shape {gram.shape}")
    # At least float32: a bf16/fp16 Gram cannot resolve the QP (and integer input is promoted).
    return gram.astype(jnp.promote_types(gram.dtype, jnp.float32))


def _check_grads(grads: jax.Array) -> jax.Array:
    grads = jnp.asarray(grads)
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads must be a [K, P] matrix with K >= 1 (flatten each gradient first), got {grads.shape}")
    return grads.astype(jnp.promote_types(grads.dtype, jnp.float32))


def _matvec(matrix: jax.Array, vector: jax.Array) -> jax.Array:
    # Products + sum instead of `@`: under vmap a matvec becomes a batched dot_general, which XLA:CPU runs far slower
    # than this fused elementwise form on K <= 16 (docs/benchmarks.md); it is also exact-precision on TPU.
    return jnp.sum(matrix * vector[None, :], axis=-1)


def _quad(matrix: jax.Array, vector: jax.Array) -> jax.Array:
    return jnp.sum(vector * _matvec(matrix, vector))


def normalize_rows(grads: jax.Array) -> jax.Array:
    """L2-normalise each row of ``grads`` ``[K, P]``; an all-zero row stays zero.

    This is the ``"l2"`` gradient normaliser of MORE's released code (a zero norm is treated as 1 there too).
    """
    grads = _check_grads(grads)
    norms = jnp.linalg.norm(grads, axis=-1, keepdims=True)
    return grads / jnp.where(norms > 0, norms, 1.0)


def ema_update(ema: jax.Array, grads: jax.Array, *, decay: float = 0.99) -> jax.Array:
    """Exponential moving average of per-objective gradients: ``decay * ema + (1 - decay) * grads``.

    MORE's released code keeps ``m_k ← (1 − α) m_k + α g_k`` per dataset before L2-normalising the ``m_k`` and solving
    the min-norm QP (docs/methods/more.md: α = 0.99 weighs the *new* gradient, i.e. ``decay = 1 − α = 0.01``). Pure function: the caller
    carries ``ema`` (shape of ``grads``, e.g. ``[K, P]``) in its train state. Note the released code initialises
    ``m_k`` to the head's initial weights; initialising with zeros or the first gradient is the caller's choice.

    Args:
      ema: running average, any shape.
      grads: new gradients, same shape as ``ema``.
      decay: weight of the old average, in [0, 1].

    Returns:
      The updated average, same shape and dtype as ``ema``.
    """
    if not isinstance(decay, jax.core.Tracer) and not 0.0 <= float(np.asarray(decay)) <= 1.0:  # traced: passes
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    ema = jnp.asarray(ema)
    grads = jnp.asarray(grads)
    if ema.shape != grads.shape:
        raise ValueError(f"ema and grads must have the same shape, got {ema.shape} and {grads.shape}")
    return (decay * ema + (1.0 - decay) * grads).astype(ema.dtype)


def min_norm_kkt_residual(gram: jax.Array, weights: jax.Array) -> jax.Array:
    """Scale-free KKT residual of ``weights`` for ``min_{λ∈Δ} λᵀGλ``.

    With ``f = λᵀGλ`` and ``v = Gλ`` the optimality conditions are ``v_i ≥ f`` for all i (no vertex improves on λ)
    and ``λ_i (v_i − f) = 0`` (equality on the support). The residual is

    .. math:: r = \\max\\big(\\max_i (f - v_i)_+,\\; \\max_i \\lambda_i |v_i - f|,\\; |1^\\top\\lambda - 1|\\cdot s,
              \\; \\max_i(-\\lambda_i)_+ \\cdot s\\big) / s, \\qquad s = \\max_i G_{ii}

    (s = 1 when G = 0), so ``r ≤ 1e-6`` means relative accuracy 1e-6 whatever the gradients' scale.

    Args:
      gram: ``[K, K]`` symmetric PSD Gram matrix.
      weights: ``[K]`` candidate weights.

    Returns:
      Scalar residual, dtype of ``gram``.
    """
    gram = _check_gram(gram)
    weights = jnp.asarray(weights, gram.dtype)
    scale = jnp.max(jnp.diagonal(gram))
    scale = jnp.where(scale > 0, scale, 1.0)
    v = _matvec(gram, weights)
    f = jnp.sum(weights * v)
    dual = jnp.max(jnp.maximum(f - v, 0.0))
    slack = jnp.max(jnp.abs(weights) * jnp.abs(v - f))
    primal = jnp.maximum(jnp.abs(jnp.sum(weights) - 1.0), jnp.max(jnp.maximum(-weights, 0.0))) * scale
    return jnp.maximum(jnp.maximum(dual, slack), primal) / scale


def _fista(gram: jax.Array, lam: jax.Array, num_iters: int) -> jax.Array:
    """``num_iters`` FISTA steps with adaptive restart on the simplex, from ``lam``. ``gram`` is pre-scaled (L = 1)."""

    def body(_, carry):
        x, y, t = carry
        x_new = projection_simplex(y - _matvec(gram, y))
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        # Gradient restart: if the momentum step points uphill, drop the momentum (O'Donoghue & Candes 2015).
        restart = jnp.dot(y - x_new, x_new - x) > 0
        t_new = jnp.where(restart, 1.0, t_new)
        y_new = jnp.where(restart, x_new, x_new + ((t - 1.0) / t_new) * (x_new - x))
        return x_new, y_new, t_new

    one = jnp.ones((), gram.dtype)
    x, _, _ = jax.lax.fori_loop(0, num_iters, body, (lam, lam, one))
    return x


def _affine_minimizer(gram: jax.Array, support: jax.Array) -> jax.Array:
    """``argmin_{α: 1ᵀα = 1, α_i = 0 off support} αᵀGα`` by one (K+1) x (K+1) KKT solve."""
    k = gram.shape[0]
    dtype = gram.dtype
    eye = jnp.eye(k, dtype=dtype)
    both = support[:, None] & support[None, :]
    # A tiny ridge keeps the KKT matrix invertible when the support's gradients are affinely dependent (repeated or
    # collinear gradients); it then picks the minimiser of smallest ‖α‖, and shifts the objective by O(eps * scale).
    ridge = 16 * jnp.finfo(dtype).eps * jnp.maximum(jnp.max(jnp.diagonal(gram)), jnp.finfo(dtype).tiny)
    g_ss = jnp.where(both, gram + ridge * eye, eye)  # off-support rows/cols: identity, so those α solve to 0
    ones = support.astype(dtype)
    kkt = jnp.block([[g_ss, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), dtype)]])
    rhs = jnp.concatenate([jnp.zeros((k,), dtype), jnp.ones((1,), dtype)])
    alpha = jnp.linalg.solve(kkt, rhs)[:k]
    return jnp.where(support, alpha, 0.0)


def _active_set(gram: jax.Array, lam: jax.Array, num_iters: int) -> jax.Array:
    """Wolfe's (1976) minimum-norm-point active-set method in Gram form, warm-started at ``lam``, fixed steps.

    Each step solves the affine minimiser α on the support S. If α ≥ 0 it is accepted and the most violating vertex
    ``j = argmin_i (Gλ)_i`` joins S when ``(Gλ)_j < λᵀGλ − tol`` ("major" step); otherwise λ moves towards α until a
    weight hits 0 and that index leaves S ("minor" step). The objective never increases, and once λ is optimal every
    further step is a no-op, which is what makes a fixed step count safe under jit.
    """
    dtype = gram.dtype
    scale = jnp.maximum(jnp.max(jnp.diagonal(gram)), jnp.finfo(dtype).tiny)
    tol = 64 * jnp.finfo(dtype).eps * scale

    def body(_, carry):
        lam, support = carry
        f_lam = _quad(gram, lam)
        alpha = _affine_minimizer(gram, support)
        f_alpha = _quad(gram, alpha)
        # Moves must strictly improve: on degenerate faces (identical or collinear gradients) the KKT solve is
        # ill-conditioned and its α is only as good as λ, so λ is kept and the answer stays deterministic.
        improves = jnp.all(jnp.isfinite(alpha)) & (f_alpha < f_lam - tol)
        feasible = jnp.all(jnp.where(support, alpha >= 0, True))
        accept = improves & feasible
        # Major step (λ optimal on its face, or α accepted): add the best vertex if it improves on the new point.
        point = jnp.where(accept, alpha, lam)
        v = _matvec(gram, point)
        j = jnp.argmin(v)
        add = (v[j] < jnp.sum(point * v) - tol) & (accept | ~improves)
        major_support = support.at[j].set(support[j] | add)
        # Minor step (α improves but leaves the simplex): largest θ with λ + θ(α − λ) ≥ 0; the blocker leaves S.
        shrinking = support & (alpha < 0)
        ratios = jnp.where(shrinking, lam / jnp.where(shrinking, lam - alpha, 1.0), jnp.inf)
        theta = jnp.clip(jnp.min(ratios), 0.0, 1.0)
        keep = support & (ratios > theta)
        minor_lam = jnp.where(keep, jnp.maximum(lam + theta * (alpha - lam), 0.0), 0.0)
        minor_lam = minor_lam / jnp.sum(minor_lam)
        minor = improves & ~feasible
        new_lam = jnp.where(minor, minor_lam, point)
        new_support = jnp.where(minor, keep, major_support)
        return new_lam, new_support

    # Once a step changes nothing, every later step is a no-op (same λ, same support), so stopping there returns
    # bit-for-bit what the full ``num_iters`` steps would: the while loop is only a shortcut (under vmap it runs
    # until the slowest problem of the batch is done). Typical problems settle in a few steps, far below 2K + 2.
    def cond(carry):
        step, _, _, changed = carry
        return (step < num_iters) & changed

    def step_fn(carry):
        step, lam, support, _ = carry
        new_lam, new_support = body(step, (lam, support))
        changed = jnp.any(new_lam != lam) | jnp.any(new_support != support)
        return step + 1, new_lam, new_support, changed

    init = (jnp.zeros((), jnp.int32), lam, lam > 0, jnp.ones((), bool))
    _, lam, _, _ = jax.lax.while_loop(cond, step_fn, init)
    return lam


def _two_objective_weights(num: jax.Array, dist_sq: jax.Array) -> jax.Array:
    """Closed form for K = 2: ``γ = clip(num/‖g1 − g2‖², 0, 1)``, ``num = g2·(g2 − g1)``; γ = 1/2 when g1 = g2."""
    safe = jnp.where(dist_sq > 0, dist_sq, 1.0)
    gamma = jnp.where(dist_sq > 0, jnp.clip(num / safe, 0.0, 1.0), 0.5)
    return jnp.stack([gamma, 1.0 - gamma])


@custom_vmap
def _gram(grads: jax.Array) -> jax.Array:
    """``grads gradsᵀ`` ``[K, K]``; the formulation depends on batching (see ``_gram_batched``)."""
    # Unbatched: one 2-D matmul (a BLAS/Eigen call on CPU; HIGHEST avoids bf16-like passes on TPU/GPU).
    gram = jnp.matmul(grads, grads.T, precision=jax.lax.Precision.HIGHEST)
    return 0.5 * (gram + gram.T)


@_gram.def_vmap
def _gram_batched(axis_size: int, in_batched: list[bool], grads: jax.Array) -> tuple[jax.Array, bool]:
    # Under vmap a matmul becomes a batched dot_general, which XLA:CPU runs 3-20x slower than either alternative
    # (docs/benchmarks.md): on CPU, a sequential map of 2-D matmuls (K >= 3) or products + sum fused into one
    # reduction (K = 2, where the matmul call overhead dominates); on GPU/TPU, the fused products, exact in the input
    # dtype and fully parallel (a sequential map would serialise there).
    del axis_size
    if not in_batched[0]:
        return _gram(grads), False

    def fused(g):
        gram = jnp.sum(g[:, :, None, :] * g[:, None, :, :], axis=-1)  # [B, K, K]
        return 0.5 * (gram + jnp.swapaxes(gram, -1, -2))

    if grads.shape[1] <= 2:
        return fused(grads), True
    return jax.lax.platform_dependent(grads, cpu=lambda g: jax.lax.map(_gram, g), default=fused), True


def _info(gram: jax.Array, lam: jax.Array) -> dict[str, jax.Array]:
    return {"min_norm_sq": _quad(gram, lam), "kkt_residual": min_norm_kkt_residual(gram, lam)}


def gram_min_norm_weights(
    gram: jax.Array,
    *,
    num_iters: int | None = None,
    fista_iters: int = 0,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """Min-norm simplex weights from a precomputed Gram matrix ``G = grads gradsᵀ``.

    Solves ``argmin_{λ∈Δ^K} λᵀGλ`` by ``num_iters`` steps of Wolfe's active-set method, optionally warm-started by
    ``fista_iters`` FISTA steps (see the module docstring). Fixed work, no host round trips: jit and vmap are fine.
    K = 2 uses the closed form ``γ = clip((G22 − G12)/(G11 + G22 − 2 G12), 0, 1)``.

    Args:
      gram: ``[K, K]`` symmetric positive semidefinite matrix.
      num_iters: active-set steps (static); ``None`` means ``2K + 2``.
      fista_iters: FISTA warm-start steps (static), default 0.
      return_info: also return ``{"min_norm_sq": λᵀGλ, "kkt_residual": min_norm_kkt_residual(G, λ)}``.

    Returns:
      ``λ`` ``[K]`` on the simplex (and the info dict when asked).
    """
    gram = _check_gram(gram)
    if fista_iters < 0 or (num_iters is not None and num_iters < 0):
        raise ValueError(f"iteration counts must be >= 0, got num_iters={num_iters}, fista_iters={fista_iters}")
    k = gram.shape[0]
    # λ is a constant for the caller (MORE holds it fixed); stopping the gradient here also keeps reverse-mode
    # autodiff of a surrounding loss away from the while loop, which JAX cannot transpose.
    gram = jax.lax.stop_gradient(gram)
    # Symmetrise: round-off in G = A Aᵀ can make it slightly asymmetric, and the solver assumes symmetry.
    gram = 0.5 * (gram + gram.T)
    if k == 1:
        lam = jnp.ones((1,), gram.dtype)
    elif k == 2:
        # G11 + G22 − 2 G12 = ‖g1 − g2‖²; exactly 0 for identical rows (same products, same summation order).
        dist_sq = jnp.maximum(gram[0, 0] + gram[1, 1] - 2.0 * gram[0, 1], 0.0)
        lam = _two_objective_weights(gram[1, 1] - gram[0, 1], dist_sq)
    else:
        lam = _solve_general(gram, 2 * k + 2 if num_iters is None else num_iters, fista_iters)
    # NaN/inf gradients would otherwise leave the uniform start untouched (every comparison is False): make the
    # failure visible instead.
    lam = jnp.where(jnp.all(jnp.isfinite(gram)), lam, jnp.nan)
    return (lam, _info(gram, lam)) if return_info else lam


def _solve_general(gram: jax.Array, num_iters: int, fista_iters: int) -> jax.Array:
    k = gram.shape[0]
    # ||G||_F >= λ_max(G): step 1/L is safe; scaling G by 1/L lets FISTA use unit steps. tiny guards G = 0.
    lip = jnp.maximum(jnp.sqrt(jnp.sum(gram * gram)), jnp.finfo(gram.dtype).tiny)
    scaled = gram / lip
    lam = jnp.full((k,), 1.0 / k, gram.dtype)
    if fista_iters:
        lam = _fista(scaled, lam, fista_iters)
    return _active_set(scaled, lam, num_iters)


def min_norm_weights(
    grads: jax.Array,
    *,
    num_iters: int | None = None,
    fista_iters: int = 0,
    normalize: bool = False,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """Weights of the minimum-norm convex combination of K gradients (MGDA; MORE's λ).

    .. math:: \\lambda^\\star = \\arg\\min_{\\lambda\\in\\Delta^K} \\big\\|\\lambda^\\top \\mathrm{grads}\\big\\|_2^2

    The QP is solved on the K x K Gram matrix (:func:`gram_min_norm_weights`); K = 2 uses the closed form
    ``γ = clip((g2·g2 − g1·g2)/‖g1 − g2‖², 0, 1)``. Zero, identical and collinear gradients give finite weights on the simplex attaining the
    minimal norm (uniform weights when every point is optimal). Non-finite gradients give NaN weights. Inputs below
    float32 (bf16, fp16) are promoted to float32.

    Args:
      grads: ``[K, P]``, one flattened gradient per objective (e.g. MORE's per-dataset head gradients).
      num_iters: active-set steps (static; K >= 3 only); ``None`` means ``2K + 2``.
      fista_iters: FISTA warm-start steps (static; K >= 3 only), default 0.
      normalize: L2-normalise each gradient first (:func:`normalize_rows`), as MORE's released code does.
      return_info: also return ``{"min_norm_sq", "kkt_residual"}`` (see :func:`min_norm_kkt_residual`).

    Returns:
      ``λ`` ``[K]``, nonnegative, summing to 1 (and the info dict when asked).

    Example:
      >>> import jax.numpy as jnp
      >>> min_norm_weights(jnp.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
      [0.5, 0.5]
    """
    # No gradient flows through λ (see gram_min_norm_weights); stopping it before the Gram also keeps autodiff away
    # from the custom batching rule of ``_gram``.
    grads = jax.lax.stop_gradient(_check_grads(grads))
    if normalize:
        grads = normalize_rows(grads)
    return gram_min_norm_weights(_gram(grads), num_iters=num_iters, fista_iters=fista_iters, return_info=return_info)
