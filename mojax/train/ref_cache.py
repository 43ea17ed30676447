"""Reference log-probs computed once in a pass over the data and cached on disk (``ref_mode="cached"``).

A frozen reference costs a forward per step; caching it once turns that into a read. The cache key is a
fingerprint — SHA-256 over the token arrays of the data, the tokenizer's identity and the reference model's weights
(every leaf's path, dtype, shape and bytes) — so changing any of them invalidates the entry, and nothing stale can be
read. SPO needs the log-probs of every earlier round's model π_0..π_{n−1}: each model is cached under its own key, so
round n recomputes only π_{n−1}.

Layout: ``<cache_dir>/<fingerprint>.npy`` holds ``[n_examples, N]`` float32; :func:`cached_reference_logps` stacks R
models into ``[R, n, N]``. Records then carry ``ref_logps`` ``[N]`` (R = 1) or ``[R, N]``; after batching, the
latter is ``[B, R, N]`` and :func:`ref_axis_first` moves it to the batch layout's ``[R, B, N]``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mojax.train.objectives import policy_logps
from mojax.train.state import batch_shardings, replicated

SEQUENCE_KEYS = ("input_ids", "attention_mask", "loss_mask")


def _hash_arrays(h: "hashlib._Hash", items: Sequence[tuple[str, Any]]) -> None:
    for name, value in items:
        arr = np.ascontiguousarray(np.asarray(jax.device_get(value)))
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())


def params_fingerprint(model_or_state: Any) -> str:
    """SHA-256 of every variable of a model (or state): key path, dtype, shape and bytes."""
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    h = hashlib.sha256()
    _hash_arrays(h, [(jax.tree_util.keystr(p), leaf) for p, leaf in flat])
    return h.hexdigest()


def data_fingerprint(examples: Mapping[str, Any]) -> str:
    """SHA-256 of the sequence arrays (``input_ids``, ``attention_mask``, ``loss_mask``) of a dataset."""
    missing = [k for k in SEQUENCE_KEYS if k not in examples]
    if missing:
        raise KeyError(f"examples lack {missing}; expected arrays {SEQUENCE_KEYS} of shape [n, N, T]")
    h = hashlib.sha256()
    _hash_arrays(h, [(k, examples[k]) for k in SEQUENCE_KEYS])
    return h.hexdigest()


def fingerprint(*, data: str, model: str, tokenizer: str = "", chunk_size: int | None = 128) -> str:
    """The cache key of one (data, tokenizer, reference model) triple (hex digests / an identity string)."""
    return hashlib.sha256(f"mojax-ref-logps-v1|{data}|{tokenizer}|{model}|{chunk_size}".encode()).hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """A string naming a tokenizer's behaviour: its ``tokenizer.json`` serialisation when it has one, else
    ``name_or_path`` + vocabulary size, else ``str()`` (a plain string passes through)."""
    if tokenizer is None or isinstance(tokenizer, str):
        return tokenizer or ""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return hashlib.sha256(backend.to_str().encode()).hexdigest()
    if hasattr(tokenizer, "to_str"):
        return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
    name = getattr(tokenizer, "name_or_path", None)
    if name is not None:
        return f"{name}|{len(tokenizer)}"
    return str(tokenizer)


@functools.lru_cache(maxsize=16)
def _forward(graphdef: nnx.GraphDef, chunk_size: int | None, model_kwargs: tuple) -> Any:
    """One jitted forward per model structure, reused across models with the same graph (SPO's rounds)."""

    @jax.jit
    def forward(state, batch):
        return policy_logps(nnx.merge(graphdef, state), batch, chunk_size=chunk_size, **dict(model_kwargs))

    return forward


def model_mesh(model_or_state: Any) -> Mesh | None:
    """The mesh a model's arrays are placed on (the first ``NamedSharding`` found), or None."""
    for leaf in jax.tree.leaves(nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module)
                                else model_or_state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _place(batch: dict[str, np.ndarray], mesh: Mesh | None) -> dict[str, jax.Array]:
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    try:  # examples over the "batch" mesh axes when they divide, else replicated
        return jax.device_put(batch, batch_shardings(batch, mesh))
    except ValueError:
        return jax.device_put(batch, replicated(mesh))


def compute_logps(model: nnx.Module, examples: Mapping[str, Any], *, batch_size: int = 32,
                  chunk_size: int | None = 128, mesh: Mesh | None = None, **model_kwargs: Any) -> np.ndarray:
    """Sequence log-probs ``[n, N]`` of every response, in jitted batches (the last one padded and trimmed).

    The forward traces under ``jax.set_mesh(mesh)`` (default: the mesh the model's arrays are on), so the model's
    activation sharding constraints apply; batches are split over the ``"batch"`` axes when they divide.
    """
    arrays = {k: np.asarray(examples[k]) for k in SEQUENCE_KEYS}
    n = arrays["input_ids"].shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    graphdef, state = nnx.split(model)
    mesh = model_mesh(state) if mesh is None else mesh
    forward = _forward(graphdef, chunk_size, tuple(sorted(model_kwargs.items())))
    out = []
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
        size = batch["input_ids"].shape[0]
        if size < batch_size:  # pad with copies of the first row: one compiled shape for every batch
            batch = {k: np.concatenate([v, np.repeat(v[:1], batch_size - size, axis=0)]) for k, v in batch.items()}
        if mesh is None:
            logps = forward(state, _place(batch, None))
        else:
            with jax.set_mesh(mesh):
                logps = forward(state, _place(batch, mesh))
        out.append(np.asarray(logps)[:size])
    return np.concatenate(out, axis=0).astype(np.float32)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)  # a reader sees the old file or the complete new one, never a partial write


