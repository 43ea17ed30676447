"""List ranker: a float64 NumPy forward, permutation equivariance, padding isolation, conditioning, augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mojax.models.ranker import AugmentedRanker, ListRanker, ListRankerConfig, num_params
from mojax.sharding import logical_specs, logical_to_mesh_spec

F, L, C = 5, 6, 2
_CFG = ListRankerConfig(num_features=F, d_model=8, num_layers=2, num_heads=2, mlp_dim=16, cond_dim=C)
_RANKER = ListRanker(_CFG, rngs=nnx.Rngs(0))
_MLP = ListRanker(ListRankerConfig(num_features=F, d_model=8, num_layers=0, mlp_dim=16, cond_dim=C),
                  rngs=nnx.Rngs(1))
# Unconditioned, with dropout: the base of the augmentation test (always run deterministic there) and the dropout test.
_BASE = ListRanker(ListRankerConfig(num_features=F, d_model=8, num_layers=1, num_heads=2, mlp_dim=16, dropout=0.5),
                   rngs=nnx.Rngs(2))
# Everything runs jitted with few distinct shapes: eager dispatch of a transformer is slow on a shared 2-core box.
_SCORE = nnx.jit(lambda m, x, where, cond: m(x, where=where, cond=cond))
_SCORE_U = nnx.jit(lambda m, x, where, deterministic=True: m(x, where=where, deterministic=deterministic),
                   static_argnames="deterministic")


def _batch(seed, lead=(3,)):
    # NumPy RNG: jax.random.dirichlet/bernoulli would compile anew for every shape.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*lead, L, F)).astype(np.float32)
    where = rng.random((*lead, L)) < 0.7
    where[..., 0] = True
    cond = rng.dirichlet(np.ones(C), lead).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(where), jnp.asarray(cond)


def _np_ln(x, mod):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * _f(mod.scale) + _f(mod.bias)


def _f(v):
    return np.asarray(v[...], np.float64)


def _np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _np_mlp(h, blk):
    return h + _np_gelu(_np_ln(h, blk.norm) @ _f(blk.up.kernel) + _f(blk.up.bias)) @ _f(blk.down.kernel) + _f(
        blk.down.bias)


def _numpy_ranker(model, x, where, cond):
    """Float64 forward of one list at a time, written with explicit loops over items (no batched masking tricks):
    padded items are dropped before the encoder, so this also checks that they are truly invisible."""
    x, where, cond = (np.asarray(a, np.float64) for a in (x, where, cond))
    out = np.zeros(where.shape)
    for b in range(x.shape[0]):
        idx = np.flatnonzero(where[b])
        inp = np.concatenate([x[b, idx], np.repeat(cond[b][None], len(idx), 0)], -1)
        h = inp @ _f(model.input_proj.kernel) + _f(model.input_proj.bias)
        if model.config.num_layers == 0:
            h = _np_mlp(h, model.blocks[0])
        for blk in (model.blocks if model.config.num_layers else []):
            z = _np_ln(h, blk.norm)
            q, k, v = (np.einsum("ld,dnh->lnh", z, _f(p)) for p in (blk.query, blk.key, blk.value))
            logits = np.einsum("qnh,knh->nqk", q, k) / np.sqrt(q.shape[-1])
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            h = h + np.einsum("nqk,knh,nhd->qd", p, v, _f(blk.out))
            h = _np_mlp(h, blk.mlp)
        out[b, idx] = (_np_ln(h, model.final_norm) @ _f(model.head.kernel) + _f(model.head.bias))[:, 0]
    return out


@pytest.mark.parametrize("model", [_RANKER, _MLP], ids=["transformer", "mlp"])
def test_matches_float64_numpy_forward(model):
    x, where, cond = _batch(0)
    scores = _SCORE(model, x, where, cond)
    assert scores.shape == (3, L) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, _numpy_ranker(model, x, where, cond), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(scores)[~np.asarray(where)], 0.0)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_permutation_equivariant(seed):
    x, where, cond = _batch(seed % 1000)
    perm = np.random.default_rng(seed).permutation(L)
    scores = _SCORE(_RANKER, x, where, cond)
    permuted = _SCORE(_RANKER, x[:, perm], where[:, perm], cond)
    np.testing.assert_allclose(permuted, scores[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", [_RANKER, _MLP], ids=["transformer", "mlp"])
def test_padded_items_never_influence_valid_items(model):
    x, where, cond = _batch(1)
    noise = 1e6 * np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    garbage = jnp.where(where[..., None], x, noise)
    clean, dirty = _SCORE(model, x, where, cond), _SCORE(model, garbage, where, cond)
    assert bool(jnp.all(jnp.isfinite(dirty)))
    np.testing.assert_array_equal(clean, dirty)
    # (test_matches_float64_numpy_forward checks against a reference that drops padded items altogether.)


def test_all_padded_list_is_finite_zero_with_finite_gradient():
    x, _, cond = _batch(2)
    where = jnp.zeros((3, L), bool)
    assert np.array_equal(_SCORE(_RANKER, x, where, cond), np.zeros((3, L)))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, where=where, cond=cond))))(_RANKER)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_cond_changes_scores():
    x, where, cond = _batch(3)
    a = _SCORE(_RANKER, x, where, cond)
    b = _SCORE(_RANKER, x, where, cond[:, ::-1])
    valid = np.asarray(where)
    assert np.abs(np.asarray(a - b))[valid].min() > 1e-6


def test_arbitrary_leading_axes():
    x, where, cond = _batch(4, lead=(2, 3))
    scores = _SCORE(_MLP, x, where, cond)  # the flattening is the same code for both block kinds
    assert scores.shape == (2, 3, L)
    for i in range(2):  # each [3, L, F] slice alone (the shape every other test compiles for)
        np.testing.assert_allclose(scores[i], _SCORE(_MLP, x[i], where[i], cond[i]), rtol=1e-5, atol=1e-6)


def test_bad_input_raises():
    x, where, cond = _batch(5)
    with pytest.raises(ValueError, match="pass cond"):
        _RANKER(x, where=where)
    with pytest.raises(ValueError, match="cond must have shape"):
        _RANKER(x, where=where, cond=cond[:, :1])
    with pytest.raises(ValueError, match="where must have shape"):
        _RANKER(x, where=where[:, :-1], cond=cond)
    with pytest.raises(ValueError, match=r"\[..., L, 5\]"):
        _RANKER(x[..., :-1], where=where, cond=cond)
    with pytest.raises(ValueError, match="divide"):
        ListRankerConfig(num_features=F, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="unconditioned"):
        AugmentedRanker(_RANKER, _RANKER)


def test_dropout_only_when_not_deterministic():
    x, where, _ = _batch(6)
    det = _SCORE_U(_BASE, x, where)
    np.testing.assert_array_equal(det, _SCORE_U(_BASE, x, where))  # reproducible
    assert not np.allclose(_SCORE_U(_BASE, x, where, deterministic=False), det)


def test_augmented_ranker_starts_at_base_and_base_gets_no_gradient():
    base, delta = nnx.clone(_BASE), nnx.clone(_RANKER)
    model = AugmentedRanker(base, delta)
    x, where, cond = _batch(7)
    labels = jnp.asarray(np.random.default_rng(0).random((3, L)), jnp.float32)

    def loss(m):
        s = jnp.where(where, m(x, where=where, cond=cond), -jnp.inf)
        return -jnp.sum(jax.nn.softmax(labels) * jnp.where(where, jax.nn.log_softmax(s), 0.0))

    opt = nnx.Optimizer(model, optax.adamw(0.1, weight_decay=0.1), wrt=AugmentedRanker.trainable)

    @nnx.jit
    def step(m, o):  # one compile: scores before the step, gradients w.r.t. every Param, then an update
        scores = m(x, where=where, cond=cond)
        ref = m.reference_scores(x, where=where)
        grads = nnx.grad(loss)(m)
        o.update(m, nnx.state(grads, AugmentedRanker.trainable))
        return scores, ref, grads

    base_scores = _SCORE_U(base, x, where)
    before = [np.array(v) for v in jax.tree.leaves(nnx.state(base, nnx.Param))]
    scores, ref, grads = step(model, opt)
    np.testing.assert_array_equal(scores, base_scores)  # g ≡ 0 at init
    np.testing.assert_array_equal(ref, base_scores)
    base_g = jax.tree.leaves(nnx.state(grads)["base"])
    assert base_g and all(float(jnp.abs(g).max()) == 0.0 for g in base_g)
    assert float(jnp.abs(grads["delta"]["head"]["kernel"][...]).max()) > 0
    # The trainer's filter selects exactly the correction network's parameters.
    assert num_params(model, AugmentedRanker.trainable) == num_params(delta) < num_params(model)
    trainable_paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, AugmentedRanker.trainable))]
    assert trainable_paths and all(p[0] == "delta" for p in trainable_paths)
    # After one AdamW step with weight decay on the trainable part: the base is bit-identical, the scores moved.
    after = jax.tree.leaves(nnx.state(base, nnx.Param))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not np.allclose(_SCORE(model, x, where, cond), base_scores)


def test_num_params_and_logical_names():
    d, m, f = 8, 16, F + C
    block = 2 * d + 4 * d * d + (2 * d + d * m + m + m * d + d)  # LN, q/k/v/out, MLP (LN + up + down)
    expected = f * d + d + 2 * block + 2 * d + d + 1
    assert num_params(_RANKER) == expected
    abstract = nnx.eval_shape(lambda: ListRanker(_CFG, rngs=nnx.Rngs(0)))
    assert num_params(nnx.state(abstract)) == expected
    specs = jax.tree.leaves(logical_specs(nnx.state(_RANKER, nnx.Param)),
                            is_leaf=lambda s: s is None or isinstance(s, tuple))
    assert len(specs) == len(jax.tree.leaves(nnx.state(_RANKER, nnx.Param)))
    assert all(isinstance(s, tuple) for s in specs)
    for names in specs:  # every name has a rule (an unknown one raises KeyError)
        logical_to_mesh_spec(names)
    with pytest.raises(TypeError):
        num_params([1, 2])
