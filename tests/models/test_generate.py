"""KV-cache decoding: token-for-token against transformers' ``generate``, cache against full forward passes, EOS
handling, top-p against a NumPy reference, sampling statistics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_testlib import batch, call, forward, hf_checkpoint, hf_model, random_model, torch_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models import DecoderConfig, generate, load_hf, top_p_filter

N_NEW = 8


@pytest.fixture(scope="module")
def tiny():
    return random_model(DecoderConfig.tiny("llama", vocab_size=97), seed=1)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "mistral", "qwen3", "gemma2", "gemma3"])
def test_greedy_matches_transformers_generate(name):
    """Left-padded prompts, greedy, EOS 2 / pad 0: the same tokens as ``transformers`` ``generate`` (Mistral and
    Gemma: a sliding window of 4 over 7 + 8 tokens, so the cache's window masking is exercised; Gemma 2/3 on
    alternating sliding and global layers)."""
    torch = torch_or_skip()
    path = hf_checkpoint(name)
    ids, mask = batch("left", B=3, T=7, seed=5)
    with torch.no_grad():
        ref = hf_model(str(path)).generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                           max_new_tokens=N_NEW, do_sample=False, eos_token_id=2, pad_token_id=0)
    ref = ref.numpy()[:, ids.shape[1]:]
    out = generate(load_hf(path), ids, attention_mask=mask, max_new_tokens=N_NEW, eos_id=2, pad_id=0)
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens[:, : ref.shape[1]], ref)
    assert (tokens[:, ref.shape[1]:] == 0).all()


def test_cached_decoding_equals_full_forward(tiny):
    """Greedy tokens equal step-by-step argmax of full (uncached) forward passes, with a prefix and left padding."""
    ids, mask = batch("left", B=2, T=6, seed=2)
    n = 5
    prefix = jax.random.normal(jax.random.key(0), (2, 3, tiny.config.d_model))
    out = generate(tiny, ids, attention_mask=mask, max_new_tokens=n, prefix_embeds=prefix)
    # one fixed-width buffer, right padded: causal attention makes the padding invisible (and one compile suffices)
    seq = np.concatenate([ids, np.zeros((2, n), ids.dtype)], axis=1)
    m = np.concatenate([mask, np.zeros((2, n), mask.dtype)], axis=1)
    for step in range(n):
        last = ids.shape[1] + step - 1
        nxt = np.argmax(np.asarray(call(tiny, seq, m, prefix=prefix))[:, last], axis=-1)
        np.testing.assert_array_equal(np.asarray(out.tokens[:, step]), nxt)
        seq[:, last + 1], m[:, last + 1] = nxt, 1
    assert bool(out.mask.all())


def test_cache_logits_equal_full_logits(tiny):
    """Prefill + one-token steps through the cache reproduce the full forward's logits at every position."""
    ids, mask = batch("left", B=2, T=9, seed=4)
    full = forward(tiny, ids, mask)
    cache = tiny.init_cache(2, 9)
    first, cache = call(tiny, ids[:, :5], mask[:, :5], cache=cache)
    steps = [first]
    for t in range(5, 9):
        logits, cache = call(tiny, ids[:, t: t + 1], mask[:, t: t + 1], cache=cache)
        steps.append(logits)
    cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
    np.testing.assert_allclose(cached[mask == 1], full[mask == 1], atol=2e-5)
    assert int(cache.index) == 9
    np.testing.assert_array_equal(np.asarray(cache.lengths), mask.sum(1))


def test_eos_stops_a_row(tiny):
    ids, mask = batch("left", B=2, T=6, seed=2)
    free = np.asarray(generate(tiny, ids, attention_mask=mask, max_new_tokens=N_NEW).tokens)
    # pick as EOS row 0's 3rd token, provided it did not appear earlier in row 0
    step = next(s for s in range(1, N_NEW) if free[0, s] not in free[0, :s])
    eos = int(free[0, step])
    out = generate(tiny, ids, attention_mask=mask, max_new_tokens=N_NEW, eos_id=eos, pad_id=-1)
    tokens, m = np.asarray(out.tokens), np.asarray(out.mask)
    np.testing.assert_array_equal(tokens[0, : step + 1], free[0, : step + 1])
    assert m[0, : step + 1].all() and not m[0, step + 1:].any()
    assert (tokens[0, step + 1:] == -1).all()
    row1_stop = next((s for s in range(N_NEW) if free[1, s] == eos), N_NEW - 1)
    np.testing.assert_array_equal(tokens[1, : row1_stop + 1], free[1, : row1_stop + 1])
    assert m[1, : row1_stop + 1].all()


