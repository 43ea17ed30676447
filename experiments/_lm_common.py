"""What the language-model experiments share (Stable PO, SPO, MORE, COS-DPO LLM).

The pieces, in the order an experiment uses them:

1. **Task and base policy.** The task is a :class:`mojax.data.synthetic_lm.SyntheticLMConfig` (known true rewards
   ``R_k``, Bradley–Terry pairs per dimension, an SFT corpus);
   :func:`sft_policy` builds the default tiny decoder and fits it by SFT on the task's unlabelled responses, caching
   the parameters on disk keyed by every config field that affects them (:func:`config_key`), so several experiments
   and methods start from the *same* π_0 without refitting it. ``model_path`` swaps in a real checkpoint
   (a Hugging Face directory through :func:`mojax.models.load_hf`, or llama2.c's ``stories260K.bin`` through
   :func:`mojax.models.load_llama2c`, which runs on token ids < 512 — the synthetic vocabulary fits).
2. **Pairs.** :func:`synthetic_pairs` (one preference dimension, chosen first) and :func:`real_pairs` (HH-RLHF /
   PKU-SafeRLHF / any reader format, tokenised by a real tokenizer) give a :class:`PairData`: the whole dataset
   collated once into NumPy arrays of one fixed width ``T`` (one jit compilation per method), in the batch layout of
   BUILD_NOTES (``input_ids``/``attention_mask``/``loss_mask`` ``[E, N, T]``, ``labels [E, K, N]``).
   :func:`with_ref_logps` attaches cached log-probs of earlier models (π_0 for DPO, π_0..π_{n−1} for SPO):
   computed once in one pass and stored per example as ``[E, R, N]`` (batches carry them as ``ref_logps [R, B, N]``,
   or ``[B, N]`` when R = 1, the engine's layout).
3. **Training.** :func:`train_policy` runs any engine objective (``objective(model, batch, rng) -> (loss, metrics)``,
   :mod:`mojax.train.objectives`) through the engine's one jitted step (:func:`mojax.train.make_train_step`) on a
   one-device-per-host mesh, with a tqdm bar; it returns the trained model and a :class:`History` of per-step
   metrics (the objective's: chosen/rejected log-probs, rewards, ϕ, …) and optional periodic evaluations.
4. **Evaluation.** :func:`pair_logps` (policy log-probs of every pair), :func:`sample_and_score` (sample responses
   with :func:`mojax.models.generate` and score them exactly with the task's true rewards → ``[N, K]``),
   :func:`win_rates` (per-dimension win rate of A over B on the same prompts, ties ½), :func:`front_hypervolume`.

Everything is deterministic given the config seeds.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jax.sharding import Mesh

from experiments._common import REPO_ROOT, to_jsonable
from mojax.data import synthetic_lm
from mojax.data.readers import ReaderConfig, TokenizedExample, read_preferences, select_objective
from mojax.data.report import DataReport
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.data.tokenize import TokenizeConfig, collate, tokenize_examples
from mojax.losses import next_token_targets, sequence_logps_from_hidden
from mojax.metrics import hypervolume, pareto_front, win_rate
from mojax.models import Decoder, DecoderConfig, generate, load_hf, load_llama2c, load_tokenizer
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.objectives import sft_objective
from mojax.train.state import create_train_state, step_key
from mojax.train.step import Objective, OptimizerConfig, init_extras, jit_train_step, make_optimizer, make_train_step

__all__ = [
    "CACHE_VERSION",
    "History",
    "ModelConfig",
    "PairData",
    "SFTConfig",
    "TrainConfig",
    "build_decoder",
    "clamp_batch",
    "collate_pairs",
    "compact_vocabulary",
    "config_key",
    "copy_model",
    "default_cache_dir",
    "enable_compilation_cache",
    "front_hypervolume",
    "iterate_batches",
    "left_pad",
    "load_model",
    "load_params",
    "make_logps_fn",
    "pad_width",
    "pair_logps",
    "real_pairs",
    "real_setup",
    "remap_tokens",
    "sample_and_score",
    "save_params",
    "sft_corpus",
    "sft_policy",
    "split_pairs",
    "synthetic_pairs",
    "synthetic_width",
    "token_nll",
    "train_policy",
    "win_rates",
    "with_ref_logps",
]

# Bump when a change to this file changes what a cached SFT checkpoint would contain.
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The default tiny Llama-style decoder for the synthetic task, or a real checkpoint by path.

    Attributes:
      d_model, num_layers, num_heads, mlp_dim: sizes of the tiny decoder (about 0.1M parameters at the defaults: a
        2-core CPU fits it by SFT in seconds and the synthetic task's response distribution is simple).
      model_path: optional real checkpoint: a Hugging Face directory (``config.json`` + safetensors) or a llama2.c
        ``.bin`` file. Its vocabulary must cover the data's token ids.
    """

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    model_path: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised fine-tuning of π_0 on the task's unlabelled responses (token NLL, AdamW).

    Attributes:
      steps, batch_size, learning_rate, warmup_steps: the optimisation.
      num_sequences: size of the SFT corpus drawn from the task.
      seed: model initialisation, corpus and batch order.
      cache: reuse / write the fitted parameters under the cache directory.
    """

    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    num_sequences: int = 4096
    seed: int = 0
    cache: bool = True


# The ``--quick`` (CI smoke) model and SFT every LM experiment shares: one narrow layer and a short SFT. Sharing them
# also shares the SFT cache entry across experiments. Numbers from these presets are not meaningful.
QUICK_MODEL = ModelConfig(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
QUICK_SFT = SFTConfig(steps=30, batch_size=32, learning_rate=1e-2, warmup_steps=3, num_sequences=256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Preference fine-tuning of a policy by :func:`train_policy`.

    Attributes:
      steps: optimizer steps (batches are drawn by reshuffling the data every epoch).
      batch_size: pairs per step.
      learning_rate, warmup_steps, max_grad_norm, weight_decay: AdamW with linear warmup then constant rate,
        global-norm clipping (``mojax.train.OptimizerConfig``).
      seed: batch order and step keys.
      eval_every: run the ``eval_fn`` given to :func:`train_policy` every this many steps (0 = never; it always
        runs at step 0 and after the last step when given).
    """

    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 20


