"""Compiled hypervolume kernels (numba): an O(n log n) 3-D sweep, and for K ≥ 4 a dimension sweep recursing to it.

Imported only on the first ``hypervolume`` call that needs them, never by ``import mojax``: importing numba costs
~0.3 s and numba + llvmlite are ~210 MB installed, which is why they are an optional extra (``mojax[fast]``).
``cache=True`` stores the compiled machine code in ``__pycache__`` beside this file (or numba's user-wide cache
directory when that is read-only), so compilation (~8-11 s on the shared 2-core box, numba's own start-up included)
is paid once per installation rather than once per process; a cached load is ~0.1 s on top of numba's import.

The entry point ``hv(points [n, K], reference [K])``, K ≥ 3, takes maximised points and keeps only the rows strictly
above the reference in every coordinate, shifted so the reference is the origin: one compiled pass
instead of NumPy's mask / index / subtract, which cost more than the 3-D sweep itself at n = 1000 (reductions over a
3-wide axis run ~35 µs each). Duplicates and dominated points are allowed and contribute nothing.

3-D (the sweep of HV3D, Beume et al. 2009, with the x/y staircase kept as in HV3D+, Guerreiro & Fonseca 2018):
points are inserted in decreasing z. The 2-D staircase of the inserted points' (x, y) projections — the mutually
non-dominated ones, x increasing and y decreasing — is a doubly linked list over x ranks; its area ``A`` is kept
up to date, and ``HV = Σ_i A_i · (z_i − z_{i+1})`` with ``z_n = 0``. A new point finds its staircase predecessor (the
present point of largest x rank below its own) with a Fenwick tree over ranks (prefix count, then k-th present rank:
O(log n)); its successor is the predecessor's link. It is weakly dominated exactly when the successor's y is ≥ its
own (the successor has the largest y among staircase points of larger rank); otherwise it unlinks the predecessors
it weakly dominates (y ≤ its own; each point is unlinked at most once) and the area grows by its exclusive part:

    ΔA = (p_x − x_left) · (p_y − y_succ) − Σ_removed (x_j − x_{j−1}) · (y_j − y_succ)

where ``x_left`` is the x of the first surviving predecessor. Ranks order x ascending with ties by y ascending, so a
staircase point with p's x and a larger y comes after p in rank order (it is the successor, and dominates p) and one
with a smaller y comes before (p unlinks it); an exact duplicate of the predecessor is unlinked and replaced with
ΔA = 0. The staircase thus stays strictly monotone. Ties in z need nothing: the area after all tied points are in is
order-independent and the slabs between them have zero height.

K ≥ 4 (the dimension sweep of ``hypervolume._hv_sweep``): points in decreasing last coordinate; the (K−1)-D volume
of the slab front grows by each point's exclusive contribution ``vol(p) − HV_{K−1}(limit set)`` with limit set
``{min(q, p) : q in front}`` (While et al. 2012), computed by recursion without filtering (every level skips
dominated points itself). 4-D is O(n² log n); moocore's HV4D+ is O(n²) (docs/benchmarks.md).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["hv"]


@numba.njit(cache=True, nogil=True)
def _positive_part(pts, ref):
    """The rows of ``pts − ref`` that are > 0 in every coordinate, as a new C-contiguous array."""
    n, k = pts.shape
    out = np.empty((n, k))
    m = 0
    for i in range(n):
        keep = True
        for d in range(k):
            v = pts[i, d] - ref[d]
            out[m, d] = v
            keep = keep and v > 0.0
        m += keep
    return out[:m].copy()


@numba.njit(cache=True, nogil=True)
def _hv3d(pts):
    """3-D hypervolume of ``pts [n, 3]`` (> 0, reference 0) by the O(n log n) staircase sweep (module docstring)."""
    n = pts.shape[0]
    if n == 0:
        return 0.0
    # x ranks: x ascending, ties by y ascending. One quicksort on x and a pass that sorts each run of tied x by y
    # (rare in floats, common in integer data): the sorts are most of this kernel's time, and two stable sorts
    # (y, then x) measured 45 against ~25 µs at n = 1000.
    order = np.argsort(pts[:, 0])
    a = 0
    while a < n:
        b = a + 1
        while b < n and pts[order[b], 0] == pts[order[a], 0]:
            b += 1
        if b - a > 1:
            run = order[a:b].copy()
            run_y = np.empty(b - a)
            for t in range(b - a):
                run_y[t] = pts[run[t], 1]
            order[a:b] = run[np.argsort(run_y)]
        a = b
    rank = np.empty(n, dtype=np.int64)
    # Nodes 0..n-1 are x ranks; n and n+1 are the left and right sentinels: (0, +inf) is never dominated and gives
    # x_left = 0; (+inf, 0) never dominates (every y > 0) and gives y_succ = 0.
    node_x = np.empty(n + 2)
    node_y = np.empty(n + 2)
    for r in range(n):
        rank[order[r]] = r
        node_x[r] = pts[order[r], 0]
        node_y[r] = pts[order[r], 1]
    left, right = n, n + 1
    node_x[left], node_y[left] = 0.0, np.inf
    node_x[right], node_y[right] = np.inf, 0.0
    nxt = np.empty(n + 2, dtype=np.int64)
    prv = np.empty(n + 2, dtype=np.int64)
    nxt[left], prv[right] = right, left
    tree = np.zeros(n + 1, dtype=np.int64)  # Fenwick tree of presence counts, 1-based
    top = 1
    while top * 2 <= n:
        top *= 2
    by_z = np.argsort(-pts[:, 2])
    area = 0.0
    total = 0.0
    for i in range(n):
        p = by_z[i]
        r = rank[p]
        px, py = pts[p, 0], pts[p, 1]
        count = 0  # present ranks < r
        j = r
        while j > 0:
            count += tree[j]
            j -= j & -j
        if count == 0:
            pred = left
        else:  # the count-th present rank: descend the Fenwick tree
            pos = 0
            step = top
            while step > 0:
                if pos + step <= n and tree[pos + step] < count:
                    pos += step
                    count -= tree[pos]
                step >>= 1
            pred = pos
        succ = nxt[pred]
        if node_y[succ] < py:
            y_succ = node_y[succ]
            removed = 0.0
            q = pred
            while node_y[q] <= py:  # q has x <= p_x: weakly dominated by p (the left sentinel stops the walk)
                before = prv[q]
                removed += (node_x[q] - node_x[before]) * (node_y[q] - y_succ)
                j = q + 1
                while j <= n:
                    tree[j] -= 1
                    j += j & -j
                q = before
            area += (px - node_x[q]) * (py - y_succ) - removed
            nxt[q], prv[r], nxt[r], prv[succ] = r, q, succ, r
            j = r + 1
            while j <= n:
                tree[j] += 1
                j += j & -j
        z_next = pts[by_z[i + 1], 2] if i + 1 < n else 0.0
        total += area * (pts[p, 2] - z_next)
    return total


@numba.njit(cache=True, nogil=True)
def _limit_set(front, m, p, limit):
    """``{min(q, p) : q in front[:m]}`` less most of its dominated points, as a new C-contiguous array.

    A front point q with ``q_j ≥ p_j`` for every j but one coordinate d clips to p with coordinate d lowered to
    ``q_d``; the highest such one, ``t_d``, dominates every limit point whose coordinate d is ≤ ``t_d`` (all of them
    are ≤ p elsewhere). So only the points above every ``t_d``, plus those ≤ K−1 dominating corners, are kept: one
    O(m K) pass. On 4-D sphere fronts limit sets averaged 57 points of which ~5 were non-dominated, and the 3-D
    sweep's sorts were half its time.
    """
    km = p.shape[0]
    top = np.zeros(km)  # t_d; 0 (every coordinate is > 0) filters nothing
    has = np.zeros(km, dtype=np.bool_)
    for a in range(m):
        below = -1
        count = 0
        for d in range(km):
            limit[a, d] = min(front[a, d], p[d])
            if front[a, d] < p[d]:
                count += 1
                below = d
        if count == 1:  # count 0 would mean q dominates p, which the caller excluded
            has[below] = True
            top[below] = max(top[below], limit[a, below])
    kept = 0
    for a in range(m):
        keep = True
        for d in range(km):
            if limit[a, d] <= top[d]:
                keep = False
                break
        if keep:
            limit[kept] = limit[a]
            kept += 1
    for d in range(km):  # each corner replaces at least one of the points it removed: kept stays <= m
        if has[d]:
            limit[kept] = p
            limit[kept, d] = top[d]
            kept += 1
    return limit[:kept].copy()


@numba.njit(cache=True, nogil=True)
def _hv_nd(pts):
    """K-D hypervolume of ``pts [n, K]``, K >= 3 (> 0, reference 0): the 3-D sweep, or for K >= 4 a sweep on the last
    coordinate with exclusive (K−1)-D contributions on limit sets, recursing."""
    n, k = pts.shape
    if k == 3:
        return _hv3d(pts)
    by_last = np.argsort(-pts[:, k - 1])
    front = np.empty((n, k - 1))  # the slab's non-dominated points (first K − 1 coordinates), rows 0..m-1
    limit = np.empty((n, k - 1))
    m = 0
    volume = 0.0  # (K−1)-D hypervolume of the front
    total = 0.0
    for i in range(n):
        p = by_last[i]
        dominated = False  # an early out only: a dominated p's limit set contains p, so its contribution would be 0
        for a in range(m):
            dominated = True
            for d in range(k - 1):
                if front[a, d] < pts[p, d]:
                    dominated = False
                    break
            if dominated:
                break
        if not dominated:
            box = 1.0
            for d in range(k - 1):
                box *= pts[p, d]
            volume += box - (_hv_nd(_limit_set(front, m, pts[p, : k - 1], limit)) if m > 0 else 0.0)
            kept = 0
            for a in range(m):  # drop the front points p dominates weakly
                covered = True
                for d in range(k - 1):
                    if pts[p, d] < front[a, d]:
                        covered = False
                        break
                if not covered:
                    front[kept] = front[a]
                    kept += 1
            m = kept
            for d in range(k - 1):
                front[m, d] = pts[p, d]
            m += 1
        next_last = pts[by_last[i + 1], k - 1] if i + 1 < n else 0.0
        total += volume * (pts[p, k - 1] - next_last)
    return total


@numba.njit(cache=True, nogil=True)
def hv(pts, ref):
    """Hypervolume of the points ``[n, K]`` above ``ref [K]`` (maximisation), K >= 3."""
    return _hv_nd(_positive_part(pts, ref))