def test_tiny_top_p_sampling_is_greedy(tiny):
    ids, mask = batch("left", B=2, T=6, seed=2)
    greedy = generate(tiny, ids, attention_mask=mask, max_new_tokens=N_NEW).tokens
    sampled = generate(tiny, ids, attention_mask=mask, max_new_tokens=N_NEW, temperature=1.0, top_p=1e-6,
                       rng=jax.random.key(3)).tokens
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(sampled))
    hot = generate(tiny, ids, attention_mask=mask, max_new_tokens=N_NEW, temperature=5.0,
                   rng=jax.random.key(3)).tokens
    assert not np.array_equal(np.asarray(hot), np.asarray(greedy))  # high temperature explores


def _top_p_reference(logits: np.ndarray, p: float) -> np.ndarray:
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += probs[i]
        if mass >= p:
            break
    out = np.zeros(len(logits), bool)
    out[keep] = True
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-500, 500), min_size=2, max_size=12, unique=True), st.floats(0.05, 1.0))
def test_top_p_filter_keeps_the_minimal_nucleus(values, p):
    logits = np.array(values, np.float32) / 100  # distinct logits: ties at the boundary are kept by design
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    ref = _top_p_reference(logits.astype(np.float64), p)
    if abs(np.sort(probs)[::-1][: ref.sum()].sum() - p) < 1e-5:
        return  # the nucleus boundary sits on p within float32 rounding: either answer is right
    padded = np.full(12, -1e4, np.float32)  # one shape, one compile; padding has probability 0
    padded[: len(logits)] = logits
    kept = np.isfinite(np.asarray(_top_p_jit(jnp.asarray(padded), p)))
    np.testing.assert_array_equal(kept[: len(logits)], ref)
    assert not kept[len(logits):].any()


_top_p_jit = jax.jit(top_p_filter)


def test_sampling_frequencies_follow_the_filtered_softmax():
    """Sampling at temperature T draws from softmax(logits/T) restricted to the nucleus."""
    from mojax.models.generate import _next_token

    logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0])
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = np.asarray(jax.vmap(lambda k: _next_token(logits, k, 2.0, 0.8, False))(keys))
    probs = np.exp(np.asarray(logits) / 2.0)
    probs /= probs.sum()
    nucleus = _top_p_reference(np.asarray(logits) / 2.0, 0.8)
    want = np.where(nucleus, probs, 0) / probs[nucleus].sum()
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, want, atol=0.015)  # ~4 standard errors at n = 20000


def test_generate_rejects_bad_input(tiny):
    ids = np.ones((2, 3), np.int32)
    with pytest.raises(ValueError, match="rng"):
        generate(tiny, ids, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny, ids, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        generate(tiny, ids[0], max_new_tokens=2)


_MESH_SCRIPT = textwrap.dedent("""
    import importlib, sys, tempfile
    sys.path.insert(0, {testdir!r})
    import jax, numpy as np
    from jax.sharding import AxisType
    from decoder_testlib import random_model
    from mojax.models import DecoderConfig, generate, load_hf, save_hf
    G = importlib.import_module("mojax.models.generate")
    mesh = jax.make_mesh((2, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    model = random_model(DecoderConfig.tiny("gemma2", vocab_size=96), seed=0, scale=0.3)
    tmp = tempfile.mkdtemp()
    save_hf(model, tmp)
    sharded = load_hf(tmp, mesh=mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 96, (4, 7))
    mask = np.ones((4, 7), np.int32)
    mask[:2, :3] = 0
    counts = []
    jitted = G._generate
    def spy(*args, **kwargs):  # the program generate() traces, lowered in the same context
        counts.append(jitted.lower(*args, **kwargs).as_text().count("sharding_constraint"))
        return jitted(*args, **kwargs)
    G._generate = spy
    ref = generate(model, ids, attention_mask=mask, max_new_tokens=6)
    out = generate(sharded, ids, attention_mask=mask, max_new_tokens=6)  # mesh derived from the parameters
    print("COUNTS", counts)
    assert counts[1] >= 10 and counts[1] > counts[0], counts
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    print("MESH_OK")
""")


def test_generate_traces_under_the_model_mesh(tmp_path):
    """A model loaded onto a (data=2, tensor=2) CPU mesh decodes under that mesh: the traced program holds the
    models' activation sharding constraints (dropped without a mesh) and the tokens equal one device's."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    script = tmp_path / "mesh.py"
    script.write_text(_MESH_SCRIPT.format(testdir=str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).parents[2]))
    assert "MESH_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
