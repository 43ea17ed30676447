"""Input side of mojax: readers, LETOR parser, tokenisation, Grain pipelines, bad-input reports, synthetic tasks.

Sequence batches follow docs/contracts.md: ``input_ids / attention_mask / loss_mask [B, N, T]``,
``labels [B, K, N]``, ``dataset_id [B]``, ``example_mask [B]``; ranking batches ``features [B, L, F]``,
``where [B, L]``, ``labels [B, K, L]``.
"""

from mojax.data.letor import LetorConfig, RankingData, normalize_features, read_letor
from mojax.data.pipeline import PipelineConfig, make_dataset, make_iterator, num_batches, stack_records
from mojax.data.readers import (PreferenceExample, ReaderConfig, TokenizedExample, holdout_split, read_preferences,
                                select_objective)
from mojax.data.formats import FORMATS, detect_format
from mojax.data.report import DataError, DataReport, NoUsableDataError
from mojax.data.synthetic_lm import (SyntheticLMConfig, SyntheticPairs, make_dimension_pairs, make_lists,
                                     make_mixture, make_pairs, make_sft_corpus, true_rewards)
from mojax.data.synthetic_ltr import SyntheticLTRConfig, make_ranking_data
from mojax.data.tokenize import (TokenizeConfig, bucket_length, collate, load_tokenized, load_tokenized_files,
                                 tokenize_examples, truncate_examples)

__all__ = [
    "DataError", "NoUsableDataError", "DataReport", "FORMATS", "detect_format",
    "PreferenceExample", "TokenizedExample", "ReaderConfig", "read_preferences", "select_objective", "holdout_split",
    "LetorConfig", "RankingData", "read_letor", "normalize_features",
    "TokenizeConfig", "tokenize_examples", "truncate_examples", "collate", "bucket_length",
    "load_tokenized", "load_tokenized_files",
    "PipelineConfig", "make_dataset", "make_iterator", "num_batches", "stack_records",
    "SyntheticLMConfig", "SyntheticPairs", "true_rewards", "make_pairs", "make_dimension_pairs", "make_mixture",
    "make_sft_corpus", "make_lists",
    "SyntheticLTRConfig", "make_ranking_data",
]
