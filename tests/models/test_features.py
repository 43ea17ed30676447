"""Frozen-backbone features (last token / mean) and their disk cache, against a direct forward pass."""

import numpy as np
import pytest
from flax import nnx

from mojax.models import Decoder, DecoderConfig
from mojax.models.features import FeatureRewardModel, cached_features, feature_key, sequence_features


def _tiny():
    cfg = DecoderConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_positions=64)
    return Decoder(cfg, rngs=nnx.Rngs(0))


def test_sequence_features_equal_an_unpadded_forward_per_sequence():
    model = _tiny()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 32, size=n).tolist() for n in (9, 3, 7)]  # two buckets, a partly filled batch
    out = sequence_features(model, seqs, batch_size=2, buckets=(4, 16))
    for i, s in enumerate(seqs[:2]):
        hidden = np.asarray(model(np.array([s]), return_hidden=True))[0]  # [T, D], no padding at all
        np.testing.assert_allclose(out["last"][i], hidden[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["mean"][i], hidden.mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        sequence_features(model, [[1] * 30], buckets=(4, 16))


def test_cached_features_compute_once_and_refuse_non_finite(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3.0)}

    parts = {"model": "m", "n": 3}
    a = cached_features(parts, compute, cache_dir=tmp_path)
    b = cached_features(dict(reversed(list(parts.items()))), compute, cache_dir=tmp_path)  # same key, any order
    assert len(calls) == 1 and np.array_equal(a["x"], b["x"])
    assert feature_key(parts) != feature_key({**parts, "n": 4})
    with pytest.raises(ValueError, match="non-finite"):
        cached_features({"other": 1}, lambda: {"x": np.array([np.nan])}, cache_dir=tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz"]  # nothing written for the NaN run


def test_feature_reward_model_is_a_linear_head_on_the_features():
    model = FeatureRewardModel(4, num_heads=2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), x @ np.asarray(model.score.kernel[...]), rtol=1e-6)
    with pytest.raises(ValueError, match="d_model=4"):
        model(np.zeros((3, 2, 5)))
