"""The LM experiments' shared precision field (``experiments._lm_common.Precision``, issue 13 §4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from mojax.models import Decoder, DecoderConfig


def test_precision_apply_casts_the_policy():
    model = Decoder(DecoderConfig.tiny(), rngs=nnx.Rngs(0))
    assert lm.Precision().apply(model) is model  # the default policy leaves the model alone
    half = lm.Precision(dtype="bfloat16", param_dtype="bfloat16").apply(model)
    assert half.config.dtype == jnp.bfloat16 and half.config.param_dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(nnx.state(half, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b.astype(jnp.bfloat16), np.float32))


def test_every_lm_experiment_config_carries_the_precision_policy():
    import tyro

    from experiments import cos_dpo_llm, more_rm, spo, stable_po

    for module in (cos_dpo_llm, more_rm, spo, stable_po):
        cfg = module.get_config(quick=True)
        assert cfg.precision == lm.Precision(), module.__name__
        parsed = tyro.cli(type(cfg), default=cfg, args=["--precision.param-dtype", "bfloat16",
                                                         "--precision.dtype", "bfloat16"])
        assert parsed.precision == lm.Precision(dtype="bfloat16", param_dtype="bfloat16"), module.__name__
