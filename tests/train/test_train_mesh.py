"""Mesh sizes: -1 fills the rest, clear errors when sizes do not divide the devices or the batch."""

from __future__ import annotations

import jax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mojax.train.mesh import MeshConfig, batch_shards, check_global_batch, make_mesh, resolve_mesh_shape


@given(data=st.sampled_from([1, 2, 4, 8]), fsdp=st.sampled_from([1, 2, 4]), tensor=st.sampled_from([1, 2]),
       free=st.integers(0, 3))
def test_resolve_fills_the_free_axis(data, fsdp, tensor, free):
    sizes = [data, fsdp, tensor]
    n = data * fsdp * tensor
    if free < 3:
        sizes[free] = -1
    got = resolve_mesh_shape(MeshConfig(data=sizes[0], fsdp=sizes[1], tensor=sizes[2]), n)
    assert got == (data, fsdp, tensor)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(ValueError, match="not divisible by 3"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ValueError, match="needs 4 devices, but 8"):
        resolve_mesh_shape(MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(ValueError, match="sizes are positive"):
        resolve_mesh_shape(MeshConfig(data=0), 8)


def test_make_mesh_and_batch_checks():
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.size == 1
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert batch_shards(mesh) == 1
    check_global_batch(mesh, 8, accum_steps=4)
    with pytest.raises(ValueError, match="not divisible by accum_steps=3"):
        check_global_batch(mesh, 8, accum_steps=3)


def test_batch_must_split_over_data_and_fsdp():
    class FakeMesh:  # the check reads only the axis sizes
        shape = {"data": 2, "fsdp": 2, "tensor": 2}

    check_global_batch(FakeMesh(), 8, accum_steps=2)
    with pytest.raises(ValueError, match="does not split over data×fsdp = 4"):
        check_global_batch(FakeMesh(), 12, accum_steps=2)
