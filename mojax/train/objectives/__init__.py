"""Methods as objectives plugged into the one train step: ``objective(model, batch, rng) -> (loss, metrics)``.

Each factory returns a pure function (or a :class:`~mojax.train.step.StatefulObjective` for MORE) built from the
losses of :mod:`mojax.losses`. Every objective reports ``metrics["count"]`` — the number of examples (tokens for
SFT) its loss averages over — so gradient accumulation is a sum/count average (see :mod:`mojax.train.step`).

Sequence batches (docs/contracts.md) carry the responses on an explicit axis ``[B, N, T]``; all B·N
responses go through the model in **one** forward (the leading axes flattened), and sequence log-probs come from the
final hidden states and the unembedding matrix by :func:`mojax.losses.compact_sequence_logps_from_hidden` (chunked,
no ``[B·N, T, V]`` logits, and the LM head runs at loss positions only; ``compact=False`` selects
:func:`mojax.losses.sequence_logps_from_hidden`, which chunks every position). A language model here is any module
with ``model(input_ids [M, T], *, attention_mask, return_hidden=True, use_lora=..., **conditioning) -> [M, T, D]``
and ``model.unembedding() -> [D, V]``
(``mojax.models.Decoder``, ``ConditionedLM``).

Reference log-probs, three modes (``ref_mode``):

- ``"cached"`` — ``batch["ref_logps"]`` ``[B, N]`` (or ``[R, B, N]``; the last row is the reference), precomputed
  once by :mod:`mojax.train.ref_cache`;
- ``"model"`` — the model is an :class:`AnchoredPolicy` holding a frozen ``reference`` beside the ``policy``;
  the reference runs in the step under ``stop_gradient`` (train with ``wrt=AnchoredPolicy.trainable``);
- ``"lora"`` — the LoRA base: the same weights with ``use_lora=False`` (for a ``ConditionedLM``, its backbone
  without the prefix), under ``stop_gradient``.

Ranking batches (``features [B, L, F]``, ``where [B, L]``, ``labels [B, K, L]``) go to rankers
``model(features, where=, cond=) -> [B, L]`` through the ``ltr_*`` objectives.
"""


from mojax.train.objectives._common import (CHUNK_SIZE, MIN_CHUNK_LOGITS, REF_MODES, AnchoredPolicy, Batch,
                                            COSDPOSampling, example_mask, reference_logps, sample_conditioning,
                                            sequence_logps)
from mojax.train.objectives.preference import (bilevel_stable_po_objective, cos_dpo_objective, dpo_objective,
                                               listwise_dpo_objective, modpo_objective, sft_objective, spo_objective,
                                               stable_po_objective)
from mojax.train.objectives.ranking import ltr_cos_dpo_objective, ltr_listnet_objective, ltr_listwise_dpo_objective
from mojax.train.objectives.reward import bradley_terry_objective, more_objective

__all__ = [
    "AnchoredPolicy", "Batch", "CHUNK_SIZE", "COSDPOSampling", "MIN_CHUNK_LOGITS", "REF_MODES",
    "bilevel_stable_po_objective", "bradley_terry_objective", "cos_dpo_objective", "dpo_objective", "example_mask",
    "listwise_dpo_objective", "ltr_cos_dpo_objective", "ltr_listnet_objective", "ltr_listwise_dpo_objective",
    "modpo_objective", "more_objective", "reference_logps", "sample_conditioning", "sequence_logps", "sft_objective",
    "spo_objective", "stable_po_objective",
]
