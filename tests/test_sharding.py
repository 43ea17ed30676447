"""The logical-axis rules table and its translation to mesh shardings."""

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from mojax.sharding import LOGICAL_RULES, logical_to_mesh_spec


def test_rules_map_logical_names_and_never_reuse_a_mesh_axis():
    assert logical_to_mesh_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(("batch", "resp", "seq")) == P(("data", "fsdp"), None, None)
    # "embed" after "batch" would reuse fsdp: dropped, so the array is never sharded twice on one axis.
    assert logical_to_mesh_spec(("batch", "embed")) == P(("data", "fsdp"), None)
    assert logical_to_mesh_spec(None) == P()


def test_unknown_logical_name_is_a_clear_error():
    with pytest.raises(KeyError, match="no rule"):
        logical_to_mesh_spec(("not_an_axis",))


def test_every_rule_targets_a_mesh_axis():
    for _, target in LOGICAL_RULES:
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        assert set(targets) <= {"data", "fsdp", "tensor"}


_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from mojax.sharding import MESH_AXES, fit_spec, partitioned, state_shardings

    class M(nnx.Module):
        def __init__(self, rngs):
            init = nnx.initializers.normal()
            self.w = nnx.Param(partitioned(init, "embed", "mlp")(rngs.params(), (16, 32)))
            self.vocab = nnx.Param(partitioned(init, "vocab", "embed")(rngs.params(), (50257 % 97, 16)))  # 9 rows

    mesh = jax.make_mesh((2, 2, 2), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    abstract = nnx.state(nnx.eval_shape(lambda: M(nnx.Rngs(0))))
    sh = state_shardings(abstract, mesh)
    assert sh["w"].get_value().spec == P("fsdp", "tensor"), sh["w"]
    # 9 rows do not divide over tensor=2: replicated on that dimension instead of failing at placement.
    assert sh["vocab"].get_value().spec == P(None, "fsdp"), sh["vocab"]
    placed = jax.device_put(nnx.state(M(nnx.Rngs(0))), sh)
    assert placed["w"].get_value().sharding.spec == P("fsdp", "tensor")
    assert fit_spec(P(("data", "fsdp")), (6,), mesh) == P("data")

    # constrain() finds the mesh set by jax.set_mesh, or takes it explicitly; without either it is a no-op.
    import jax.numpy as jnp
    from mojax.sharding import constrain
    x = jnp.ones((4, 8))
    implicit = jax.jit(lambda x: constrain(x, "batch", "mlp"))
    explicit = jax.jit(lambda x: constrain(x, "batch", "mlp", mesh=mesh))
    assert "sharding_constraint" not in implicit.lower(x).as_text()
    assert 'sdy.sharding_constraint %arg0 <@mesh, [{"data", "fsdp"}, {"tensor"}]>' in explicit.lower(x).as_text()
    with jax.set_mesh(mesh):
        assert "sdy.sharding_constraint" in implicit.lower(x).as_text()
    print("ok")
""")


def test_state_shardings_on_eight_devices_replicate_non_dividing_dimensions():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
