"""Frozen-backbone sequence features (last token and mean-pooled), batched by length, cached on disk.

Reward-model experiments that keep the backbone frozen (MORE's head-only regime, linear probes) need the backbone's
hidden states once, not every step: :func:`sequence_features` runs the forward passes over length buckets (one
compile per bucket shape) and :func:`cached_features` stores the result under a key made of everything that
determines it (model file digest, data digest, settings), so a rerun or a crash mid-job recomputes nothing done.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["FeatureRewardModel", "sequence_features", "cached_features", "feature_key", "file_digest",
           "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$MOJAX_CACHE/features`` (default ``~/.cache/mojax/features``)."""
    root = os.environ.get("MOJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mojax")
    return Path(root) / "features"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (part of a cache key: a changed model or data file is a different key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def feature_key(parts: Mapping[str, Any]) -> str:
    """A 20-hex-digit key for JSON-serialisable ``parts`` (sorted keys, so dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


_FORWARDS: dict[int, tuple[Any, Callable]] = {}


def _forward_fn(backbone: Any) -> Callable:
    """One jitted forward per backbone object (kept across calls, so each bucket shape compiles once per process)."""
    hit = _FORWARDS.get(id(backbone))
    if hit is not None and hit[0] is backbone:
        return hit[1]

    # Weights are an argument, not closed-over constants: a 135M-parameter constant makes XLA compile far slower.
    graphdef, state = nnx.split(backbone)

    @jax.jit
    def run(state, ids, mask):
        hidden = nnx.merge(graphdef, state)(ids, attention_mask=mask, return_hidden=True)
        hidden = hidden.astype(jnp.float32)  # [B, T, D]
        m = mask.astype(jnp.float32)[..., None]
        last = jnp.take_along_axis(hidden, (jnp.sum(mask, -1) - 1)[:, None, None], axis=1)[:, 0]
        return last, jnp.sum(hidden * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)

    def forward(ids, mask):
        return run(state, ids, mask)

    _FORWARDS[id(backbone)] = (backbone, forward)
    return forward


def _bucket(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


def sequence_features(backbone: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                      buckets: Sequence[int] = (64, 128, 192, 256), pad_id: int = 0,
                      log: Callable[[str], None] | None = None, log_every: int = 10) -> dict[str, np.ndarray]:
    """Final hidden states of ``backbone`` for each token sequence: ``{"last": [N, D], "mean": [N, D]}`` float32.

    ``last`` is the hidden state at the last token (what a sequence-classification reward head reads); ``mean``
    averages the hidden states over the sequence's tokens. Sequences are sorted by length and run right-padded in
    batches of ``batch_size`` padded to the smallest bucket that fits (one compile per bucket; the last batch of a
    bucket is padded with dummy rows that are dropped), so padding waste stays small. The backbone is called as
    ``backbone(ids [B, T], attention_mask=..., return_hidden=True)`` (a :class:`~mojax.models.Decoder`).

    Args:
      backbone: the frozen model.
      sequences: N token-id lists, each non-empty and at most ``max(buckets)`` long.
      batch_size: rows per forward pass.
      buckets: increasing padded lengths.
      pad_id: the id written into padding (masked out, so any valid id).
      log: optional callable receiving progress lines (batches done, seconds per batch, ETA).
      log_every: batches between progress lines.

    Raises:
      ValueError: an empty or too long sequence, or non-finite features (nothing is returned then).
    """
    buckets = sorted(int(b) for b in buckets)
    if len(sequences) == 0:
        raise ValueError("no sequences")
    lengths = np.array([len(s) for s in sequences])
    if lengths.min() < 1:
        raise ValueError("empty sequence")
    order = np.argsort(lengths, kind="stable")
    assigned = np.array([_bucket(int(n), buckets) for n in lengths])  # raises on a too long sequence
    groups: list[tuple[int, np.ndarray]] = []
    for b in buckets:
        idx = order[assigned[order] == b]
        groups += [(b, idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]

    forward = _forward_fn(backbone)
    out_last: np.ndarray | None = None
    out_mean: np.ndarray | None = None
    start = time.perf_counter()
    for n, (b, idx) in enumerate(groups):
        ids = np.full((batch_size, b), pad_id, np.int32)
        mask = np.zeros((batch_size, b), np.int32)
        for r, i in enumerate(idx):
            ids[r, :lengths[i]] = sequences[i]
            mask[r, :lengths[i]] = 1
        mask[len(idx):, 0] = 1  # dummy rows: one real token so every row is well defined
        last, mean = jax.device_get(forward(jnp.asarray(ids), jnp.asarray(mask)))
        if out_last is None:
            out_last = np.zeros((len(sequences), last.shape[-1]), np.float32)
            out_mean = np.zeros_like(out_last)
        out_last[idx] = last[:len(idx)]
        out_mean[idx] = mean[:len(idx)]
        if log is not None and ((n + 1) % log_every == 0 or n + 1 == len(groups)):
            sec = (time.perf_counter() - start) / (n + 1)
            log(f"features: {n + 1}/{len(groups)} batches, {sec:.2f} s/batch (T={b}), "
                f"ETA {sec * (len(groups) - n - 1) / 60:.1f} min")
    if not (np.all(np.isfinite(out_last)) and np.all(np.isfinite(out_mean))):
        raise ValueError("backbone produced non-finite features")
    return {"last": out_last, "mean": out_mean}


def cached_features(parts: Mapping[str, Any], compute: Callable[[], Mapping[str, np.ndarray]], *,
                    cache_dir: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """``compute()`` once per key: load ``<cache_dir>/<feature_key(parts)>.npz`` if present, else compute and store.

    The file is written atomically (temporary file + rename) and only when every array is finite, so a crashed or
    corrupt run never leaves a file that a later run would trust; ``parts`` is stored alongside as JSON.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{feature_key(parts)}.npz"
    if path.exists():
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if all(np.all(np.isfinite(a)) for a in arrays.values()):
            if log is not None:
                log(f"features: cached {path.name}")
            return arrays
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    if not all(np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError("refusing to cache non-finite features")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    (directory / f"{path.stem}.json").write_text(json.dumps(dict(parts), sort_keys=True, default=str, indent=1))
    return arrays



class FeatureRewardModel(nnx.Module):
    """K linear reward heads on precomputed features: ``r_k = w_kᵀ h``, ``W ∈ R^{D×K}``, no bias.

    The frozen-backbone counterpart of :class:`~mojax.models.RewardModel` (same ``score`` head, same init, same
    ``features`` / ``head`` / ``__call__`` interface), so the reward objectives
    (:func:`mojax.train.objectives.bradley_terry_objective`, :func:`~mojax.train.objectives.more_objective`) and
    :func:`mojax.train.fit` train it unchanged: the batch's ``input_ids`` hold the cached features ``[B, 2, D]``
    (float) instead of token ids, and ``attention_mask`` is ignored.

    Args:
      d_model: D, the feature width.
      num_heads: K.
      head_init_std: std of the normal init (0.02, as ``RewardModel``).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, d_model: int, num_heads: int = 1, *, head_init_std: float = 0.02, rngs: nnx.Rngs):
        if not isinstance(num_heads, int) or num_heads < 1 or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model and num_heads must be positive ints, got {d_model!r}, {num_heads!r}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.score = nnx.Linear(d_model, num_heads, use_bias=False,
                                kernel_init=jax.nn.initializers.normal(head_init_std), rngs=rngs)

    def features(self, features: jax.Array, *, attention_mask: jax.Array | None = None) -> jax.Array:
        """The cached features themselves, float32 ``[..., D]``."""
        del attention_mask
        features = jnp.asarray(features, jnp.float32)
        if features.shape[-1] != self.d_model:
            raise ValueError(f"features must end in d_model={self.d_model}, got shape {features.shape}")
        return features

    def head(self, features: jax.Array) -> jax.Array:
        """``[..., D] → [..., K]``."""
        return self.score(self.features(features))

    def __call__(self, features: jax.Array, *, attention_mask: jax.Array | None = None) -> jax.Array:
        """Rewards ``[..., K]``."""
        return self.head(features)
