"""Benchmark: jitted min-norm QP (mojax.solvers.min_norm_weights) vs scipy SLSQP and MORE's NumPy Frank-Wolfe.

Run:  .venv/bin/python benchmarks/min_norm.py [--num-problems 1000] [--rounds 5]

For K in {2, 5, 16} objectives and P = 4,096 parameters, draws ``num_problems`` random problems (L2-normalised
gradients sharing a common component, so the optimum mixes interior and boundary weights), then times

* mojax, batched: one jitted ``vmap`` over all problems (Gram included), per solve = total / num_problems;
* mojax, QP only: the same on precomputed Gram matrices (``gram_min_norm_weights``), against the peers' QP part
  (each peer also handed the Gram), to separate the solver from the O(K² P) Gram that every method pays;
* mojax, single call: one jitted solve of one problem, dispatch and transfer included (latency);
* scipy: ``scipy.optimize.minimize(method="SLSQP")`` on the simplex with the analytic gradient, per problem;
* MORE FW: a NumPy port of the Frank-Wolfe solver in MORE's released ``min_norm_solvers.py`` (Gram by one matmul,
  best pair by the clamped 2-point rule, then <= 1000 FW steps with exact line search, stop at L1 change < 1e-5);
* read floor: one jitted pass that only reads every gradient once (``sum(g * g)``), per problem. No solver that
  looks at the gradients can beat it, so ``peer / floor`` is the largest end-to-end speedup any implementation
  could show against the faster peer on this machine (the column that explains a missed 10x at small K).

All in float64. Rounds alternate between the methods; the table reports medians. Objectives are compared per problem
(``λᵀGλ``, max absolute difference to mojax). The last line is ``min_norm_speedup=<min over K of peer/mojax>``
where "peer" is the faster of the two peers per solve and mojax is the batched per-solve time.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

jax.config.update("jax_enable_x64", True)

from mojax.solvers import gram_min_norm_weights, min_norm_weights  # noqa: E402  (after enabling x64)

P = 4096


def make_problems(num: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(num, 1, P))
    grads = rng.normal(size=(num, k, P)) + rng.uniform(0.0, 1.5, size=(num, 1, 1)) * common
    return grads / np.linalg.norm(grads, axis=-1, keepdims=True)


def scipy_solve(grads: np.ndarray) -> np.ndarray:
    return scipy_gram_solve(grads @ grads.T)


def scipy_gram_solve(gram: np.ndarray) -> np.ndarray:
    k = gram.shape[0]
    res = minimize(
        lambda lam: lam @ gram @ lam,
        np.full(k, 1.0 / k),
        jac=lambda lam: 2.0 * gram @ lam,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0, "jac": lambda lam: np.ones(k)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return res.x


def _two_point(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    # MORE / MGDA rule for min_c |c x1 + (1 - c) x2|², with the released code's 0.999 / 0.001 clamps.
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def more_frank_wolfe(grads: np.ndarray, max_iter: int = 1000, stop_crit: float = 1e-5) -> np.ndarray:
    """NumPy port of MORE's ``MinNormSolver.find_min_norm_element_FW`` (host solve, as run once per train step)."""
    return more_frank_wolfe_gram(grads @ grads.T, max_iter, stop_crit)


def more_frank_wolfe_gram(gram: np.ndarray, max_iter: int = 1000, stop_crit: float = 1e-5) -> np.ndarray:
    n = gram.shape[0]
    dmin, sol = 1e8, None
    for i in range(n):
        for j in range(i + 1, n):
            c, d = _two_point(gram[i, i], gram[i, j], gram[j, j])
            if d < dmin:
                dmin, sol = d, ((i, j), c)
    lam = np.zeros(n)
    lam[sol[0][0]] = sol[1]
    lam[sol[0][1]] = 1 - sol[1]
    if n < 3:
        return lam
    for _ in range(max_iter):
        t = int(np.argmin(gram @ lam))
        v1v1 = lam @ gram @ lam
        v1v2 = lam @ gram[:, t]
        v2v2 = gram[t, t]
        nc, _ = _two_point(v1v1, v1v2, v2v2)
        new = nc * lam
        new[t] += 1 - nc
        if np.sum(np.abs(new - lam)) < stop_crit:
            return lam
        lam = new
    return lam