def config_key(*parts: Any, length: int = 16) -> str:
    """A stable hex key of configs (dataclasses/mappings/scalars) for caching: SHA-256 of their sorted JSON.

    Two runs share a cache entry exactly when every part is equal (and :data:`CACHE_VERSION` is the same).
    """
    blob = json.dumps([CACHE_VERSION, *[to_jsonable(p) for p in parts]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def default_cache_dir() -> Path:
    """``$MOJAX_CACHE`` or ``<repo>/runs/_cache`` (``runs/`` is git-ignored)."""
    return Path(os.environ.get("MOJAX_CACHE", REPO_ROOT / "runs" / "_cache"))


# ----------------------------------------------------------------------------------------------------------------
# Models: build, copy, save/load parameters
# ----------------------------------------------------------------------------------------------------------------


def build_decoder(task: SyntheticLMConfig, config: ModelConfig, *, seed: int = 0) -> Decoder:
    """The policy before SFT: the tiny decoder sized for ``task``'s vocabulary, or the checkpoint at ``model_path``.

    A real checkpoint must have ``vocab_size >= task.vocab_size`` (the synthetic ids are used as they are: with
    llama2.c's stories260K they are simply the first 56 of its 512 token ids).
    """
    if config.model_path is None:
        dc = DecoderConfig(model_type="llama", vocab_size=task.vocab_size, d_model=config.d_model,
                           num_layers=config.num_layers, num_heads=config.num_heads, mlp_dim=config.mlp_dim,
                           max_positions=128, bos_token_id=synthetic_lm.BOS, eos_token_id=synthetic_lm.EOS,
                           pad_token_id=synthetic_lm.PAD)
        return Decoder(dc, rngs=nnx.Rngs(seed))
    model = load_model(config.model_path)
    if model.config.vocab_size < task.vocab_size:
        raise ValueError(f"{config.model_path}: vocabulary of {model.config.vocab_size} tokens is smaller than the "
                         f"synthetic task's {task.vocab_size}")
    return model


def load_model(path: str | os.PathLike) -> Decoder:
    """A real checkpoint: a llama2.c ``.bin`` file (:func:`mojax.models.load_llama2c`) or a Hugging Face directory
    (:func:`mojax.models.load_hf`)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".bin":
        return load_llama2c(path)
    if path.is_dir():
        return load_hf(path)
    raise FileNotFoundError(f"model_path {path}: neither a llama2.c .bin file nor a Hugging Face directory")


def copy_model(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with fresh buffers (the engine donates its state; the original must survive)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.array(x, copy=True), state))


def _flat_pure(model: nnx.Module) -> tuple[list[tuple[str, Any]], Any]:
    pure = nnx.to_pure_dict(nnx.state(model))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    return [(jax.tree_util.keystr(p), v) for p, v in leaves], treedef


def save_params(model: nnx.Module, path: str | os.PathLike) -> Path:
    """Write every variable of ``model`` to an ``.npz`` (keys are the state paths); atomic (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves, _ = _flat_pure(model)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in leaves})
    tmp.replace(path)
    return path


def load_params(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Load :func:`save_params` output into ``model`` (in place; also returned).

    Raises:
      ValueError: when the file's variables or shapes differ from the model's (a stale or foreign cache entry).
    """
    leaves, treedef = _flat_pure(model)
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    if set(stored) != {k for k, _ in leaves}:
        missing = sorted({k for k, _ in leaves} - set(stored))[:5]
        extra = sorted(set(stored) - {k for k, _ in leaves})[:5]
        raise ValueError(f"{path}: variables differ from the model's (missing {missing}, unexpected {extra})")
    new = []
    for k, v in leaves:
        if stored[k].shape != np.shape(v):
            raise ValueError(f"{path}: {k} has shape {stored[k].shape}, the model's is {np.shape(v)}")
        new.append(jnp.asarray(stored[k], dtype=jnp.asarray(v).dtype))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new))
    nnx.update(model, state)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Data: pairs collated once into fixed-width arrays
# ----------------------------------------------------------------------------------------------------------------


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


_synthetic_width = synthetic_width  # the first version's private name (experiments/more_rm.py uses it)


def real_pairs(path: str | os.PathLike, tokenizer: Any, *, objective: int = 0, max_length: int = 256,
               max_prompt_length: int = 128, max_examples: int | None = None) -> tuple[PairData, DataReport]:
    """Real preference pairs from a local file (HH-RLHF, PKU-SafeRLHF, prompt/chosen/rejected, chat; JSONL/JSON/
    Parquet, ``.gz``) tokenised by a real tokenizer, labelled by ``objective`` (PKU-SafeRLHF: 0 = better
    (helpfulness), 1 = safer (harmlessness); HH files carry one objective).

    Over-long examples are truncated (prompt from the left, responses from the right) and counted in the report.

    Returns:
      ``(data, report)``: chosen-first pairs (under ``objective``) and the reader/tokeniser :class:`DataReport`.
    """
    examples, report = read_preferences(path, ReaderConfig())
    if max_examples is not None:
        examples = examples[:max_examples]
    cfg = TokenizeConfig(max_length=max_length, max_prompt_length=max_prompt_length,
                         pad_id=int(getattr(tokenizer, "pad_token_id", None) or 0))
    tokenized, report = tokenize_examples(examples, tokenizer, cfg, report)
    tokenized = select_objective(tokenized, objective)
    if not tokenized:
        raise ValueError(f"{path}: no usable pair after tokenisation ({report.summary()})")
    arrays = collate(tokenized, cfg)
    return PairData(arrays=arrays, prompts=[ex.prompt_ids for ex in tokenized]), report


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


def real_setup(data_path: str | os.PathLike, *, tokenizer_path: str | os.PathLike | None, model: ModelConfig,
               sft: SFTConfig, objective: int = 0, eval_fraction: float = 0.2, max_length: int = 128,
               max_prompt_length: int = 96, seed: int = 0, cache_dir: str | os.PathLike | None = None,
               progress: bool = True, compact_vocab: bool = False, vocab_extra: Sequence[PairData] = (),
               max_examples: int | None = None) -> tuple[Decoder, dict[str, Any], PairData, PairData]:
    """π_0 and a train / held-out split of real preference pairs.

    The tokenizer comes from ``tokenizer_path`` (a Hugging Face directory or the raw GPT-2 BPE files) or else from
    ``model.model_path``. The policy is ``model.model_path`` (a Hugging Face directory) or, without one, the tiny
    decoder of ``model`` sized to the tokenizer's vocabulary; either way it is then fitted by SFT on the training
    pairs' chosen responses (``sft.steps = 0`` skips it) — the usual start of DPO when no SFT model exists —
    and cached like :func:`sft_policy` (keyed by the file's size and mtime, the tokenizer path and the configs).
    With ``compact_vocab`` a from-scratch decoder works on the sample's compact vocabulary (the ids of this file
    and of ``vocab_extra``, :func:`compact_vocabulary`); the returned pairs are remapped, and ``info["vocab"]``
    maps compact ids back to the tokenizer's (remap other data with :func:`remap_tokens`). Without it (default),
    the decoder has the tokenizer's full vocabulary and ``info["vocab"]`` is None.

    Returns:
      ``(policy, info, train, held_out)``; ``info`` as in :func:`sft_policy` plus the data report's summary.
    """
    tok_src = tokenizer_path if tokenizer_path is not None else model.model_path
    if tok_src is None:
        raise ValueError("real data needs a tokenizer: give tokenizer_path or a model_path that has one")
    tokenizer = load_tokenizer(tok_src)
    data, report = real_pairs(data_path, tokenizer, objective=objective, max_length=max_length,
                              max_prompt_length=max_prompt_length, max_examples=max_examples)
    train, held = split_pairs(data, eval_fraction=eval_fraction, seed=seed)
    vocab = None
    if model.model_path is not None:
        policy = load_model(model.model_path)
    else:
        size, eos = len(tokenizer), tokenizer.eos_token_id
        if compact_vocab:  # only the ids the data uses (padding positions are masked, whatever id they hold)
            vocab = compact_vocabulary([train, held, *vocab_extra], keep=[eos])
            train, held = remap_tokens(train, vocab), remap_tokens(held, vocab)
            size, eos = len(vocab), int(np.searchsorted(vocab, eos))
        dc = DecoderConfig(model_type="llama", vocab_size=size, d_model=model.d_model, num_layers=model.num_layers,
                           num_heads=model.num_heads, mlp_dim=model.mlp_dim, max_positions=max(2 * max_length, 128),
                           eos_token_id=eos, pad_token_id=0)
        policy = Decoder(dc, rngs=nnx.Rngs(sft.seed))
    st = Path(data_path).stat()
    key = config_key("real", str(Path(data_path).resolve()), st.st_size, int(st.st_mtime), str(tok_src), objective,
                     eval_fraction, max_length, max_prompt_length, max_examples, seed, model,
                     dataclasses.replace(sft, cache=True),
                     None if vocab is None else hashlib.sha256(vocab.tobytes()).hexdigest())
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "sft" / key / "params.npz"
    chosen_only = dataclasses.replace(held, arrays={**held.arrays, "loss_mask": held.arrays["loss_mask"][:, :1],
                                                    "input_ids": held.arrays["input_ids"][:, :1],
                                                    "attention_mask": held.arrays["attention_mask"][:, :1]})
    info: dict[str, Any] = {"key": key, "path": str(path), "data_report": report.summary(),
                            "vocab_size": policy.config.vocab_size, "num_train": len(train), "num_held_out": len(held),
                            "nll_before": token_nll(policy, chosen_only)}
    if sft.cache and path.is_file():
        load_params(policy, path)
        info.update(cached=True, seconds=0.0)
    elif sft.steps > 0:
        cfg = TrainConfig(steps=sft.steps, batch_size=min(sft.batch_size, len(train)), learning_rate=sft.learning_rate,
                          warmup_steps=sft.warmup_steps, seed=sft.seed, eval_every=0)
        policy, hist = train_policy(policy, sft_objective(response_index=0), train, cfg, desc="SFT (chosen)",
                                    progress=progress)
        info.update(cached=False, seconds=hist.seconds)
        if sft.cache:
            save_params(policy, path)
    else:
        info.update(cached=False, seconds=0.0)
    info["nll_after"] = token_nll(policy, chosen_only)
    info["vocab"] = vocab
    return policy, info, train, held


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


# ----------------------------------------------------------------------------------------------------------------
# Log-probabilities of fixed pairs
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "use_lora"))
def _logps_jit(graphdef, state, input_ids, attention_mask, loss_mask, *, use_lora: bool):
    model = nnx.merge(graphdef, state)
    hidden = model(input_ids, attention_mask=attention_mask, return_hidden=True, use_lora=use_lora)
    targets, where = next_token_targets(input_ids, loss_mask)
    return sequence_logps_from_hidden(hidden, model.unembedding(), targets, where=where)


def make_logps_fn(model: nnx.Module, *, use_lora: bool = True) -> Callable[[Mapping[str, Any]], jax.Array]:
    """``batch -> logps [B, N]``: summed response log-probs of every response of a batch under ``model`` (jitted
    once per model graph and shape; the parameters are a traced argument, not constants)."""
    graphdef, state = nnx.split(model)

    def fn(batch: Mapping[str, Any]) -> jax.Array:
        return _logps_jit(graphdef, state, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                          jnp.asarray(batch["loss_mask"]), use_lora=use_lora)

    return fn


def pair_logps(model: nnx.Module, data: PairData, *, batch_size: int = 256, use_lora: bool = True) -> np.ndarray:
    """Log-probs ``[E, N]`` (float32 NumPy) of every response of ``data`` under ``model``, in data order.

    Chunks of exactly ``batch_size`` rows (a short last chunk is filled by repeating rows and the extra outputs
    dropped), so every call with the same row width reuses one compiled forward.
    """
    fn = make_logps_fn(model, use_lora=use_lora)
    n = len(data)
    bs = batch_size  # always full chunks (small sets repeat rows): one compiled shape per width for every caller
    out = []
    for start in range(0, n, bs):
        index = np.arange(start, start + bs) % n
        out.append(np.asarray(fn(data.batch(index)))[: min(bs, n - start)])
    return np.concatenate(out, axis=0)


def with_ref_logps(data: PairData, models: Sequence[nnx.Module], *, batch_size: int = 256,
                   use_lora: bool = True) -> PairData:
    """``data`` with ``ref_logps [E, R, N]``: log-probs of every response under each of the R ``models``.

    Computed once, in one pass per model, and reused by every step (the reference never changes during a run):
    π_0 for DPO/Stable PO, π_0..π_{n−1} for SPO's round n (row r = π_r).
    """
    if not models:
        raise ValueError("with_ref_logps needs at least one model")
    ref = np.stack([pair_logps(m, data, batch_size=batch_size, use_lora=use_lora) for m in models], axis=1)
    return dataclasses.replace(data, arrays={**data.arrays, "ref_logps": ref.astype(np.float32)})


# ----------------------------------------------------------------------------------------------------------------
# Training through the engine's step
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class History:
    """What :func:`train_policy` recorded.

    Attributes:
      metrics: metric name → one float per step (the objective's scalar metrics, count-weighted means over the
        batch: e.g. ``loss``, ``chosen_logps``, ``rejected_logps``, ``accuracy``, ``phi_mean``; plus the step's
        ``grad_norm`` and ``finite``).
      arrays: metric name → one array per step for non-scalar metrics (e.g. per-pair ``phi [B]``).
      evals: ``eval_fn`` results, each a dict with its ``step`` (0 = before training).
      seconds: wall time of the training loop (compilation included; evaluation excluded).
    """

    metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    arrays: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def eval_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one eval quantity across the recorded evaluations."""
        rows = [e for e in self.evals if key in e]
        return np.array([e["step"] for e in rows]), np.array([e[key] for e in rows], dtype=np.float64)

    def final(self, key: str, last: int = 10) -> float:
        """Mean of a step metric over the ``last`` steps (a less noisy end-of-training value)."""
        values = self.metrics[key]
        return float(np.mean(values[-last:]))


def clamp_batch(config: TrainConfig, num_examples: int) -> TrainConfig:
    """``config`` with ``batch_size`` cut to ``num_examples`` when the data set is smaller (small real samples)."""
    if num_examples < 1:
        raise ValueError("cannot train on an empty data set")
    return dataclasses.replace(config, batch_size=min(config.batch_size, num_examples))


# Jitted steps by (objective object, graph, optimizer, filter, mesh, batch signature): a second run of the same
# objective object on same-shaped data (e.g. SPO's DPO round 1 and DPO-Mix) reuses the executable instead of
# re-tracing and recompiling (seconds each on a 2-core CPU). Small: objectives are few per process.
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()
_STEP_CACHE_SIZE = 16


def _compiled_step(objective, graphdef, opt: OptimizerConfig, tx, wrt, mesh: Mesh, shardings, batch):
    signature = tuple(sorted((k, np.shape(v), str(np.asarray(v).dtype)) for k, v in batch.items()))
    key = (id(objective), graphdef, opt, repr(wrt), mesh, signature)
    hit = _STEP_CACHE.get(key)
    if hit is not None and hit[0] is objective:
        _STEP_CACHE.move_to_end(key)
        return hit[1]
    step_fn = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batch, mesh)
    _STEP_CACHE[key] = (objective, step_fn)  # holding the objective keeps its id from being reused
    while len(_STEP_CACHE) > _STEP_CACHE_SIZE:
        _STEP_CACHE.popitem(last=False)
    return step_fn


def train_policy(model: nnx.Module, objective: Objective, data: PairData, config: TrainConfig, *,
                 wrt: Any = nnx.Param, eval_fn: Callable[[nnx.Module], Mapping[str, float]] | None = None,
                 desc: str = "train", mesh: Mesh | None = None, progress: bool = True
                 ) -> tuple[nnx.Module, History]:
    """Fine-tune a copy of ``model`` on ``data`` with an engine objective; ``model`` itself is left untouched.

    Builds the :class:`~mojax.train.state.TrainState` (trainable ``wrt`` variables; AdamW with warmup, clipping),
    the one pure step (:func:`mojax.train.step.make_train_step`) jitted once with the state donated, and runs
    ``config.steps`` steps over reshuffled epochs of ``data``. Step ``s`` uses ``fold_in(state.rng, s)``.

    Args:
      model: the starting policy (e.g. the SFT model π_0 or the round-1 model π_1).
      objective: ``objective(model, batch, rng) -> (loss, metrics)`` (:mod:`mojax.train.objectives`); the batch
        carries ``ref_logps`` when ``data`` has them (:func:`with_ref_logps`).
      data: the training pairs.
      config: :class:`TrainConfig`.
      wrt: the trainable-variable filter (``nnx.LoRAParam`` for LoRA).
      eval_fn: ``eval_fn(model) -> {name: float}``, run at step 0, every ``config.eval_every`` steps and at the end
        (e.g. held-out chosen/rejected log-probs, preference accuracy).
      mesh: default: every local device on the ``data`` axis (:func:`mojax.train.mesh.make_mesh`).

    Returns:
      ``(trained_model, history)``.
    """
    if config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")
    mesh = make_mesh(MeshConfig()) if mesh is None else mesh
    opt = OptimizerConfig(learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
                          max_grad_norm=config.max_grad_norm, weight_decay=config.weight_decay)
    tx = make_optimizer(opt)
    graphdef, state, shardings = create_train_state(copy_model(model), tx, mesh=mesh, rng=config.seed, wrt=wrt,
                                                    extras=init_extras(objective, model))
    batches = iterate_batches(data, config.batch_size, steps=config.steps, seed=config.seed)
    first = next(batches)
    step_fn = _compiled_step(objective, graphdef, opt, tx, wrt, mesh, shardings, first)
    history = History()

    def current() -> nnx.Module:
        return nnx.merge(graphdef, state.params, state.rest)

    def evaluate(step: int) -> None:
        if eval_fn is not None:
            history.evals.append({"step": step, **{k: float(v) for k, v in eval_fn(current()).items()}})

    evaluate(0)
    pending: list[dict[str, jax.Array]] = []
    elapsed = 0.0
    bar = tqdm(total=config.steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    batch = first
    for s in range(config.steps):
        if s > 0:
            batch = next(batches)
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch, step_key(state.rng, s))
        if (s + 1) % 10 == 0 or s + 1 == config.steps:
            loss = float(metrics["loss"])  # blocks: the timer then counts finished work
            bar.set_postfix(loss=f"{loss:.4f}")
        elapsed += time.perf_counter() - t0
        pending.append(metrics)
        bar.update(1)
        if config.eval_every and (s + 1) % config.eval_every == 0 and s + 1 != config.steps:
            evaluate(s + 1)
    jax.block_until_ready(state)
    bar.close()
    history.seconds = elapsed
    for metrics in jax.device_get(pending):
        for k, v in metrics.items():
            v = np.asarray(v)
            if v.ndim == 0:
                history.metrics.setdefault(k, []).append(float(v))
            else:
                history.arrays.setdefault(k, []).append(v)
    evaluate(config.steps)
    return current(), history


def token_nll(model: nnx.Module, data: PairData, *, batch_size: int = 256) -> float:
    """Mean response-token NLL of ``data`` under ``model`` (nats/token; all responses of every example)."""
    logps = pair_logps(model, data, batch_size=batch_size)
    tokens = data.arrays["loss_mask"][..., 1:].sum(-1)  # a response token t is scored from position t−1
    return float(-logps.sum() / max(tokens.sum(), 1))


def sft_corpus(task: SyntheticLMConfig, *, num_sequences: int, seed: int) -> PairData:
    """The task's unlabelled base-distribution responses as N = 1 rows (labels = their true rewards)."""
    examples = synthetic_lm.make_sft_corpus(task, num_examples=num_sequences, seed=seed)
    return PairData(arrays=collate_pairs(examples, width=synthetic_width(task), pad_id=synthetic_lm.PAD),
                    prompts=[ex.prompt_ids for ex in examples])


def sft_policy(task: SyntheticLMConfig, model_config: ModelConfig = ModelConfig(), sft: SFTConfig = SFTConfig(), *,
               cache_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[Decoder, dict[str, Any]]:
    """π_0: the decoder of ``model_config`` fitted by SFT to ``task``'s base response distribution; cached.

    The cache entry ``<cache_dir>/sft/<key>/params.npz`` is keyed by :func:`config_key` of the task, model and SFT
    configs (plus the checkpoint file's size and mtime for a real ``model_path``), so every experiment and method
    with the same settings starts from the same π_0 and pays for SFT once.

    Returns:
      ``(model, info)``; ``info`` has ``cached`` (bool), ``key``, ``path``, ``nll_before`` / ``nll_after``
      (held-out response-token NLL before and after SFT, nats/token; both recomputed on a cache hit), ``seconds``.
    """
    stamp = None
    if model_config.model_path is not None:
        st = Path(model_config.model_path).stat()
        stamp = (st.st_size, int(st.st_mtime))
    key = config_key(task, model_config, dataclasses.replace(sft, cache=True), stamp)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "sft" / key / "params.npz"
    model = build_decoder(task, model_config, seed=sft.seed)
    held_out = sft_corpus(task, num_sequences=512, seed=sft.seed + 10_000)
    info: dict[str, Any] = {"key": key, "path": str(path), "nll_before": token_nll(model, held_out)}
    if sft.cache and path.is_file():
        load_params(model, path)
        info.update(cached=True, seconds=0.0)
    else:
        corpus = sft_corpus(task, num_sequences=sft.num_sequences, seed=sft.seed)
        train = TrainConfig(steps=sft.steps, batch_size=sft.batch_size, learning_rate=sft.learning_rate,
                            warmup_steps=sft.warmup_steps, seed=sft.seed, eval_every=0)
        model, hist = train_policy(model, sft_objective(), corpus, train, desc="SFT", progress=progress)
        info.update(cached=False, seconds=hist.seconds, train_nll=hist.metrics["nll"])
        if sft.cache:
            save_params(model, path)
            (path.parent / "meta.json").write_text(json.dumps(to_jsonable(
                {"task": task, "model": model_config, "sft": sft, "cache_version": CACHE_VERSION}), indent=2))
    info["nll_after"] = token_nll(model, held_out)
    return model, info


# ----------------------------------------------------------------------------------------------------------------
# Sampling, true-reward scoring, win rates, fronts
# ----------------------------------------------------------------------------------------------------------------


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = 0, *, width: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts into ``(ids [N, Tp] int32, mask [N, Tp] bool)`` for :func:`mojax.models.generate`;
    ``Tp`` = ``width`` (default: the longest prompt)."""
    longest = max(len(p) for p in prompts)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"a prompt has {longest} tokens, more than the width {width}")
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = True
    return ids, mask


def sample_and_score(model: nnx.Module, prompts: Sequence[np.ndarray], task: SyntheticLMConfig, *, seed: int,
                     temperature: float = 1.0, max_new_tokens: int | None = None, batch_size: int = 256,
                     use_lora: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sample one response per prompt from ``model`` and score it exactly with the task's true rewards.

    Decoding: :func:`mojax.models.generate` with a KV cache, ``temperature`` (0 = greedy), stopping at EOS, at most
    ``max_new_tokens`` (default: the task's longest response, EOS included). A response that never emits EOS is
    scored on the tokens it has. Prompt ``i`` uses the key ``fold_in(key(seed), chunk)`` of its chunk, so two
    models sampled with the same seed on the same prompts share their random numbers (a paired comparison).

    Returns:
      ``(responses [N, max_new_tokens] int32 (PAD after EOS), rewards [N, K] float32)``.
    """
    if not prompts:
        raise ValueError("sample_and_score needs at least one prompt")
    max_new = task.max_response_length if max_new_tokens is None else max_new_tokens
    ids, mask = left_pad(prompts, synthetic_lm.PAD, width=task.max_prompt_length)
    n = len(prompts)
    bs = batch_size  # full chunks of one shape (see pair_logps): one compiled decoder per model graph
    key = jax.random.key(seed)
    chunks = []
    for c, start in enumerate(range(0, n, bs)):
        index = np.arange(start, start + bs) % n  # the last chunk is padded by repetition: one shape compiles
        out = generate(model, ids[index], attention_mask=mask[index], max_new_tokens=max_new,
                       rng=jax.random.fold_in(key, c), temperature=temperature, eos_id=synthetic_lm.EOS,
                       pad_id=synthetic_lm.PAD, use_lora=use_lora)
        tokens = np.where(np.asarray(out.mask), np.asarray(out.tokens), synthetic_lm.PAD)
        chunks.append(tokens[: min(bs, n - start)])
    responses = np.concatenate(chunks).astype(np.int32)
    rewards = np.asarray(synthetic_lm.true_rewards(ids, responses, task), np.float32)
    return responses, rewards


def win_rates(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """Per-dimension win rate of A over B on the same prompts: ``mean([r_a > r_b] + ½[r_a = r_b])`` → ``[K]``.

    ``rewards_a``, ``rewards_b``: ``[N, K]`` judged scores (true rewards, or a reward model's) of the two policies'
    responses to the same N prompts. Identical policies give 0.5 in expectation.
    """
    a, b = np.asarray(rewards_a, np.float64), np.asarray(rewards_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"rewards must both be [N, K], got {a.shape} and {b.shape}")
    return np.asarray(win_rate(a, b, ties=0.5), np.float64)


def front_hypervolume(points: np.ndarray, reference: Sequence[float]) -> tuple[np.ndarray, float]:
    """The non-dominated subset (maximisation) of ``points [n, K]`` and its exact hypervolume w.r.t. ``reference``.

    Used for weight sweeps: one point per weight (mean true rewards of the policy's samples).
    """
    pts = np.asarray(points, np.float64)
    front = np.asarray(pareto_front(pts, maximize=True))
    return front, float(hypervolume(pts, np.asarray(reference, np.float64), maximize=True))


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (``<cache dir>/jax`` by default) for this process.

    Every method's train step, the log-prob pass and ``generate`` compile once per shape; on a 2-core CPU that is
    most of a short run (a tiny decoder's train step: ~8 s to compile, ~0.1 s per step). With the cache a repeated
    run (another method, the next experiment, a rerun) loads the executables instead (~1 s each).
    """
    path = Path(path) if path is not None else default_cache_dir() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