def cached_reference_logps(
    models: nnx.Module | Sequence[nnx.Module],
    examples: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    tokenizer: Any = None,
    batch_size: int = 32,
    chunk_size: int | None = 128,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, list[bool]]:
    """Log-probs of every example's N responses under each reference model, from the cache when possible.

    Args:
      models: one reference model, or the ordered list π_0..π_{n−1} (SPO).
      examples: ``input_ids``, ``attention_mask``, ``loss_mask`` arrays ``[n, N, T]`` (the whole dataset, in order).
      cache_dir: where ``<fingerprint>.npy`` files live.
      tokenizer: the tokenizer (or an identity string) the tokens came from; part of the key.
      batch_size, chunk_size: of the forward pass when computing.
      mesh: the mesh the forward traces under (default: each model's own, see :func:`compute_logps`).

    Returns:
      ``(logps, hits)``: ``[n, N]`` for one model or ``[R, n, N]`` for a list, and per model whether it was read
      from the cache.
    """
    single = isinstance(models, nnx.Module)
    models = [models] if single else list(models)
    if not models:
        raise ValueError("need at least one reference model")
    data_fp, tok = data_fingerprint(examples), tokenizer_identity(tokenizer)
    tables, hits = [], []
    for model in models:
        path = Path(cache_dir) / f"{fingerprint(data=data_fp, model=params_fingerprint(model), tokenizer=tok, chunk_size=chunk_size)}.npy"
        if path.exists():
            tables.append(np.load(path))
            hits.append(True)
            continue
        table = compute_logps(model, examples, batch_size=batch_size, chunk_size=chunk_size, mesh=mesh)
        if jax.process_index() == 0:
            _atomic_save(path, table)
        tables.append(table)
        hits.append(False)
    return (tables[0] if single else np.stack(tables)), hits


def attach_ref_logps(examples: Mapping[str, Any], logps: np.ndarray) -> dict[str, np.ndarray]:
    """Examples with ``ref_logps`` per record: ``[n, N]`` stays, ``[R, n, N]`` becomes ``[n, R, N]``."""
    logps = np.asarray(logps, np.float32)
    n = np.shape(examples["input_ids"])[0]
    if logps.ndim == 3:
        logps = np.moveaxis(logps, 0, 1)
    if logps.shape[0] != n:
        raise ValueError(f"ref log-probs cover {logps.shape[0]} examples, the data has {n}")
    return {**{k: np.asarray(v) for k, v in examples.items()}, "ref_logps": logps}


def ref_axis_first(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Batch transform: ``ref_logps`` ``[B, R, N]`` (records of several models, batched) → ``[R, B, N]``."""
    out = dict(batch)
    ref = out.get("ref_logps")
    if ref is not None and np.ndim(ref) == 3:
        out["ref_logps"] = np.moveaxis(np.asarray(ref), 1, 0)
    return out
