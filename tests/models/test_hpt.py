"""Hyper Prompt Tuning: shapes, a float64 NumPy re-derivation, init, and the ConditionedLM wrapper contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models.config import DecoderConfig
from mojax.models.decoder import Decoder
from mojax.models.hpt import ConditionedLM, HPTConfig, HyperPromptTuning, conditioning_vector
from mojax.models.lora import LoRAConfig, add_lora
from mojax.models.ranker import num_params
from mojax.sharding import logical_specs, logical_to_mesh_spec

# One layer, narrow: the conditioning path is what is under test, and every op costs compile time on 2 shared cores.
_DCFG = DecoderConfig.tiny(num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32, vocab_size=64)
VOCAB, D, T, B = _DCFG.vocab_size, _DCFG.d_model, 6, 3


def _model(cfg=None, seed=0):
    cfg = cfg or HPTConfig(num_objectives=3, num_prefix_tokens=4, rank=2, hidden_dim=8)
    rngs = nnx.Rngs(seed)
    backbone = add_lora(Decoder(_DCFG, rngs=rngs), LoRAConfig(rank=2), rngs=rngs)
    return ConditionedLM(backbone, HyperPromptTuning(cfg, d_model=D, rngs=rngs))


def _ids(seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (B, T)), jnp.int32)


# Built once: eager construction dominates these tests' time on a shared 2-core machine.
_MODEL = _model(seed=3)
_IDS = _ids(4)
_JITTED = nnx.jit(lambda m, ids, w: m(ids, weights=w))
_BACKBONE = nnx.jit(lambda m, ids, prefix: m(ids, prefix_embeds=prefix))
_TCFG = HPTConfig(num_objectives=2, num_prefix_tokens=4, rank=2, hidden_dim=8, condition_on_temperature=True)
_THPT = HyperPromptTuning(_TCFG, d_model=D, rngs=nnx.Rngs(0))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _numpy_hpt(hpt, cond):
    """Float64 re-derivation of M(w) ⊙ E from the module's parameters."""
    f = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    cond = np.asarray(cond, np.float64)
    ha = _gelu_tanh(cond @ f(hpt.a_hidden.kernel) + f(hpt.a_hidden.bias))
    hb = _gelu_tanh(cond @ f(hpt.b_hidden.kernel) + f(hpt.b_hidden.bias))
    a = np.einsum("bh,hpr->bpr", ha, f(hpt.a_kernel)) + f(hpt.a_bias)
    bm = np.einsum("bh,hdr->bdr", hb, f(hpt.b_kernel)) + f(hpt.b_bias)
    mask = np.einsum("bpr,bdr->bpd", a, bm)
    return mask * f(hpt.prefix)


def test_prefix_matches_float64_numpy():
    model = _MODEL
    w = jnp.asarray(np.random.default_rng(2).dirichlet(np.ones(3), B), jnp.float32)
    out = model.hpt(w)
    assert out.shape == (B, 4, D) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _numpy_hpt(model.hpt, w), rtol=2e-5, atol=1e-7)


def test_temperature_conditioning_shapes_and_scale_invariance():
    hpt = _THPT
    assert hpt.a_hidden.kernel.shape == (4, 8)  # input [w, β/‖β‖₁] has width 2K
    w = jnp.array([[0.3, 0.7], [1.0, 0.0]])
    beta = jnp.array([[0.1, 0.5], [2.0, 1.0]])
    cond = conditioning_vector(w, beta, num_objectives=2, condition_on_temperature=True)
    np.testing.assert_allclose(cond, [[0.3, 0.7, 1 / 6, 5 / 6], [1.0, 0.0, 2 / 3, 1 / 3]], rtol=1e-6)
    out = hpt(w, beta)
    assert out.shape == (2, 4, D)
    np.testing.assert_allclose(out, _numpy_hpt(hpt, cond), rtol=2e-5, atol=1e-7)
    # Only β's direction is fed (COS-DPO Prop. 3.1): rescaling β leaves the prefix unchanged ...
    np.testing.assert_allclose(hpt(w, 7.5 * beta), out, rtol=1e-6, atol=1e-8)
    # ... while changing its direction changes it.
    assert not np.allclose(hpt(w, beta[::-1]), out)


def test_bad_input_raises():
    hpt = _MODEL.hpt
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        hpt(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="condition_on_temperature=False"):
        hpt(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="needs temperatures"):
        _THPT(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="rank"):
        HPTConfig(num_objectives=2, rank=0)
    with pytest.raises(ValueError, match="input_ids"):
        _MODEL(jnp.zeros((T,), jnp.int32), weights=jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="d_model"):
        HyperPromptTuning(HPTConfig.tiny(), d_model=0, rngs=nnx.Rngs(0))


def test_init_mask_near_ones_and_every_parameter_gets_gradient():
    model = _MODEL
    w = jnp.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    mask = model.hpt.mask(w)
    # Output biases 1/√r make M ≈ 1 at init (so the prefix starts as E) ...
    np.testing.assert_allclose(mask, 1.0, atol=0.5)
    # ... yet M already depends on w, and E is small (token-embedding scale) but not zero.
    assert float(jnp.abs(mask[0] - mask[2]).max()) > 1e-4
    prefix_std = float(jnp.std(model.hpt.prefix[...]))
    assert 0.005 < prefix_std < 0.05

    ids = _ids()

    def loss(hpt):
        return jnp.sum(ConditionedLM(model.backbone, hpt)(ids, weights=w) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model.hpt)
    for path, g in nnx.to_flat_state(grads):
        assert float(jnp.abs(g[...]).max()) > 0, f"no gradient reaches {path}"


