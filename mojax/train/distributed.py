"""Multi-host runs through JAX's own runtime: ``jax.distributed.initialize`` and process-local → global batches.

Recipe (one process per host, or several on one machine for testing):

1. every process calls :func:`initialize` with the same coordinator address and process count and its own id
   (from :class:`DistributedConfig`, or the environment ``MOJAX_COORDINATOR_ADDRESS``, ``MOJAX_NUM_PROCESSES``,
   ``MOJAX_PROCESS_ID``; on TPU pods and SLURM ``auto=True`` lets JAX detect them);
2. the mesh spans ``jax.devices()`` — every device of every process;
3. each process reads only its share of each global batch (:func:`process_batch_slice`) and :func:`shard_batch`
   assembles the global ``jax.Array`` with ``jax.make_array_from_process_local_data``;
4. the jitted step is identical on every process; checkpoints are written cooperatively by Orbax.

On CPU the cross-process collectives need ``gloo`` (``cpu_collectives="gloo"``, the default here for CPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mojax.train.state import batch_axis, batch_shardings


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How this process joins a multi-process run (empty/None fields fall back to ``MOJAX_*`` env variables).

    Attributes:
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes: total number of processes; 1 (or unset with no address) = single-process run, no-op.
      process_id: this process's index in ``[0, num_processes)``.
      auto: call ``jax.distributed.initialize()`` without arguments (TPU pods, SLURM, Open MPI auto-detection).
      cpu_collectives: CPU cross-process collectives implementation (``"gloo"``); empty = JAX's default.
    """

    coordinator_address: str = ""
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    cpu_collectives: str = "gloo"


def resolve(config: DistributedConfig, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Fill unset fields of ``config`` from ``MOJAX_COORDINATOR_ADDRESS`` / ``MOJAX_NUM_PROCESSES`` / ``MOJAX_PROCESS_ID``."""
    env = os.environ if environ is None else environ
    address = config.coordinator_address or env.get("MOJAX_COORDINATOR_ADDRESS", "")
    num = config.num_processes if config.num_processes is not None else env.get("MOJAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else env.get("MOJAX_PROCESS_ID")
    num = None if num is None else int(num)
    pid = None if pid is None else int(pid)
    return dataclasses.replace(config, coordinator_address=address, num_processes=num, process_id=pid)


def initialize(config: DistributedConfig = DistributedConfig()) -> bool:
    """Join the multi-process run described by ``config`` (after :func:`resolve`); returns whether it did.

    A single-process config (no address and ``num_processes`` unset or 1, and not ``auto``) is a no-op, so the same
    entry point runs on a laptop. Must run before anything touches a JAX device.

    Raises:
      ValueError: an incomplete multi-process config (address, count and id are all needed) or an id out of range.
    """
    config = resolve(config)
    if config.auto:
        jax.distributed.initialize()
        return True
    if not config.coordinator_address and config.num_processes in (None, 1):
        return False
    if not config.coordinator_address or config.num_processes is None or config.process_id is None:
        raise ValueError("a multi-process run needs coordinator_address, num_processes and process_id (or the "
                         f"MOJAX_* environment variables); got {config}")
    if config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
        raise ValueError(f"process_id must be in [0, num_processes={config.num_processes}), got {config.process_id}")
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    jax.distributed.initialize(coordinator_address=config.coordinator_address, num_processes=config.num_processes,
                               process_id=config.process_id)
    return True


def process_batch_slice(global_batch: int, *, process_index: int | None = None,
                        process_count: int | None = None) -> slice:
    """The examples ``[start, stop)`` of a global batch that this process loads (contiguous, equal shares).

    Contiguous blocks in process order match how a batch-sharded array over ``jax.devices()`` is laid out, which is
    what ``jax.make_array_from_process_local_data`` expects of the local data.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} does not split over {count} processes")
    share = global_batch // count
    return slice(index * share, (index + 1) * share)


def local_batch(batch: Mapping[str, Any], *, process_index: int | None = None,
                process_count: int | None = None) -> dict[str, np.ndarray]:
    """This process's share of a *global* host batch (each entry sliced on its example axis)."""
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        axis = batch_axis(name, x.ndim)
        sl = process_batch_slice(x.shape[axis], process_index=process_index, process_count=process_count)
        out[name] = x[(slice(None),) * axis + (sl,)]
    return out


def shard_batch(local: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global ``jax.Array`` batch from this process's local share, split over the ``"batch"`` mesh axes.

    Each entry's example axis grows by the process count; in a single-process run this is a plain ``device_put``.
    """
    local = {k: np.asarray(v) for k, v in local.items()}
    shardings = batch_shardings(local, mesh)
    count = jax.process_count()
    out = {}
    for name, x in local.items():
        shape = list(x.shape)
        if x.ndim:
            shape[batch_axis(name, x.ndim)] *= count
        out[name] = jax.make_array_from_process_local_data(shardings[name], x, tuple(shape))
    return out
