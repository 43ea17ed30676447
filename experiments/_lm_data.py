"""Preference data of the language-model experiments: collated once into fixed-width NumPy arrays.

:class:`PairData` holds a whole dataset in the batch layout of ``docs`` (``input_ids``/``attention_mask``/
``loss_mask`` ``[E, N, T]``, ``labels [E, K, N]``, ``dataset_id [E]``, ``example_mask [E]``, optionally cached
reference log-probs ``ref_logps [E, R, N]``), padded to one width ``T`` so that every method's train step compiles
once. :func:`synthetic_pairs` labels pairs of the synthetic task (known true rewards) by Bradley–Terry on one
dimension; :func:`real_pairs` reads a local file (HH-RLHF, PKU-SafeRLHF, prompt/chosen/rejected, chat) configured
by the shared real-data block :class:`mojax.train.DataConfig` (the CLI's ``--data.*`` flags);
:func:`iterate_batches` feeds :func:`mojax.train.fit`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mojax.train.data_config import DataConfig
from mojax.data import synthetic_lm
from mojax.data.readers import ReaderConfig, TokenizedExample, read_preferences, select_objective
from mojax.data.report import DataReport
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.data.tokenize import TokenizeConfig, collate, tokenize_examples

__all__ = [
    "PairData",
    "check_real_data",
    "chosen_first",
    "collate_pairs",
    "compact_vocabulary",
    "concat_pairs",
    "iterate_batches",
    "pad_width",
    "real_pairs",
    "remap_tokens",
    "split_pairs",
    "synthetic_pairs",
    "synthetic_width",
]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PairData:
    """A preference (or SFT, N = 1) dataset collated once, every row padded to the same width ``T``.

    Attributes:
      arrays: the batch layout with a leading example axis E: ``input_ids``, ``attention_mask``, ``loss_mask``
        ``[E, N, T]``, ``labels [E, K, N]``, ``dataset_id [E]``, ``example_mask [E]``, and optionally
        ``ref_logps [E, R, N]`` (cached log-probs of R earlier models, see :func:`with_ref_logps`).
      prompts: the E prompts (int32 token arrays), for sampling from a policy on the same prompts.
      rewards: optional float32 ``[E, N, K_true]`` true rewards of each response (synthetic task).
      true_prob: optional ``[E, K_labels]`` true probability that response 0 is preferred (synthetic task).
    """

    arrays: Mapping[str, np.ndarray]
    prompts: Sequence[np.ndarray]
    rewards: np.ndarray | None = None
    true_prob: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.arrays["input_ids"].shape[0])

    @property
    def width(self) -> int:
        """The row width T."""
        return int(self.arrays["input_ids"].shape[-1])

    def subset(self, index: np.ndarray | Sequence[int]) -> PairData:
        """The examples at ``index`` (any order, repeats allowed)."""
        index = np.asarray(index)
        return PairData(arrays={k: v[index] for k, v in self.arrays.items()},
                        prompts=[self.prompts[i] for i in index],
                        rewards=None if self.rewards is None else self.rewards[index],
                        true_prob=None if self.true_prob is None else self.true_prob[index])

    def batch(self, index: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """The engine batch of the examples at ``index``: ``ref_logps`` moved to ``[R, B, N]`` (``[B, N]`` if R = 1)."""
        index = np.asarray(index)
        out = {k: v[index] for k, v in self.arrays.items()}
        if "ref_logps" in out:
            ref = np.moveaxis(out["ref_logps"], 1, 0)  # [R, B, N]
            out["ref_logps"] = ref[0] if ref.shape[0] == 1 else ref
        return out


def collate_pairs(examples: Sequence[TokenizedExample], *, width: int | None = None, pad_id: int = 0,
                  max_length: int = 512) -> dict[str, np.ndarray]:
    """Collate every example into one fixed-width array set (:func:`mojax.data.tokenize.collate`).

    ``width`` defaults to the power-of-two bucket of the longest example, so the whole dataset has one shape and the
    train step compiles once.
    """
    cfg = TokenizeConfig(max_length=max(max_length, width or 0), max_prompt_length=max(max_length, width or 0) - 1,
                         pad_id=pad_id, bucket="pow2", min_bucket=16)
    return collate(examples, cfg, length=width)


def synthetic_pairs(task: SyntheticLMConfig, *, dimension: int, num_pairs: int, seed: int) -> PairData:
    """``num_pairs`` base-distribution pairs labelled by Bradley–Terry on objective ``dimension`` only.

    Chosen first (labels ``[E, 1, 2]`` = ``[1, 0]``), ``dataset_id = dimension``; ``rewards [E, 2, K]`` keeps the true
    rewards of *every* objective (for agreement analyses such as SPO's Δu vs the earlier dimension) and
    ``true_prob [E, 1]`` the BT probability that the chosen response wins under ``dimension``.
    """
    if not 0 <= dimension < task.num_objectives:
        raise ValueError(f"dimension {dimension} out of range for the task's {task.num_objectives} objectives")
    full = synthetic_lm.make_pairs(task, num_pairs=num_pairs, seed=seed)
    one = full.select(dimension, dataset_id=dimension)
    # select() keeps only objective `dimension`'s rewards; reorder the full reward vectors the same way.
    swap = np.array([ex.labels[dimension, 1] > ex.labels[dimension, 0] for ex in full.examples])
    rewards = np.where(swap[:, None, None], full.rewards[:, ::-1, :], full.rewards)
    width = synthetic_width(task)
    return PairData(arrays=collate_pairs(one.examples, width=width, pad_id=synthetic_lm.PAD),
                    prompts=[ex.prompt_ids for ex in one.examples], rewards=rewards.astype(np.float32),
                    true_prob=one.true_prob)


def synthetic_width(task: SyntheticLMConfig) -> int:
    """Row width T of synthetic pairs: the power of two ≥ longest prompt + longest response (32 by default)."""
    need = task.max_prompt_length + task.max_response_length
    return 1 << (need - 1).bit_length()


def check_real_data(data: DataConfig, *, max_files: int | None = None) -> None:
    """What the LM experiments need of a real-data block beyond :class:`mojax.train.DataConfig`'s own checks: a
    tokenizer, a held-out share and at most ``max_files`` files (when real files are given).

    Raises:
      ValueError: with a one-line message naming the flag.
    """
    if not data.real:
        return
    if data.tokenizer_source is None:
        raise ValueError("real data (--data.data-paths) needs --data.tokenizer-path or a --data.model-path with a "
                         "tokenizer")
    if data.eval_fraction <= 0:
        raise ValueError(f"--data.eval-fraction must be > 0 (a held-out split), got {data.eval_fraction}")
    if max_files is not None and len(data.data_paths) > max_files:
        raise ValueError(f"--data.data-paths takes at most {max_files} file(s) here, got {len(data.data_paths)}")


def real_pairs(path: str | os.PathLike, tokenizer: Any, data: DataConfig, *, objective: int = 0,
               all_objectives: bool = False) -> tuple[PairData, DataReport]:
    """Real preference pairs from a local file tokenised by a real tokenizer, with ``data``'s limits and format.

    Over-long examples are truncated (prompt from the left, responses from the right) and counted in the report.

    Args:
      objective: the label row that puts the chosen response first (PKU-SafeRLHF: 0 = better (helpfulness), 1 =
        safer (harmlessness); HH files carry one row).
      all_objectives: keep every label row and the file's response order instead (COS-DPO: ``labels [E, K, 2]``).

    Returns:
      ``(pairs, report)`` with the reader/tokeniser :class:`DataReport`.

    Raises:
      ValueError: when no usable pair is left.
    """
    examples, report = read_preferences(path, ReaderConfig(format=data.data_format))
    if data.max_examples is not None:
        examples = examples[:data.max_examples]
    cfg = TokenizeConfig(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                         pad_id=int(getattr(tokenizer, "pad_token_id", None) or 0))
    tokenized, report = tokenize_examples(examples, tokenizer, cfg, report)
    if not all_objectives:
        tokenized = select_objective(tokenized, objective)
    if not tokenized:
        raise ValueError(f"{path}: no usable pair after tokenisation ({report.summary()})")
    return PairData(arrays=collate(tokenized, cfg), prompts=[ex.prompt_ids for ex in tokenized]), report


def pad_width(data: PairData, width: int) -> PairData:
    """``data`` with its token arrays right-padded (masked) to row width ``width`` ≥ ``data.width``."""
    if width < data.width:
        raise ValueError(f"cannot pad rows of width {data.width} down to {width}")
    if width == data.width:
        return data
    extra = width - data.width
    arrays = dict(data.arrays)
    for k in ("input_ids", "attention_mask", "loss_mask"):
        arrays[k] = np.pad(arrays[k], [(0, 0)] * (arrays[k].ndim - 1) + [(0, extra)])
    return dataclasses.replace(data, arrays=arrays)


def split_pairs(data: PairData, *, eval_fraction: float, seed: int) -> tuple[PairData, PairData]:
    """A seeded random ``(train, held_out)`` split; the held-out part gets ``round(eval_fraction·E)`` ≥ 1 pairs."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n = len(data)
    n_eval = min(max(int(round(eval_fraction * n)), 1), n - 1)
    if n < 2:
        raise ValueError(f"need at least 2 pairs to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(np.sort(order[n_eval:])), data.subset(np.sort(order[:n_eval]))


def compact_vocabulary(datasets: Sequence[PairData], keep: Sequence[int] = ()) -> np.ndarray:
    """The sorted token ids used by ``datasets`` (real tokens only) plus ``keep`` (e.g. PAD, EOS): ``[V']``.

    A tiny decoder trained from scratch on a small real sample needs only the ids that occur; a GPT-2 BPE
    vocabulary of 50,257 would make its unembedding (and the ``[tokens, V]`` log-softmax) ~50× larger for nothing.
    """
    ids = [np.asarray(keep, np.int64)]
    for d in datasets:
        ids.append(d.arrays["input_ids"][d.arrays["attention_mask"].astype(bool)].astype(np.int64))
    return np.unique(np.concatenate(ids))


def remap_tokens(data: PairData, vocab: np.ndarray) -> PairData:
    """``data`` with token ids replaced by their index in ``vocab`` (:func:`compact_vocabulary`); padding → 0."""
    ids = data.arrays["input_ids"]
    real = data.arrays["attention_mask"].astype(bool)
    pos = np.searchsorted(vocab, ids)
    ok = (pos < len(vocab)) & (vocab[np.minimum(pos, len(vocab) - 1)] == ids)
    if not np.all(ok[real]):
        raise ValueError("a real token id is missing from the compact vocabulary")
    new = np.where(real, pos, 0).astype(np.int32)
    return dataclasses.replace(data, arrays={**data.arrays, "input_ids": new},
                               prompts=[np.searchsorted(vocab, p).astype(np.int32) for p in data.prompts])



def iterate_batches(data: PairData, batch_size: int, *, steps: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """``steps`` batches of ``batch_size`` examples: a fresh permutation each epoch (seeded), no partial batches."""
    if batch_size > len(data):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(data)} examples of the dataset")
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(data)), 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        yield data.batch(order[pos:pos + batch_size])
        pos += batch_size


def concat_pairs(parts: Sequence[PairData]) -> PairData:
    """The union of several pair sets (e.g. SPO's DPO-Mix, MORE's datasets), rows padded to the widest.

    Keeps the arrays every part has; true rewards / probabilities only when every part has them.
    """
    if not parts:
        raise ValueError("concat_pairs needs at least one dataset")
    width = max(p.width for p in parts)
    parts = [pad_width(p, width) for p in parts]
    keys = set.intersection(*(set(p.arrays) for p in parts))
    cat = lambda xs: None if any(x is None for x in xs) else np.concatenate(xs)  # noqa: E731
    return PairData(arrays={k: np.concatenate([p.arrays[k] for p in parts]) for k in sorted(keys)},
                    prompts=[q for p in parts for q in p.prompts], rewards=cat([p.rewards for p in parts]),
                    true_prob=cat([p.true_prob for p in parts]))


def chosen_first(data: PairData, k: int) -> PairData:
    """Every pair reordered so that label row ``k``'s preferred response is response 0 (e.g. MO-DPO's chosen-first
    pairs, SFT on the chosen responses of a multi-objective file)."""
    swap = data.arrays["labels"][:, k, 0] < data.arrays["labels"][:, k, 1]
    arrays = {}
    for name, v in data.arrays.items():
        if name in ("input_ids", "attention_mask", "loss_mask", "labels", "ref_logps"):
            axis = -2 if name in ("input_ids", "attention_mask", "loss_mask") else -1  # the response axis N
            arrays[name] = np.where(swap.reshape((-1,) + (1,) * (v.ndim - 1)), np.flip(v, axis=axis), v)
        else:
            arrays[name] = v
    rewards = None if data.rewards is None else np.where(swap[:, None, None], data.rewards[:, ::-1], data.rewards)
    return dataclasses.replace(data, arrays=arrays, rewards=rewards)
