"""Evaluation metrics: exact hypervolume and Pareto fronts (host NumPy); NDCG, calibration error, preference
accuracy and win rates (JAX, jittable)."""

from mojax.metrics.calibration import expected_calibration_error
from mojax.metrics.hypervolume import hypervolume, pareto_front
from mojax.metrics.preference import preference_accuracy, win_rate
from mojax.metrics.ranking import ndcg

__all__ = [
    "expected_calibration_error",
    "hypervolume",
    "ndcg",
    "pareto_front",
    "preference_accuracy",
    "win_rate",
]
