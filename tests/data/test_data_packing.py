"""Packed preference batches: the packer's layout, determinism and Grain resume; per-segment sums; and DPO losses
and gradients of the packed step equal to the padded step on the same pairs (a tiny Llama-shaped decoder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mojax.data import PipelineConfig, TokenizeConfig, TokenizedExample, collate, make_iterator
from mojax.data import packing
from mojax.data.packing import PackConfig, pack_examples, packing_batch_fn, segment_sums

V = 97


def _examples(n: int, seed: int = 0, *, empty_prompt: bool = False) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = 0 if (empty_prompt and i == 1) else int(rng.integers(1, 9))
        out.append(TokenizedExample(prompt_ids=rng.integers(1, V, p),
                                    response_ids=(rng.integers(1, V, int(rng.integers(1, 8))),
                                                  rng.integers(1, V, int(rng.integers(1, 8)))),
                                    labels=np.array([[1.0, 0.0]]), dataset_id=i % 2, location=i + 1))
    return out


def test_pack_layout_recovers_every_sequence():
    exs = _examples(7, seed=1)
    cfg = PackConfig(row_length=20, max_segments=4)
    b = pack_examples(exs, cfg, batch_size=8)
    r, t = b["input_ids"].shape
    assert t == 20 and b["segment_index"].shape == (8, 2) and b["segment_lengths"].shape == (r, 4)
    assert b["example_mask"].tolist() == [True] * 7 + [False]
    assert (b["segment_ids"].max(axis=1) <= 4).all()
    for i, ex in enumerate(exs):
        for j, resp in enumerate(ex.response_ids):
            row, seg = divmod(int(b["segment_index"][i, j]), 4)
            sel = b["segment_ids"][row] == seg + 1
            want = np.concatenate([ex.prompt_ids, resp])
            np.testing.assert_array_equal(b["input_ids"][row][sel], want)
            np.testing.assert_array_equal(b["positions"][row][sel], np.arange(len(want)))
            np.testing.assert_array_equal(b["loss_mask"][row][sel], np.arange(len(want)) >= len(ex.prompt_ids))
            assert b["segment_lengths"][row, seg] == len(resp)
    assert b["attention_mask"].sum() == sum(len(e.prompt_ids) * 2 + sum(map(len, e.response_ids)) for e in exs)
    # deterministic, and denser than padding
    again = pack_examples(exs, cfg, batch_size=8)
    assert all(np.array_equal(b[k], again[k]) for k in b)
    assert packing.padding_fraction(b) < packing.padding_fraction(collate(exs, TokenizeConfig(max_length=20,
                                                                                               max_prompt_length=10)))


def test_pack_errors():
    exs = _examples(4)
    with pytest.raises(ValueError, match="exceeds row_length"):
        pack_examples(exs, PackConfig(row_length=3))
    with pytest.raises(ValueError, match="rows"):
        pack_examples(exs, PackConfig(row_length=16, max_segments=1, rows=2))
    with pytest.raises(ValueError, match="row_length"):
        PackConfig(row_length=0)


def test_packing_pipeline_resumes():
    exs = _examples(24, seed=2)
    cfg = PipelineConfig(batch_size=4, seed=3, shard_index=0, shard_count=1)
    fn = packing_batch_fn(PackConfig(row_length=20, max_segments=4, rows=6))
    it = make_iterator(exs, cfg, batch_fn=fn)
    next(it), next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    it2 = make_iterator(exs, cfg, batch_fn=fn)
    it2.set_state(state)
    for want in rest:
        got = next(it2)
        assert all(np.array_equal(want[k], got[k]) for k in want)


def test_segment_sums_match_numpy():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(3, 10)).astype(np.float32)
    seg = rng.integers(0, 4, (3, 10)).astype(np.int32)
    got = np.asarray(segment_sums(jnp.asarray(vals), jnp.asarray(seg), 3))
    want = np.array([[vals[r][seg[r] == s].astype(np.float64).sum() for s in (1, 2, 3)] for r in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.fixture(scope="module")
def model():
    from mojax.models import Decoder, DecoderConfig

    return Decoder(DecoderConfig.tiny("llama", vocab_size=V, max_positions=32), rngs=nnx.Rngs(0))


# "chunked": the compact head over several chunks (the training path); the single-chunk compact head is covered by
# test_packed_logps_per_response; "full": full logits (chunk_size=None).
@pytest.mark.parametrize("chunk", ["chunked", "full"])
def test_packed_dpo_equals_padded(model, chunk, monkeypatch):
    from mojax.train.objectives import _common, dpo_objective

    if chunk == "chunked":  # force several head chunks on both paths (the tiny vocabulary fits one otherwise)
        monkeypatch.setattr(_common, "MIN_CHUNK_LOGITS", 1)
        monkeypatch.setattr(packing, "MIN_CHUNK_LOGITS", 1)
    exs = _examples(5, seed=4, empty_prompt=True)  # one empty prompt: no prediction across a segment boundary
    ref = np.random.default_rng(5).normal(-20, 2, (6, 2)).astype(np.float32)
    padded = {k: jnp.asarray(v) for k, v in collate(exs, TokenizeConfig(max_length=16, max_prompt_length=8),
                                                     batch_size=6).items()}
    packed = {k: jnp.asarray(v) for k, v in pack_examples(exs, PackConfig(row_length=24, max_segments=5),
                                                          batch_size=6).items()}
    assert packed["input_ids"].shape[0] < 12  # fewer rows than the padded layout's B·N
    obj = dpo_objective(beta=0.3, ref_mode="cached", chunk_size=None if chunk == "full" else 4)
    hp = obj.initial_hparams()

    @nnx.jit  # one compile per layout: op-by-op the scanned head costs minutes on a loaded machine
    def loss_and_grad(m, batch):
        def f(m):
            return obj.fn(m, {**batch, "ref_logps": jnp.asarray(ref)}, None, hp)
        return nnx.value_and_grad(f, has_aux=True)(m)

    (lp, mp), gp = loss_and_grad(model, packed)
    (lu, mu), gu = loss_and_grad(model, padded)
    assert abs(float(lp) - float(lu)) <= 1e-5
    for k in ("chosen_logps", "rejected_logps"):
        if k in mu:
            assert abs(float(mp[k]) - float(mu[k])) <= 1e-4 * max(1.0, abs(float(mu[k])))
    leaves_p, leaves_u = jax.tree.leaves(gp), jax.tree.leaves(gu)
    assert len(leaves_p) == len(leaves_u)
    for a, b in zip(leaves_p, leaves_u):
        scale = max(float(jnp.max(jnp.abs(b))), 1e-12)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * max(scale, 1.0), (float(jnp.max(jnp.abs(a - b))), scale)
    assert max(float(jnp.max(jnp.abs(b))) for b in leaves_u) > 1e-4  # the gradients are not trivially zero


def test_packed_logps_per_response(model):
    """Per-response log-probs and lengths of the packed opening equal the padded opening's ([B, N], ≤ 1e-5)."""
    from mojax.train.objectives import LMOpening

    exs = _examples(4, seed=6)
    padded = collate(exs, TokenizeConfig(max_length=16, max_prompt_length=8))
    packed = pack_examples(exs, PackConfig(row_length=32, max_segments=8))
    opening = LMOpening(ref_mode=None, chunk_size=4, pairs=True)
    run = nnx.jit(lambda m, batch: opening(m, batch))
    xp, xu = run(model, packed), run(model, padded)
    np.testing.assert_allclose(np.asarray(xp.logps), np.asarray(xu.logps), atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(xp.lengths), np.asarray(xu.lengths))
