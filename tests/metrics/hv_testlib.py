"""Independent hypervolume references shared by the metrics tests (not a test module)."""

from __future__ import annotations

import numpy as np


def grid_count(points, ref, hi):
    """Count unit cells [c, c+1)^K with c >= ref that lie under some point (integer coordinates)."""
    k = len(ref)
    axes = [np.arange(ref[d], hi) for d in range(k)]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, k)  # lower corners
    covered = np.zeros(len(cells), dtype=bool)
    for p in points:
        covered |= np.all(cells + 1 <= p, axis=1)
    return float(covered.sum())
