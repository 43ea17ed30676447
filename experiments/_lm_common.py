"""What the language-model experiments share (Stable PO, SPO, MORE, COS-DPO LLM), in one import.

The pieces, in the order an experiment uses them (each in its own module, all re-exported here so an experiment
writes ``from experiments import _lm_common as lm``):

1. **Task and base policy** (:mod:`experiments._lm_policy`). The task is a
   :class:`mojax.data.synthetic_lm.SyntheticLMConfig` (known true rewards ``R_k``, Bradley–Terry pairs per
   dimension, an SFT corpus); :func:`sft_policy` builds the tiny decoder of :class:`ModelConfig` (or loads the real
   checkpoint at ``data.model_path`` of the shared :class:`experiments._common.RealData` block) and fits it by SFT,
   caching the parameters keyed by every config field that affects them, so every experiment and method starts
   from the *same* π_0; :func:`real_policy` does the same on the real files of a ``RealData`` block.
2. **Pairs** (:mod:`experiments._lm_data`): a :class:`PairData` collated once into fixed-width arrays (one
   compiled step per method); :func:`with_ref_logps` attaches cached log-probs of earlier models (π_0 for DPO,
   π_0..π_{n−1} for SPO).
3. **Training** (:mod:`experiments._lm_train`): :func:`train` runs a library objective through
   :func:`mojax.train.fit` in memory, its hyper-parameters given per run (``hparams``), so one compiled step serves
   a whole sweep (DPO-LS's 11 weights, SPO's α values, Stable PO's λ values).
4. **Evaluation** (:mod:`experiments._lm_eval`): :func:`pair_logps`, :func:`sample_and_score` (true rewards of
   sampled responses), :func:`win_rates`, :func:`front_hypervolume`.

5. **Precision** (:class:`Precision`): the mixed-precision policy shared by every LM experiment config — compute
   dtype and parameter storage dtype (float32 master weights and optimizer state follow automatically in
   :func:`mojax.train.fit`, :mod:`mojax.train.precision`); ``config.precision.apply(policy)`` after SFT.

Everything is deterministic given the config seeds.
"""


from experiments._lm_data import (
    PairData,
    check_real_data,
    chosen_first,
    collate_pairs,
    compact_vocabulary,
    concat_pairs,
    iterate_batches,
    pad_width,
    real_pairs,
    remap_tokens,
    split_pairs,
    synthetic_pairs,
    synthetic_width,
)
from experiments._lm_eval import (
    at_weight,
    front_hypervolume,
    left_pad,
    make_logps_fn,
    pair_logps,
    sample_and_score,
    token_nll,
    win_rates,
    with_ref_logps,
)
from experiments._lm_policy import (
    CACHE_VERSION,
    Precision,
    QUICK_MODEL,
    ExperimentConfig,
    QUICK_SFT,
    ModelConfig,
    SFTConfig,
    build_decoder,
    config_key,
    real_policy,
    sft_corpus,
    sft_policy,
)
from experiments._lm_train import (
    History,
    OptimizerConfig,
    TrainConfig,
    copy_model,
    default_cache_dir,
    enable_compilation_cache,
    load_model,
    load_params,
    save_params,
    train,
)
from mojax.models import load_tokenizer


__all__ = [
    "CACHE_VERSION", "ExperimentConfig", "History", "ModelConfig", "OptimizerConfig", "PairData", "Precision",
    "QUICK_MODEL",
    "QUICK_SFT", "SFTConfig", "TrainConfig", "at_weight", "build_decoder", "check_real_data", "chosen_first",
    "collate_pairs", "compact_vocabulary", "concat_pairs", "config_key", "copy_model", "default_cache_dir",
    "enable_compilation_cache", "front_hypervolume", "iterate_batches", "left_pad", "load_model", "load_params",
    "load_tokenizer", "make_logps_fn", "pad_width", "pair_logps", "real_pairs", "real_policy", "remap_tokens",
    "sample_and_score", "save_params", "sft_corpus", "sft_policy", "split_pairs", "synthetic_pairs",
    "synthetic_width", "token_nll", "train", "win_rates", "with_ref_logps",
]
