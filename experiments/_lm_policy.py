"""π_0 of the language-model experiments: the SFT'd tiny decoder (or a real checkpoint), cached on disk.

:func:`sft_policy` fits the decoder to the synthetic task's base responses; :func:`real_policy` reads the files of
the shared real-data block :class:`mojax.train.DataConfig`, splits them and fits the policy to the training pairs'
chosen responses. Both cache the fitted parameters keyed by every config field that affects them, so several
experiments and methods start from the *same* π_0 and pay for SFT once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import nnx

from experiments import _lm_train as lm
from mojax.train import DataConfig
from experiments._lm_data import (
    PairData,
    chosen_first,
    collate_pairs,
    compact_vocabulary,
    real_pairs,
    remap_tokens,
    split_pairs,
    synthetic_width,
)
from experiments._lm_eval import token_nll
from experiments._common import make_run_dir
from experiments._report import save_config, to_jsonable
from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.models import Decoder, DecoderConfig, load_tokenizer
from mojax.train.objectives import sft_objective

__all__ = [
    "CACHE_VERSION",
    "ExperimentConfig",
    "ModelConfig",
    "QUICK_MODEL",
    "QUICK_SFT",
    "SFTConfig",
    "build_decoder",
    "config_key",
    "real_policy",
    "sft_corpus",
    "sft_policy",
]

# Bump when a change to this module or to experiments._lm_train changes what a cached SFT checkpoint would contain.
CACHE_VERSION = 2


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The tiny Llama-style decoder of the synthetic task (about 0.1M parameters at the defaults: a 2-core CPU fits
    it by SFT in seconds); a real checkpoint is ``--data.model-path`` instead."""

    d_model: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    mlp_dim: int = 128
    """Hidden width of the gated MLP."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised fine-tuning of π_0 on the task's unlabelled responses (token NLL, AdamW)."""

    steps: int = 400
    """Optimizer steps (0 skips SFT on real data)."""
    batch_size: int = 64
    """Sequences per step."""
    learning_rate: float = 3e-3
    """AdamW learning rate (constant after the warmup)."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    num_sequences: int = 4096
    """Size of the SFT corpus drawn from the synthetic task."""
    seed: int = 0
    """Model initialisation, corpus and batch order."""
    cache: bool = True
    """Reuse / write the fitted parameters under the cache directory."""


# The ``--quick`` (CI smoke) model and SFT every LM experiment shares: one narrow layer and a short SFT. Sharing them
# also shares the SFT cache entry across experiments. Numbers from these presets are not meaningful.
QUICK_MODEL = ModelConfig(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
QUICK_SFT = SFTConfig(steps=30, batch_size=32, learning_rate=1e-2, warmup_steps=3, num_sequences=256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Precision:
    """The mixed-precision policy of an LM experiment (the CLI's ``--dtype`` / ``--param-dtype``; issue 13 §4).

    Compute in ``dtype``, parameters stored in ``param_dtype``; optimizer state, master weights (kept by
    :func:`mojax.train.fit` when the trained weights are bfloat16), logits, log-probs and losses stay float32.
    Nest it in an experiment config (``precision: Precision = Precision()``, flags ``--precision.dtype`` /
    ``--precision.param-dtype``) and call :meth:`apply` on the policy before training.
    """

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the decoder's matrix products."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the decoder's parameters."""

    def apply(self, model):
        """``model`` (a :class:`mojax.models.Decoder` without LoRA) with this policy: the same weights, cast; the model
        itself when it already has it."""
        import jax.numpy as jnp

        c = model.config
        if jnp.dtype(c.dtype) == jnp.dtype(self.dtype) and jnp.dtype(c.param_dtype) == jnp.dtype(self.param_dtype):
            return model
        return model.with_precision(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """The settings every LM experiment shares; each experiment's ``Config`` subclasses it and adds its methods'."""

    task: SyntheticLMConfig = SyntheticLMConfig()
    """The synthetic task (true rewards; see :mod:`mojax.data.synthetic_lm`)."""
    model: ModelConfig = ModelConfig()
    """The tiny decoder π_0 is made of."""
    sft: SFTConfig = SFTConfig()
    """SFT of π_0 (cached, shared with the other LM experiments)."""
    precision: Precision = Precision()
    """Mixed precision of the trained policy (``--precision.dtype`` / ``--precision.param-dtype``)."""
    cache_dir: str | None = None
    """SFT / compilation cache (default ``runs/_cache`` or ``$MOJAX_CACHE``)."""
    compile_cache: bool = True
    """Turn on JAX's persistent compilation cache under ``cache_dir`` (a process-wide setting)."""
    seed: int = 0
    """Data seed."""
    progress: bool = True
    """Progress bars."""
    out: str | None = None
    """Run directory (default ``runs/<experiment>/<UTC time>``)."""

    def start(self, experiment: str) -> Path:
        """Create the run directory, write ``config.json`` and turn on the compilation cache; returns the directory."""
        run_dir = make_run_dir(experiment, self.out)
        save_config(run_dir, self)
        if self.compile_cache:
            lm.enable_compilation_cache(None if self.cache_dir is None else Path(self.cache_dir) / "jax")
        return run_dir


def config_key(*parts: Any, length: int = 16) -> str:
    """A stable hex key of configs (dataclasses/mappings/scalars) for caching: SHA-256 of their sorted JSON.

    Two runs share a cache entry exactly when every part is equal (and :data:`CACHE_VERSION` is the same).
    """
    blob = json.dumps([CACHE_VERSION, *[to_jsonable(p) for p in parts]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def build_decoder(task: SyntheticLMConfig, config: ModelConfig, *, model_path: str | None = None,
                  seed: int = 0) -> nnx.Module:
    """The policy before SFT: the tiny decoder sized for ``task``'s vocabulary, or the checkpoint at ``model_path``.

    A real checkpoint must have ``vocab_size >= task.vocab_size`` (the synthetic ids are used as they are: with
    llama2.c's stories260K they are simply the first 56 of its 512 token ids).
    """
    if model_path is None:
        dc = DecoderConfig(model_type="llama", vocab_size=task.vocab_size, d_model=config.d_model,
                           num_layers=config.num_layers, num_heads=config.num_heads, mlp_dim=config.mlp_dim,
                           max_positions=128, bos_token_id=synthetic_lm.BOS, eos_token_id=synthetic_lm.EOS,
                           pad_token_id=synthetic_lm.PAD)
        return Decoder(dc, rngs=nnx.Rngs(seed))
    model = lm.load_model(model_path)
    if model.config.vocab_size < task.vocab_size:
        raise ValueError(f"{model_path}: vocabulary of {model.config.vocab_size} tokens is smaller than the "
                         f"synthetic task's {task.vocab_size}")
    return model


def sft_corpus(task: SyntheticLMConfig, *, num_sequences: int, seed: int) -> PairData:
    """The task's unlabelled base-distribution responses as N = 1 rows (labels = their true rewards)."""
    examples = synthetic_lm.make_sft_corpus(task, num_examples=num_sequences, seed=seed)
    return PairData(arrays=collate_pairs(examples, width=synthetic_width(task), pad_id=synthetic_lm.PAD),
                    prompts=[ex.prompt_ids for ex in examples])


def _fit_sft(policy: nnx.Module, sft: SFTConfig, data: PairData, *, desc: str, progress: bool
             ) -> tuple[nnx.Module, lm.History]:
    run = lm.TrainConfig(steps=sft.steps, batch_size=sft.batch_size, seed=sft.seed, progress=progress)
    opt = lm.OptimizerConfig(learning_rate=sft.learning_rate, warmup_steps=sft.warmup_steps)
    return lm.train(policy, sft_objective(), data, run, opt, desc=desc)


def _cached(policy: nnx.Module, path: Path, sft: SFTConfig, fit, meta: dict[str, Any]) -> dict[str, Any]:
    """Load ``policy``'s parameters from ``path``, or fit them (``fit() -> (model, history)``) and store them."""
    if sft.cache and path.is_file():
        lm.load_params(policy, path)
        return {"policy": policy, "cached": True, "seconds": 0.0}
    if sft.steps < 1:
        return {"policy": policy, "cached": False, "seconds": 0.0}
    policy, hist = fit()
    if sft.cache:
        lm.save_params(policy, path)
        (path.parent / "meta.json").write_text(json.dumps(to_jsonable({**meta, "cache_version": CACHE_VERSION}),
                                                          indent=2))
    return {"policy": policy, "cached": False, "seconds": hist.seconds, "train_nll": hist.metrics["nll"]}


def _cache_path(cache_dir: str | os.PathLike | None, key: str) -> Path:
    return (Path(cache_dir) if cache_dir is not None else lm.default_cache_dir()) / "sft" / key / "params.npz"


def sft_policy(task: SyntheticLMConfig, model_config: ModelConfig = ModelConfig(),
               sft: SFTConfig = SFTConfig(), *, model_path: str | None = None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[nnx.Module, dict[str, Any]]:
    """π_0: the decoder of ``model_config`` (or ``model_path``) fitted by SFT to ``task``'s base responses; cached.

    The cache entry ``<cache_dir>/sft/<key>/params.npz`` is keyed by :func:`config_key` of the task, model and SFT
    configs (plus the checkpoint file's path, size and mtime for a real ``model_path``).

    Returns:
      ``(model, info)``; ``info`` has ``cached`` (bool), ``key``, ``path``, ``nll_before`` / ``nll_after``
      (held-out response-token NLL before and after SFT, nats/token; both recomputed on a cache hit), ``seconds``.
    """
    stamp = None
    if model_path is not None:
        st = Path(model_path).stat()
        stamp = (str(Path(model_path).resolve()), st.st_size, int(st.st_mtime))
    key = config_key(task, model_config, dataclasses.replace(sft, cache=True), stamp)
    path = _cache_path(cache_dir, key)
    model = build_decoder(task, model_config, model_path=model_path, seed=sft.seed)
    held_out = sft_corpus(task, num_sequences=512, seed=sft.seed + 10_000)
    info: dict[str, Any] = {"key": key, "path": str(path), "nll_before": token_nll(model, held_out)}
    corpus = lambda: sft_corpus(task, num_sequences=sft.num_sequences, seed=sft.seed)  # noqa: E731 (only on a miss)
    out = _cached(model, path, sft, lambda: _fit_sft(model, sft, corpus(), desc="SFT", progress=progress),
                  {"task": task, "model": model_config, "model_path": model_path, "sft": sft})
    model = out.pop("policy")
    info.update(out)
    info["nll_after"] = token_nll(model, held_out)
    return model, info


def real_policy(data: DataConfig, model: ModelConfig, sft: SFTConfig, *, objectives: Sequence[int],
                seed: int = 0, all_objectives: bool = False, compact_vocab: bool = True, sft_on: int = 0,
                cache_dir: str | os.PathLike | None = None, progress: bool = True
                ) -> tuple[nnx.Module, dict[str, Any], list[tuple[PairData, PairData]]]:
    """π_0 and a seeded ``(train, held_out)`` split of each real file of ``data``.

    File ``i`` is read with label row ``objectives[i]`` chosen first and split with the same seed (one file given twice
    with two label rows splits its pairs the same way) (``all_objectives``: every label row, the file's
    order). The policy is ``data.model_path`` or, without one, a tiny decoder of ``model``'s size on the tokenizer's
    vocabulary — with ``compact_vocab`` only on the ids the files use (a 50,257-token GPT-2 unembedding would be ~50×
    larger for nothing; the returned pairs are remapped and ``info["vocab"]`` maps compact ids back). It is then
    fitted by SFT on the chosen responses of file ``sft_on``'s training pairs (``sft.steps = 0`` skips it) and cached
    (keyed by the files' paths, sizes and mtimes, the tokenizer and every config).

    Returns:
      ``(policy, info, [(train, held_out) per file])``; ``info`` as in :func:`sft_policy` plus the data reports.
    """
    if len(objectives) != len(data.data_paths):
        raise ValueError(f"one objective per file needed: {len(data.data_paths)} files, objectives {objectives}")
    tokenizer = load_tokenizer(data.tokenizer_source)
    splits, reports = [], {}
    for path, k in zip(data.data_paths, objectives):
        pairs, report = real_pairs(path, tokenizer, data, objective=k, all_objectives=all_objectives)
        splits.append(split_pairs(pairs, eval_fraction=data.eval_fraction, seed=seed))
        reports[f"{Path(path).name}[{k}]"] = report.summary()
    vocab = None
    if data.model_path is not None:
        policy = lm.load_model(data.model_path)
    else:
        size, eos = len(tokenizer), tokenizer.eos_token_id
        if compact_vocab:  # only the ids the data uses (padding positions are masked, whatever id they hold)
            vocab = compact_vocabulary([d for pair in splits for d in pair], keep=[eos])
            splits = [(remap_tokens(t, vocab), remap_tokens(h, vocab)) for t, h in splits]
            size, eos = len(vocab), int(np.searchsorted(vocab, eos))
        dc = DecoderConfig(model_type="llama", vocab_size=size, d_model=model.d_model, num_layers=model.num_layers,
                           num_heads=model.num_heads, mlp_dim=model.mlp_dim,
                           max_positions=max(2 * data.max_length, 128), eos_token_id=eos, pad_token_id=0)
        policy = Decoder(dc, rngs=nnx.Rngs(sft.seed))
    stamps = [(str(Path(p).resolve()), Path(p).stat().st_size, int(Path(p).stat().st_mtime)) for p in data.data_paths]
    key = config_key("real", stamps, data, list(objectives), all_objectives, sft_on, seed, model,
                        dataclasses.replace(sft, cache=True),
                        None if vocab is None else hashlib.sha256(vocab.tobytes()).hexdigest())
    path = _cache_path(cache_dir, key)
    train = splits[sft_on][0]
    held = splits[sft_on][1]
    if all_objectives:
        train, held = chosen_first(train, objectives[sft_on]), chosen_first(held, objectives[sft_on])
    chosen_only = dataclasses.replace(held, arrays={k: held.arrays[k][:, :1] for k in
                                                    ("input_ids", "attention_mask", "loss_mask")})
    info: dict[str, Any] = {"key": key, "path": str(path), "data_reports": reports,
                            "vocab_size": policy.config.vocab_size, "nll_before": token_nll(policy, chosen_only)}
    sft_run = dataclasses.replace(sft, batch_size=min(sft.batch_size, len(train)))
    out = _cached(policy, path, sft, lambda: _fit_sft(policy, sft_run, train, desc="SFT (chosen)", progress=progress),
                  {"real": stamps, "data": data, "model": model, "sft": sft})
    policy = out.pop("policy")
    info.update(out)
    info["nll_after"] = token_nll(policy, chosen_only)
    info["vocab"] = vocab
    return policy, info, splits
