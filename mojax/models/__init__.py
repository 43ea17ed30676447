"""Decoder language models (GPT-2, Llama 2/3, Mistral, Qwen2, GPT-NeoX) in Flax NNX, Hugging Face import/export,
KV-cache generation and LoRA."""

from mojax.models.config import DecoderConfig, RopeScaling
from mojax.models.decoder import Decoder, KVCache, positions_from_mask
from mojax.models.generate import GenerateOutput, generate, top_p_filter
from mojax.models.hf import load_hf, load_llama2c, load_tokenizer, save_hf
from mojax.models.gguf import load_gguf, load_gguf_tokenizer
from mojax.models.lora import LoRAConfig, add_lora, merge_lora
from mojax.models.hpt import ConditionedLM, HPTConfig, HyperPromptTuning
from mojax.models.conditioning import (CONDITIONINGS, ConditionedPolicy, ConditioningConfig, build_conditioned,
                                     export_hf)
from mojax.models.reward import RewardModel
from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig, num_params

__all__ = [
    "DecoderConfig",
    "RopeScaling",
    "Decoder",
    "KVCache",
    "positions_from_mask",
    "GenerateOutput",
    "generate",
    "top_p_filter",
    "load_hf",
    "load_llama2c",
    "load_tokenizer",
    "save_hf",
    "load_gguf",
    "load_gguf_tokenizer",
    "LoRAConfig",
    "add_lora",
    "merge_lora",
    "HPTConfig",
    "HyperPromptTuning",
    "ConditionedLM",
    "CONDITIONINGS",
    "ConditioningConfig",
    "ConditionedPolicy",
    "build_conditioned",
    "export_hf",
    "RewardModel",
    "ListRankerConfig",
    "ListRanker",
    "AugmentedRanker",
    "num_params",
]