def objectives(grads: np.ndarray, lams: np.ndarray) -> np.ndarray:
    gram = np.einsum("bkp,bjp->bkj", grads, grads)
    return np.einsum("bk,bkj,bj->b", lams, gram, lams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-problems", type=int, default=1000)
    parser.add_argument("--peer-problems", type=int, default=200, help="problems per timed peer round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    batched = jax.jit(jax.vmap(min_norm_weights))
    batched_gram = jax.jit(jax.vmap(gram_min_norm_weights))
    single = jax.jit(min_norm_weights)
    read_floor = jax.jit(lambda g: jnp.sum(g * g, axis=-1))  # touches every byte once, like the Gram must
    rows = []
    speedups = []
    for k in (2, 5, 16):
        grads = make_problems(args.num_problems, k, seed=k)
        grams = np.einsum("bkp,bjp->bkj", grads, grads)
        grads_dev = jax.device_put(jnp.asarray(grads))
        grams_dev = jax.device_put(jnp.asarray(grams))
        lam_jax = np.asarray(batched(grads_dev))  # compile + warm up
        lam_gram = np.asarray(batched_gram(grams_dev))
        singles = [jax.device_put(jnp.asarray(g)) for g in grads[:20]]  # committed per-problem arrays
        single(singles[0]).block_until_ready()
        read_floor(grads_dev).block_until_ready()
        obj_jax = objectives(grads, lam_jax)
        obj_gram = objectives(grads, lam_gram)
        obj_scipy = objectives(grads, np.stack([scipy_solve(g) for g in grads]))
        obj_fw = objectives(grads, np.stack([more_frank_wolfe(g) for g in grads]))
        times = {name: [] for name in ("batched", "qp", "single", "scipy", "fw", "scipy_qp", "fw_qp", "floor")}
        sub, sub_gram = grads[: args.peer_problems], grams[: args.peer_problems]

        def timed(name, fn, count):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / count)

        for _ in range(args.rounds):  # alternate the methods within every round
            timed("batched", lambda: batched(grads_dev).block_until_ready(), args.num_problems)
            timed("floor", lambda: read_floor(grads_dev).block_until_ready(), args.num_problems)
            timed("qp", lambda: batched_gram(grams_dev).block_until_ready(), args.num_problems)
            timed("single", lambda: [single(g).block_until_ready() for g in singles], len(singles))
            timed("scipy", lambda: [scipy_solve(g) for g in sub], len(sub))
            timed("fw", lambda: [more_frank_wolfe(g) for g in sub], len(sub))
            timed("scipy_qp", lambda: [scipy_gram_solve(g) for g in sub_gram], len(sub))
            timed("fw_qp", lambda: [more_frank_wolfe_gram(g) for g in sub_gram], len(sub))
        med = {name: float(np.median(v)) * 1e6 for name, v in times.items()}
        peer = min(med["scipy"], med["fw"])
        peer_qp = min(med["scipy_qp"], med["fw_qp"])
        speedups.append(peer / med["batched"])
        rows.append(
            f"{k} | {med['batched']:.2f} | {med['single']:.1f} | {med['scipy']:.1f} | {med['fw']:.1f} "
            f"| {peer / med['batched']:.1f}x | {peer / med['single']:.2f}x "
            f"| {med['qp']:.2f} | {med['scipy_qp']:.1f} | {med['fw_qp']:.1f} | {peer_qp / med['qp']:.0f}x "
            f"| {med['floor']:.2f} | {peer / med['floor']:.1f}x | {med['batched'] / med['floor']:.2f} "
            f"| {np.max(np.abs(obj_jax - obj_scipy)):.1e} | {np.max(obj_jax - obj_scipy):.1e} "
            f"| {np.max(np.abs(obj_gram - obj_scipy)):.1e} | {np.max(np.abs(obj_jax - obj_fw)):.1e}"
        )
    print(
        f"P={P}, problems={args.num_problems} (peers timed on {args.peer_problems}), rounds={args.rounds} "
        f"(medians), float64, devices={jax.devices()}; times in µs per solve"
    )
    print(
        "K | mojax vmap (with Gram) | mojax single call | scipy SLSQP | MORE FW | speedup vmap | speedup single "
        "| mojax QP-only vmap | scipy QP-only | FW QP-only | QP speedup "
        "| read floor | peer / floor (max possible speedup) | mojax / floor "
        "| max abs Δobj vs scipy | max(obj − scipy) | QP-only max abs Δobj vs scipy | max abs Δobj vs FW"
    )
    print("|".join(["---"] * 18))
    for row in rows:
        print(row)
    print(f"min_norm_speedup={min(speedups):.2f}")


if __name__ == "__main__":
    main()
