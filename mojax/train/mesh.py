"""The device mesh: one ``("data", "fsdp", "tensor")`` mesh, created once and passed explicitly.

A ``MeshConfig`` names the size of each axis; ``-1`` on one axis fills whatever the other two leave of the device count,
so the laptop default (``data=-1``) is pure data parallelism over every local device and the same config runs on a
pod slice. All three axes are ``AxisType.Auto`` (GSPMD propagation): with JAX 0.10's default ``Explicit`` axes an
``nnx.Embed`` sharded over a mesh axis fails to trace (see ``STACK_NOTES.md``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

from mojax.sharding import MESH_AXES


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Sizes of the ``data``, ``fsdp`` and ``tensor`` mesh axes; at most one may be ``-1`` (fills the rest).

    ``data`` splits the batch and replicates parameters, ``fsdp`` splits both (ZeRO-3), ``tensor`` splits heads, MLP
    width and vocabulary (Megatron). The product must equal the number of devices.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


def resolve_mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Concrete ``(data, fsdp, tensor)`` sizes for ``num_devices`` devices, filling the one ``-1`` axis.

    Raises:
      ValueError: a size is 0 or below −1, more than one axis is −1, or the sizes do not multiply to the device count.
    """
    sizes = (config.data, config.fsdp, config.tensor)
    for name, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise ValueError(f"mesh axis {name!r} has size {size}; sizes are positive, or -1 to fill the rest")
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"{num_devices} devices cannot be split into a mesh with fixed axes "
                             f"{dict(zip(MESH_AXES, sizes))}: {num_devices} is not divisible by {fixed}")
        sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    elif fixed != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices, but {num_devices} are available")
    return sizes  # type: ignore[return-value]


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``("data", "fsdp", "tensor")`` over ``devices`` (default: every device of every process).

    Example:
      >>> mesh = make_mesh(MeshConfig(data=-1))
      >>> mesh.axis_names
      ('data', 'fsdp', 'tensor')
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split: ``data × fsdp`` (the ``"batch"`` logical rule)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_global_batch(mesh: Mesh, global_batch: int, *, accum_steps: int = 1) -> None:
    """Raise a clear error unless each of the ``accum_steps`` microbatches splits evenly over the batch shards."""
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    if global_batch % accum_steps:
        raise ValueError(f"global batch {global_batch} is not divisible by accum_steps={accum_steps}")
    micro = global_batch // accum_steps
    shards = batch_shards(mesh)
    if micro % shards:
        raise ValueError(f"microbatch of {micro} examples (global batch {global_batch} / accum_steps {accum_steps}) "
                         f"does not split over data×fsdp = {shards} devices; use a multiple of {shards}")
