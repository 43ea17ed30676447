"""The shared real-data config block: the same fields (and so the same ``--data.*`` flags) in the CLI and every LM
experiment (``python -m mojax.train --data.data-paths a.jsonl --data.model-path ./gpt2``)."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["DataConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Real data and a real model by path; with no ``data_paths`` the caller uses its synthetic data.

    Attributes:
      data_paths: local preference files (JSONL / JSON / Parquet, optionally ``.gz``; any format of
        ``mojax.data.read_preferences``); how many a script takes (mixed, or one per objective, dimension or
        dataset) is stated in its docstring.
      data_format: record format of every file, or ``auto`` (detected per file): pairs (prompt, chosen, rejected),
        chat (chosen/rejected message lists), hh (HH-RLHF transcripts), pku (response_0/1 + <name>_response_id),
        listwise (prompt, responses, labels), tokenized (prompt_ids, response_ids), sharegpt (conversations of
        {from, value}), alpaca (instruction, input, chosen, rejected), ultrafeedback (scored completions),
        openai (messages / preferred_output); schemas in docs/data-formats.md.
      model_path: a Hugging Face model directory or a llama2.c ``.bin`` file instead of the tiny random decoder.
      tokenizer_path: tokenizer directory of the files; None = ``model_path``'s when it has one (pre-tokenized data
        needs none).
      max_length: token limit of prompt + response (prompt cut from the left, responses from the right).
      max_prompt_length: token limit of the prompt.
      max_examples: read at most this many records per file (None = all).
      eval_fraction: share of the distinct prompts held out for evaluation (0 = none; whole prompts, so no
        held-out prompt is trained on).
      eval_data_path: a separate evaluation file (same formats; replaces ``eval_fraction``).
    """

    data_paths: tuple[str, ...] = ()
    data_format: str = "auto"
    model_path: str | None = None
    tokenizer_path: str | None = None
    max_length: int = 128
    max_prompt_length: int = 96
    max_examples: int | None = None
    eval_fraction: float = 0.0
    eval_data_path: str | None = None

    def __post_init__(self):
        if isinstance(self.data_paths, str):  # one path given where a tuple is expected
            object.__setattr__(self, "data_paths", (self.data_paths,))
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 <= data.max_prompt_length < data.max_length, got {self.max_prompt_length}, "
                             f"{self.max_length}")
        if not (math.isfinite(self.eval_fraction) and 0 <= self.eval_fraction < 1):
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_data_path is not None and self.eval_fraction:
            raise ValueError("give data.eval_data_path or data.eval_fraction, not both")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"data.max_examples must be >= 1 or None, got {self.max_examples}")

    @property
    def real(self) -> bool:
        """Whether real files are given (else the caller's synthetic data)."""
        return bool(self.data_paths)

    @property
    def tokenizer_source(self) -> str | None:
        """Where the tokenizer comes from: ``tokenizer_path``, else ``model_path``."""
        return self.tokenizer_path if self.tokenizer_path is not None else self.model_path
