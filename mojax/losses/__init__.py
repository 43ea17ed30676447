"""mojax.losses: pure array losses for preference optimisation (no models, no jit inside).

Contract (docs/contracts.md): arrays in, keyword-only options, a boolean ``where`` mask, ``reduce_fn``
(default ``jnp.mean`` over valid entries; ``None`` → per-example values with masked entries 0); all-masked input
gives 0 with finite gradients; ``return_metrics=True`` returns ``(loss, metrics)``.
"""

from mojax.losses._base import log_sigmoid, masked_log_softmax, masked_softmax, reduce_masked
from mojax.losses.cos_dpo import (
    modpo_loss,
    normalize_temperatures,
    rescale_temperature,
    sample_simplex_weights,
    scalarized_loss,
)
from mojax.losses.listwise import (
    LABEL_NORMS,
    lipo_lambda_loss,
    listnet_loss,
    listwise_dpo_loss,
    normalize_labels,
    pairwise_list_loss,
    ranks,
)
from mojax.losses.logps import (
    compact_sequence_logps_from_hidden,
    next_token_targets,
    sequence_logps,
    sequence_logps_from_hidden,
    sft_loss,
    sft_loss_from_logps,
    token_counts,
    token_logps,
)
from mojax.losses.pairwise import (
    DPO_PAIR_LOSSES,
    bradley_terry_loss,
    cpo_loss,
    dpo_hinge,
    dpo_ipo,
    dpo_loss,
    dpo_sigmoid,
    ipo_loss,
    pair_loss,
    preference_metrics,
    simpo_loss,
)
from mojax.losses.spo import spo_loss
from mojax.losses.stable_po import bilevel_objective, likelihood_hinge, stable_po_loss

__all__ = [
    "DPO_PAIR_LOSSES",
    "LABEL_NORMS",
    "bilevel_objective",
    "bradley_terry_loss",
    "compact_sequence_logps_from_hidden",
    "cpo_loss",
    "dpo_hinge",
    "dpo_ipo",
    "dpo_loss",
    "dpo_sigmoid",
    "ipo_loss",
    "likelihood_hinge",
    "lipo_lambda_loss",
    "listnet_loss",
    "listwise_dpo_loss",
    "log_sigmoid",
    "masked_log_softmax",
    "masked_softmax",
    "modpo_loss",
    "next_token_targets",
    "normalize_labels",
    "normalize_temperatures",
    "pair_loss",
    "pairwise_list_loss",
    "preference_metrics",
    "ranks",
    "reduce_masked",
    "rescale_temperature",
    "sample_simplex_weights",
    "scalarized_loss",
    "sequence_logps",
    "sequence_logps_from_hidden",
    "sft_loss",
    "sft_loss_from_logps",
    "simpo_loss",
    "spo_loss",
    "stable_po_loss",
    "token_counts",
    "token_logps",
]
