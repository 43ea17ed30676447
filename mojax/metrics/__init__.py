"""Evaluation metrics: exact hypervolume and Pareto fronts (host NumPy); NDCG, calibration, preference accuracy and
win rates (JAX)."""

from mojax.metrics.hypervolume import hypervolume, pareto_front

__all__ = ["hypervolume", "pareto_front"]
