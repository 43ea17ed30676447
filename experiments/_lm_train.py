"""Training and model plumbing of the language-model experiments: one run of a library objective through
:func:`mojax.train.fit` (:func:`train`, its :class:`History`), model copies and parameter files, the caches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments._common import REPO_ROOT
from experiments._lm_data import PairData, iterate_batches
from mojax.models import load_hf, load_llama2c
from mojax.train import OptimizerConfig, TrainConfig, fit

__all__ = [
    "History",
    "OptimizerConfig",
    "TrainConfig",
    "copy_model",
    "default_cache_dir",
    "enable_compilation_cache",
    "load_model",
    "load_params",
    "save_params",
    "train",
]


def default_cache_dir() -> Path:
    """``$MOJAX_CACHE`` or ``<repo>/runs/_cache`` (``runs/`` is git-ignored)."""
    return Path(os.environ.get("MOJAX_CACHE", REPO_ROOT / "runs" / "_cache"))


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


# ----------------------------------------------------------------------------------------------------------------
# Models: load, copy, save/load parameters
# ----------------------------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike) -> nnx.Module:
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
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class History:
    """What :func:`train` recorded.

    Attributes:
      metrics: metric name → one float per step (the objective's scalar metrics, e.g. ``loss``, ``chosen_logps``,
        ``phi_mean``; plus the step's ``grad_norm``, ``skipped``, throughput).
      arrays: metric name → one array per step for non-scalar metrics (e.g. MORE's ``lambda [K]``).
      evals: ``eval_fn`` results, each a dict with its ``step`` (0 = before training).
      seconds: wall time of the training loop (compilation included; evaluation excluded).
      compiled: whether this run compiled its step (False: reused from :func:`mojax.train.fit`'s step cache).
    """

    metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    arrays: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    compiled: bool = True

    def final(self, key: str, last: int = 10) -> float:
        """Mean of a step metric over the ``last`` steps (a less noisy end-of-training value)."""
        return float(np.mean(self.metrics[key][-last:]))

    def record(self, metrics: Mapping[str, Any]) -> None:
        """Append one step's metrics (host values)."""
        for k, v in metrics.items():
            v = np.asarray(v)
            if v.ndim == 0:
                self.metrics.setdefault(k, []).append(float(v))
            else:
                self.arrays.setdefault(k, []).append(v)


def train(model: nnx.Module, objective: Any, data: PairData, config: TrainConfig, optimizer: OptimizerConfig, *,
          hparams: Mapping[str, Any] | None = None, wrt: Any = nnx.Param,
          eval_fn: Callable[[nnx.Module], Mapping[str, float]] | None = None, desc: str = "train",
          progress: bool | None = None) -> tuple[nnx.Module, History]:
    """Fine-tune a copy of ``model`` on ``data`` with a library objective through :func:`mojax.train.fit` (in memory);
    ``model`` itself is left untouched.

    Args:
      model: the starting policy (e.g. the SFT model π_0 or the round-1 model π_1).
      objective: a :class:`mojax.train.Objective` (:mod:`mojax.train.objectives`).
      data: the training examples, drawn by :func:`iterate_batches` (``config.batch_size`` cut to the data size).
      config: steps, batch size, seed, evaluation interval, progress bar (``run_dir`` and ``log_every`` are
        ignored: the run stays in memory and every step's metrics are recorded).
      optimizer: AdamW settings.
      hparams: the objective's hyper-parameters for this run (e.g. ``{"alpha": 0.5}``); they are inputs of the
        compiled step, so runs that differ only in them share one compilation.
      wrt: the trainable-variable filter (``nnx.LoRAParam`` for LoRA).
      eval_fn: ``eval_fn(model) -> {name: float}``, run at step 0, every ``config.eval_every`` steps and at the end.
      desc: the progress bar's label.
      progress: False turns the bar off whatever ``config.progress`` says (an experiment's ``--no-progress``).

    Returns:
      ``(trained_model, history)``.
    """
    if len(data) < 1:
        raise ValueError("cannot train on an empty data set")
    batch_size = min(config.batch_size, len(data))
    run = dataclasses.replace(config, batch_size=batch_size, log_every=1, run_dir=None, progress_desc=desc,
                              progress=config.progress and progress is not False, eval_at_start=eval_fn is not None)
    history = History()
    result = fit(model, objective, iterate_batches(data, batch_size, steps=config.steps, seed=config.seed),
                 config=run, optimizer=optimizer, hparams=hparams, wrt=wrt, run_dir=None,
                 eval_fn=None if eval_fn is None else (lambda step, m: eval_fn(m)),
                 on_metrics=lambda step, metrics: history.record(metrics))
    history.seconds, history.compiled = result.seconds, result.compiled
    history.evals = [{"step": e["step"], **{k[len("eval/"):]: v for k, v in e.items() if k.startswith("eval/")}}
                     for e in result.evals()]
    return result.model(), history