def test_zero_prefix_block_equals_backbone_with_zero_prefix():
    model = nnx.clone(_MODEL)
    ids, w = _IDS, jnp.full((B, 3), 1 / 3)
    with_prefix = _JITTED(model, ids, w)
    plain = _BACKBONE(model.backbone, ids, None)
    # The prefix changes the real-token logits (shape unchanged: prefix positions are not returned).
    assert with_prefix.shape == plain.shape == (B, T, VOCAB)
    assert float(jnp.abs(with_prefix - plain).max()) > 1e-4
    np.testing.assert_allclose(with_prefix, _BACKBONE(model.backbone, ids, model.hpt(w)), rtol=1e-5, atol=1e-6)
    model.hpt.prefix[...] = jnp.zeros_like(model.hpt.prefix[...])
    zero_prefix = _BACKBONE(model.backbone, ids, jnp.zeros((B, 4, D)))
    np.testing.assert_allclose(_JITTED(model, ids, w), zero_prefix, rtol=1e-5, atol=1e-6)
    # and the weights then have no effect at all: conditioning flows only through the prefix.
    np.testing.assert_allclose(_JITTED(model, ids, jnp.eye(3)), zero_prefix, rtol=1e-5, atol=1e-6)


def test_wrapper_passes_mask_hidden_pairs_and_unembedding():
    ids, w = _IDS, jnp.full((B, 3), 1 / 3)
    am = jnp.ones((B, T), jnp.int32).at[:, -2:].set(0)
    pairs = jnp.stack([ids, ids[::-1]], axis=1)

    @nnx.jit
    def run(model):  # one compile for every call of this test
        hidden = model(ids, weights=w, attention_mask=am, return_hidden=True)
        direct = model.backbone(ids, attention_mask=am, prefix_embeds=model.hpt(w), return_hidden=True)
        return hidden, direct, model(pairs, weights=w), model(ids[::-1], weights=w)

    hidden, direct, pair_logits, second = run(_MODEL)
    assert hidden.shape == (B, T, D)
    np.testing.assert_allclose(hidden, direct, rtol=1e-5, atol=1e-6)
    # [B, N, T] response pairs share their example's prefix.
    assert pair_logits.shape == (B, 2, T, VOCAB)
    np.testing.assert_allclose(pair_logits[:, 1], second, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_MODEL.unembedding(), _MODEL.backbone.unembedding())


def test_trainable_filter_selects_hpt_and_lora_only():
    model = _MODEL
    trainable = nnx.state(model, ConditionedLM.trainable)
    paths = [p for p, _ in nnx.to_flat_state(trainable)]
    lora = [p for p in paths if p[0] == "backbone"]
    assert lora and all(p[-1] in ("lora_a", "lora_b") for p in lora)
    assert num_params(model, ConditionedLM.hpt_only) == num_params(model.hpt)
    assert num_params(model, ConditionedLM.trainable) == num_params(model.hpt) + num_params(model, nnx.LoRAParam)
    assert num_params(model, ConditionedLM.trainable) < num_params(model)
    wrong = nnx.eval_shape(lambda: HyperPromptTuning(HPTConfig.tiny(), d_model=D + 1, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="d_model"):
        ConditionedLM(model.backbone, wrong)


_simplex = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=3, max_size=3).filter(lambda v: sum(v) > 1e-3)


@settings(max_examples=15, deadline=None)
@given(raw=_simplex)
def test_any_weight_vector_gives_finite_logits(raw):
    w = jnp.asarray([raw], jnp.float32) / sum(raw)
    logits = _JITTED(_MODEL, _IDS[:1], w)
    assert logits.shape == (1, T, VOCAB)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_jit_equals_eager():
    w = jnp.array([[0.1, 0.6, 0.3]] * B)
    np.testing.assert_allclose(_JITTED(_MODEL, _IDS, w), _MODEL(_IDS, weights=w), rtol=1e-5, atol=1e-5)


def test_logits_smooth_in_weights():
    """Directional derivative along the simplex (jvp) matches a central finite difference."""
    graphdef, state = nnx.split(_MODEL)

    @jax.jit
    def f(w):
        return nnx.merge(graphdef, state)(_IDS[:1], weights=w[None])[0, -1].astype(jnp.float32)

    w0 = jnp.array([0.5, 0.3, 0.2])
    direction = jnp.array([1.0, -0.5, -0.5])  # stays on the simplex's affine hull
    _, tangent = jax.jvp(f, (w0,), (direction,))
    eps = 1e-2
    fd = (f(w0 + eps * direction) - f(w0 - eps * direction)) / (2 * eps)
    assert float(jnp.abs(tangent).max()) > 1e-6  # the logits do move with w
    np.testing.assert_allclose(tangent, fd, rtol=1e-2, atol=1e-4 * math.sqrt(VOCAB))


def test_every_parameter_has_logical_axis_names():
    state = nnx.state(_MODEL.hpt, nnx.Param)
    specs = jax.tree.leaves(logical_specs(state), is_leaf=lambda x: x is None or isinstance(x, tuple))
    assert specs and all(isinstance(s, tuple) for s in specs)
    assert logical_specs(state)["prefix"] == ("prefix", "embed")
    for names in specs:  # every name has a rule (an unknown one raises KeyError)
        logical_to_mesh_spec(names)
