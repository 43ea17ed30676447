"""The family registry and the weight-table machinery, for every registered family (no torch needed): the one
table maps a model to HF tensors and back exactly, the config mapping round-trips, and a table that forgets a
weight fails in both directions. Logit parity against transformers is in test_hf.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from decoder_testlib import random_model

from mojax.models import DecoderConfig
from mojax.models.families import get_family, model_types, weights_from_hf, weights_to_hf
from mojax.models.hf import config_from_hf, config_to_hf, flat_weights, param_shapes

ALL = model_types()


def test_registry_lists_every_family_module():
    assert set(ALL) >= {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gemma2", "gemma3_text"}
    with pytest.raises(ValueError, match="'bert' is not supported.*llama"):
        get_family("bert")


@pytest.mark.parametrize("model_type", ALL)
def test_weight_table_round_trip(model_type):
    """model → HF tensors → model is the identity, every parameter is used once, names are unique."""
    config = DecoderConfig.tiny(model_type, vocab_size=61, num_layers=3)
    fam = get_family(model_type)
    flat = flat_weights(random_model(config, seed=2))
    hf = weights_to_hf(fam, config, flat)
    assert all(v.ndim in (1, 2) for v in hf.values())  # HF stores vectors and matrices only
    back = weights_from_hf(fam, config, hf, param_shapes(config))
    assert back.keys() == flat.keys()
    for k in flat:
        np.testing.assert_array_equal(np.asarray(back[k]), flat[k], err_msg=str(k))
    # a bare base-model checkpoint (no "model." / "transformer." prefix) reads the same
    bare = {k.removeprefix(fam.prefix): v for k, v in hf.items()}
    assert weights_from_hf(fam, config, bare, param_shapes(config)).keys() == flat.keys()


@pytest.mark.parametrize("model_type", ALL)
def test_config_round_trip(model_type):
    """DecoderConfig → config.json dict → DecoderConfig is the identity for the family's tiny config."""
    config = DecoderConfig.tiny(model_type, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if config.norm == "gemma_rmsnorm":  # HF Gemma always has a query_pre_attn_scalar
        config = config.replace(query_pre_attn_scalar=float(config.head_size))
    explicit = lambda c: c.replace(head_dim=c.head_size, num_kv_heads=c.kv_heads)  # noqa: E731  None = the default
    config, again = explicit(config), explicit(config_from_hf(config_to_hf(config)))
    assert again == config, [f.name for f in dataclasses.fields(config)
                             if getattr(config, f.name) != getattr(again, f.name)]


def test_incomplete_table_fails_both_ways():
    config = DecoderConfig.tiny("llama", vocab_size=61)
    fam = get_family("llama")
    short = dataclasses.replace(fam, weights=tuple(r for r in fam.weights if "down_proj.weight" not in r[0]))
    flat = flat_weights(random_model(config))
    with pytest.raises(ValueError, match="no row for.*down_proj"):
        weights_to_hf(short, config, flat)
    hf = weights_to_hf(fam, config, flat)
    with pytest.raises(ValueError, match="unexpected tensors.*down_proj"):
        weights_from_hf(short, config, hf, param_shapes(config))
    del hf["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="no 'model.layers.1.mlp.up_proj.weight'"):
        weights_from_hf(fam, config, hf, param_shapes(config))


def test_export_refuses_what_the_family_cannot_express():
    with pytest.raises(ValueError, match="qk_norm"):
        config_to_hf(DecoderConfig.tiny("llama", qk_norm=True))
    with pytest.raises(ValueError, match="attn_logit_softcap"):
        config_to_hf(DecoderConfig.tiny("gemma3_text", attn_logit_softcap=50.0))


@pytest.mark.parametrize("bad, match", [
    (dict(layer_types=("full_attention",)), "layer_types"),
    (dict(layer_types=("sliding_attention", "full_attention")), "sliding_window is None"),
    (dict(final_logit_softcap=0.0), "final_logit_softcap"),
    (dict(norm="batchnorm"), "norm"),
])
def test_new_switches_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig.tiny("llama").replace(**bad)
