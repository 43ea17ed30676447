"""Logical axis names and the one rules table that maps them onto the device mesh.

Every parameter of a mojax model is created with logical axis names (``nnx.with_partitioning(init, ("embed", "mlp"))``)
and key activations are constrained with :func:`constrain`. Nothing else in the library names a mesh axis: change
``LOGICAL_RULES`` (or pass ``rules=``) to change the parallelism layout.

Mesh axes are ``("data", "fsdp", "tensor")``: ``data`` replicates parameters and splits the batch, ``fsdp`` splits
both the batch and the parameters (ZeRO-3 style), ``tensor`` splits heads / MLP width / vocabulary (Megatron style).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of mesh axes, or None = replicated). The first mesh axis of a rule that is
# already used by another dimension of the same array is dropped, so e.g. ("embed", "embed") never double-shards.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),  # activations: batch split over every data-parallel axis
    ("seq", None),
    ("resp", None),  # the chosen/rejected or list axis of a batch stays whole: losses need all responses
    ("vocab", "tensor"),
    ("embed", "fsdp"),  # parameters' model dimension: FSDP shards it
    ("act_embed", None),  # activations' model dimension: replicated
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("q_proj", "tensor"),  # fused head*head_dim output of a projection
    ("kv_proj", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
    ("prefix", None),
    ("objectives", None),
    ("features", None),
)


def logical_to_mesh_spec(logical: Sequence[str | None] | PartitionSpec | None, mesh: Mesh | None = None,
                         rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> PartitionSpec:
    """Translate a tuple of logical axis names into a mesh ``PartitionSpec``.

    Mesh axes of size 1 or missing from ``mesh`` are dropped (they would shard nothing), and a mesh axis is used at
    most once per array, so the same rules serve a 1-device run and an 8-device ``data×fsdp×tensor`` mesh.
    """
    if logical is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in tuple(logical):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in the sharding rules table; known: {sorted(table)}")
        target = table[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        keep = []
        for axis in targets:
            if axis in used:
                continue
            if mesh is not None and (axis not in mesh.shape or mesh.shape[axis] == 1):
                continue
            keep.append(axis)
            used.add(axis)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return PartitionSpec(*out)


def _logical_names(leaf: Any) -> tuple | None:
    meta = getattr(leaf, "get_metadata", None)
    md = meta() if callable(meta) else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        if md.get(key) is not None:
            return tuple(md[key])
    return None


def logical_specs(state: Any) -> Any:
    """Logical axis-name tuples of an ``nnx.State`` (or ``None`` where a variable carries none), same tree shape."""
    return jax.tree.map(_logical_names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """``NamedSharding`` for every leaf of an (abstract) ``nnx.State`` from its logical axis names.

    Works on the output of ``nnx.eval_shape`` / ``jax.eval_shape`` so nothing is materialised before placement.
    Variables without logical names are replicated.
    """

    def one(leaf):
        names = _logical_names(leaf)
        spec = logical_to_mesh_spec(names, mesh, rules)
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        shape = getattr(value, "shape", None)
        if shape is not None:
            spec = fit_spec(spec, tuple(shape), mesh)
        sharding = NamedSharding(mesh, spec)
        if isinstance(leaf, nnx.Variable):
            return leaf.replace(sharding)
        return sharding

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide, so such a dimension is replicated instead of failing.

    Real checkpoints need this: GPT-2's 50,257-token vocabulary cannot be split two ways, and 2 KV heads cannot be
    split over a 4-way ``tensor`` axis. Axes are kept left to right while their running product divides the size.
    """
    entries = list(spec) + [None] * (len(shape) - len(spec))
    fixed = []
    for dim, axes in zip(shape, entries):
        if axes is None:
            fixed.append(None)
            continue
        keep, size = [], 1
        for axis in (axes,) if isinstance(axes, str) else tuple(axes):
            if dim % (size * mesh.shape[axis]) == 0:
                keep.append(axis)
                size *= mesh.shape[axis]
        fixed.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return PartitionSpec(*fixed)


def named_sharding(mesh: Mesh, *logical: str | None, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> NamedSharding:
    """``NamedSharding`` for an array whose dimensions carry the given logical names, e.g. ``("batch", "resp", "seq")``."""
    return NamedSharding(mesh, logical_to_mesh_spec(logical, mesh, rules))


def constrain(x: jax.Array, *logical: str | None, mesh: Mesh | None = None,
              rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op when no mesh is given or set (single-device code).

    The mesh is ``mesh``, else the one set by ``jax.set_mesh`` while tracing — ``jax.jit(..., in_shardings=...)``
    alone does not set it, so jitted code must be traced under ``with jax.set_mesh(mesh):`` (as
    :func:`mojax.train.fit`, the reference-log-prob cache and :func:`mojax.train.make_eval_fn` do) or pass ``mesh``.
    """
    if mesh is None:
        mesh = _current_mesh()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_mesh_spec(logical, mesh, rules)))


def _current_mesh() -> Mesh | None:
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    abstract = get() if get is not None else None
    if abstract is None or getattr(abstract, "empty", True):
        return None
    return abstract  # type: ignore[return-value]


def partitioned(init: Any, *logical: str | None) -> Any:
    """An initializer whose variables carry logical axis names (resolved later by :func:`state_shardings`).

    Eager sharding is off so a model builds the same way with or without a mesh; placement happens once, through
    ``state_shardings`` (``jax.device_put`` or a jitted init's ``out_shardings``).
    """
    return nnx.with_partitioning(init, tuple(logical), eager_sharding=False)
