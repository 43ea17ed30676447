import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from losses_testlib import FAST
from scipy.special import log_softmax as sp_log_softmax

import mojax.losses as losses
from mojax.losses import log_sigmoid, masked_log_softmax, masked_softmax, reduce_masked

MODULES = ["_base", "logps", "pairwise", "listwise", "cos_dpo", "spo", "stable_po"]


def test_log_sigmoid_is_stable_at_extremes():
    z = jnp.array([-200.0, -30.0, 0.0, 30.0, 200.0])
    np.testing.assert_allclose(log_sigmoid(z), -np.logaddexp(0.0, -np.float64(z)), rtol=1e-6, atol=1e-30)
    g = jax.vmap(jax.grad(log_sigmoid))(z)
    np.testing.assert_allclose(g, 1 / (1 + np.exp(np.float64(z))), rtol=1e-6, atol=1e-30)


def test_reduce_masked():
    v = jnp.array([1.0, 2.0, 4.0, 8.0])
    w = jnp.array([True, False, True, False])
    np.testing.assert_allclose(reduce_masked(v, w), 2.5)
    np.testing.assert_allclose(reduce_masked(v, w, jnp.sum), 5.0)
    np.testing.assert_array_equal(reduce_masked(v, w, None), [1.0, 0.0, 4.0, 0.0])
    np.testing.assert_allclose(reduce_masked(v), 3.75)
    assert float(reduce_masked(v, jnp.zeros(4, bool))) == 0.0
    with pytest.raises(TypeError, match="boolean"):
        reduce_masked(v, jnp.ones(4))
    with pytest.raises(ValueError, match="enlarge"):
        reduce_masked(v, jnp.ones((2, 4), bool))


@FAST
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 100.0))
def test_masked_log_softmax_equals_truncated_softmax(seed, scale):
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal((3, 6))).astype(np.float32)
    w = rng.random((3, 6)) > 0.4
    w[0] = False
    got = np.asarray(masked_log_softmax(s, jnp.asarray(w)))
    for row in range(3):
        expected = np.zeros(6)
        if w[row].any():
            expected[w[row]] = sp_log_softmax(np.float64(s[row, w[row]]))
        np.testing.assert_allclose(got[row], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(masked_softmax(s, jnp.asarray(w)).sum(-1), w.any(-1).astype(float), rtol=1e-5)


def test_masked_log_softmax_gradients_are_finite_everywhere():
    s = jnp.array([[jnp.nan, 1.0, jnp.inf], [jnp.nan, jnp.nan, jnp.nan]])
    w = jnp.array([[False, True, False], [False, False, False]])
    g = jax.grad(lambda x: jnp.sum(masked_log_softmax(x, w)))(s)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"mojax.losses.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_public_api_is_documented():
    for name in losses.__all__:
        obj = getattr(losses, name)
        assert callable(obj) or isinstance(obj, (dict, type(losses.DPO_PAIR_LOSSES))), name
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__.strip()) > 20, f"{name} lacks a docstring"


def test_check_same_shape():
    from mojax.losses._base import check_same_shape

    a, col = np.zeros(4), np.zeros((4, 1))
    assert check_same_shape("f", {"a": a, "b": a, "s": 2.0}) == (4,)
    assert check_same_shape("f", {"x": np.zeros((2, 1, 5)), "y": np.zeros((2, 3, 5))}) == (2, 3, 5)
    assert check_same_shape("f", {}) == ()
    with pytest.raises(ValueError, match=r"^f: input shapes do not match: a \[4\], b \[4, 1\] "
                                         r"\(broadcasting would give \[4, 4\], larger than every input"):
        check_same_shape("f", {"a": a, "b": col})
    with pytest.raises(ValueError, match=r"^f: input shapes do not match: a \[4\], c \[3\] \(they do not broadcast"):
        check_same_shape("f", {"a": a, "c": np.zeros(3)})
    # static shapes only: a tracer's shape is checked without reading its value
    jax.jit(lambda x: check_same_shape("f", {"x": x, "y": x}) and x)(jnp.zeros(3))
