"""Methods as objectives plugged into the one train step: :class:`~mojax.train.Objective` ``(fn, hparams)`` with
``fn(model, batch, rng, hparams) -> (loss, metrics)``.

Each factory returns an ``Objective`` built from the losses of :mod:`mojax.losses`; the hyper-parameters that vary
across a sweep (β, α, λ, w, μ …) are its ``hparams``, traced inputs of the step (``TrainState.hparams``), so one
compiled step serves every value; static choices (loss type, label norm, reference mode, chunking) stay arguments
of the factory. Families: :mod:`.preference` (LM preference), :mod:`.ranking` (learning to rank), :mod:`.reward`
(reward models); the shared LM opening (:class:`LMOpening`) lives in :mod:`._common`. Every objective reports
``metrics["count"]`` — the number of examples (tokens for SFT) its loss averages over — so gradient accumulation is
a sum/count average (see :mod:`mojax.train.step`).

Sequence batches (docs/contracts.md) carry the responses on an explicit axis ``[B, N, T]``; all B·N
responses go through the model in **one** forward (the leading axes flattened), and sequence log-probs come from the
final hidden states and the unembedding matrix by :func:`policy_logps`
(:func:`mojax.losses.compact_sequence_logps_from_hidden`: chunked, no ``[B·N, T, V]`` logits, and the LM head runs
at loss positions only; ``compact=False`` selects :func:`mojax.losses.sequence_logps_from_hidden`, which chunks every
position). A language model here is any module
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
                                            COSDPOSampling, LMInputs, LMOpening, cached_fn, example_mask,
                                            policy_logps, reference_logps, sample_conditioning,
                                            shared_prompt_logps, split_shared_prompt)
from mojax.train.objectives.preference import (PAIR_LOSSES, bilevel_stable_po_objective, cos_dpo_objective, cpo_pairs,
                                               dpo_objective, dpo_pairs, listwise_dpo_objective, modpo_objective,
                                               scalarized_dpo_objective, sft_objective, simpo_pairs, spo_objective,
                                               stable_po_objective, value_gap_stable_po_objective)
from mojax.train.objectives.ranking import (ltr_cos_dpo_objective, ltr_listnet_objective, ltr_listwise_dpo_objective,
                                            ltr_modpo_objective, ltr_scalarized_dpo_objective)
from mojax.train.objectives.reward import bradley_terry_objective, more_objective
from mojax.train.step import Objective

__all__ = [
    "AnchoredPolicy", "Batch", "CHUNK_SIZE", "COSDPOSampling", "LMInputs", "LMOpening", "MIN_CHUNK_LOGITS",
    "shared_prompt_logps", "split_shared_prompt",
    "Objective", "PAIR_LOSSES", "REF_MODES", "bilevel_stable_po_objective", "bradley_terry_objective", "cached_fn",
    "cos_dpo_objective", "cpo_pairs", "dpo_objective", "dpo_pairs", "example_mask", "listwise_dpo_objective",
    "ltr_cos_dpo_objective", "ltr_listnet_objective", "ltr_listwise_dpo_objective", "ltr_modpo_objective",
    "ltr_scalarized_dpo_objective", "modpo_objective", "scalarized_dpo_objective",
    "more_objective", "policy_logps", "reference_logps", "sample_conditioning", "sft_objective", "simpo_pairs",
    "spo_objective", "stable_po_objective", "value_gap_stable_po_objective",
]
