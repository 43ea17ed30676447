"""Hyper Prompt Tuning: shapes, a float64 NumPy re-derivation, init, and the ConditionedLM wrapper contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models.hpt import ConditionedLM, HPTConfig, HyperPromptTuning, conditioning_vector
from mojax.sharding import logical_specs

VOCAB, D, T, B = 19, 12, 6, 3


class TinyBackbone(nnx.Module):
    """Stand-in with the Decoder call signature: embeddings, a causal masked running mean, a dense layer.

    The running mean makes every real token see the prefix, as attention would.
    """

    def __init__(self, *, rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.pos = nnx.Embed(32, D, rngs=rngs)
        self.mix = nnx.Linear(D, D, kernel_init=nnx.initializers.normal(D**-0.5), rngs=rngs)
        self.unembed = nnx.Param(jax.random.normal(rngs.params(), (D, VOCAB)))

    def __call__(self, input_ids, *, attention_mask=None, positions=None, prefix_embeds=None, return_hidden=False,
                 use_lora=True):
        b, t = input_ids.shape
        mask = jnp.ones((b, t)) if attention_mask is None else attention_mask.astype(jnp.float32)
        positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
        x = self.embed(input_ids) + self.pos(positions)
        p = 0
        if prefix_embeds is not None:
            p = prefix_embeds.shape[1]
            x = jnp.concatenate([prefix_embeds, x], axis=1)
            mask = jnp.concatenate([jnp.ones((b, p)), mask], axis=1)
        run = jnp.cumsum(x * mask[..., None], 1) / jnp.maximum(jnp.cumsum(mask, 1), 1)[..., None]
        h = (jnp.tanh(self.mix(run)) + x)[:, p:]
        return h if return_hidden else h @ self.unembed[...]

    def unembedding(self):
        return self.unembed[...]


def _model(cfg=None, seed=0):
    cfg = cfg or HPTConfig(num_objectives=3, num_prefix_tokens=4, rank=2, hidden_dim=8)
    rngs = nnx.Rngs(seed)
    return ConditionedLM(TinyBackbone(rngs=rngs), HyperPromptTuning(cfg, d_model=D, rngs=rngs))


def _ids(seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (B, T)), jnp.int32)


# Built once: eager construction dominates these tests' time on a shared 2-core machine.
_MODEL = _model(seed=3)
_IDS = _ids(4)
_JITTED = nnx.jit(lambda m, ids, w: m(ids, weights=w))
_TCFG = HPTConfig(num_objectives=2, num_prefix_tokens=3, rank=2, hidden_dim=8, condition_on_temperature=True)
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
    assert out.shape == (2, 3, D)
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
    ids, w = _ids(), jnp.full((B, 3), 1 / 3)
    with_prefix = model(ids, weights=w)
    plain = model.backbone(ids)
    # The prefix changes the real-token logits (shape unchanged: prefix positions are not returned).
    assert with_prefix.shape == plain.shape == (B, T, VOCAB)
    assert float(jnp.abs(with_prefix - plain).max()) > 1e-4
    model.hpt.prefix[...] = jnp.zeros_like(model.hpt.prefix[...])
    zero_prefix = model.backbone(ids, prefix_embeds=jnp.zeros((B, 4, D)))
    np.testing.assert_allclose(model(ids, weights=w), zero_prefix, rtol=1e-6, atol=1e-6)
    # and the weights then have no effect at all: conditioning flows only through the prefix.
    np.testing.assert_allclose(model(ids, weights=jnp.eye(3)), zero_prefix, rtol=1e-6, atol=1e-6)


def test_wrapper_passes_mask_hidden_and_unembedding():
    model = _MODEL
    ids, w = _ids(), jnp.full((B, 3), 1 / 3)
    am = jnp.ones((B, T), jnp.int32).at[:, -2:].set(0)
    prefix = model.hpt(w)
    hidden = model(ids, weights=w, attention_mask=am, return_hidden=True)
    np.testing.assert_allclose(hidden, model.backbone(ids, attention_mask=am, prefix_embeds=prefix,
                                                      return_hidden=True), rtol=1e-6)
    assert hidden.shape == (B, T, D)
    assert model.unembedding() is model.backbone.unembedding() or np.array_equal(model.unembedding(),
                                                                                 model.backbone.unembed[...])


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
