"""mojax: multi-objective preference optimization for language and ranking models in JAX/Flax.

The pure array math (``mojax.losses``, ``mojax.metrics``, ``mojax.solvers``) is imported eagerly and its most used
functions are re-exported here; the heavier layers (``mojax.models``, ``mojax.data``, ``mojax.train``) load on first
attribute access so ``import mojax`` inside someone else's JAX code stays cheap.
"""

from mojax import losses, metrics, solvers
from mojax.losses import (
    bradley_terry_loss,
    compact_sequence_logps_from_hidden,
    dpo_loss,
    ipo_loss,
    lipo_lambda_loss,
    listnet_loss,
    listwise_dpo_loss,
    modpo_loss,
    preference_metrics,
    rescale_temperature,
    sample_simplex_weights,
    scalarized_loss,
    sequence_logps,
    sequence_logps_from_hidden,
    sft_loss,
    simpo_loss,
    spo_loss,
    stable_po_loss,
)
from mojax.metrics import expected_calibration_error, hypervolume, ndcg, pareto_front, preference_accuracy
from mojax.solvers import min_norm_weights

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bradley_terry_loss",
    "data",
    "compact_sequence_logps_from_hidden",
    "dpo_loss",
    "expected_calibration_error",
    "hypervolume",
    "ipo_loss",
    "lipo_lambda_loss",
    "listnet_loss",
    "listwise_dpo_loss",
    "losses",
    "metrics",
    "min_norm_weights",
    "models",
    "modpo_loss",
    "ndcg",
    "pareto_front",
    "preference_accuracy",
    "preference_metrics",
    "rescale_temperature",
    "sample_simplex_weights",
    "scalarized_loss",
    "sequence_logps",
    "sequence_logps_from_hidden",
    "sft_loss",
    "sharding",
    "simplex",
    "simpo_loss",
    "solvers",
    "spo_loss",
    "stable_po_loss",
    "train",
]


def __getattr__(name: str) -> object:
    """Load the heavier layers (models, data, train, sharding, simplex) on first access."""
    # Imported here, not at module level, so ``dir(mojax)`` shows only the public API (a test checks it).
    import importlib

    if name in ("models", "data", "train", "sharding", "simplex"):
        module = importlib.import_module(f"mojax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'mojax' has no attribute {name!r}")
