"""ndcg against a direct NumPy float64 implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mojax.metrics import ndcg


def _ndcg_numpy(scores, labels, valid, k, empty_value=0.0):
    """One list: keep valid items, rank by (-score, index), DCG with gain 2^ψ − 1 and 1/log2(1 + rank)."""
    idx = [i for i in range(len(scores)) if valid[i]]
    ranked = sorted(idx, key=lambda i: (-float(scores[i]), i))
    cutoff = len(ranked) if k is None else min(k, len(ranked))
    dcg = sum((2.0 ** float(labels[i]) - 1) / np.log2(r + 2) for r, i in enumerate(ranked[:cutoff]))
    ideal = sorted((2.0 ** float(labels[i]) - 1 for i in idx), reverse=True)
    idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal[:cutoff]))
    return dcg / idcg if idcg > 0 else empty_value


_ndcg_jit = jax.jit(ndcg, static_argnames=("k", "reduce_fn", "empty_value"))


@settings(max_examples=30, deadline=None)
@given(
    # One shape (lists of any effective length via the mask) so the jitted metric compiles once per k.
    data=st.tuples(
        hnp.arrays(np.float64, (4, 9), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])),
        hnp.arrays(np.float64, (4, 9), elements=st.sampled_from([0.0, 1.0, 2.0, 4.0])),
        hnp.arrays(np.bool_, (4, 9)),
    ),
    k=st.sampled_from([1, 3, 10, None]),
)
def test_matches_numpy_reference(data, k):
    scores, labels, where = data  # coarse score values: many ties, broken by index
    with jax.enable_x64(True):
        got = np.asarray(_ndcg_jit(jnp.asarray(scores), jnp.asarray(labels), k=k, where=jnp.asarray(where), reduce_fn=None))
    expected = np.array([_ndcg_numpy(s, y, w, k) for s, y, w in zip(scores, labels, where)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert np.all((got >= 0) & (got <= 1 + 1e-12))


def test_closed_forms_masking_and_reduction():
    labels = jnp.asarray([[0.0, 1.0, 2.0]])
    # Reversed ranking: DCG = 3/log2(2)... items ranked [2, 1, 0] by score is ideal.
    assert float(ndcg(jnp.asarray([[0.0, 1.0, 2.0]]), labels)) == pytest.approx(1.0)
    worst = (0 / 1 + 1 / np.log2(3) + 3 / 2) / (3 / 1 + 1 / np.log2(3) + 0 / 2)
    assert float(ndcg(jnp.asarray([[2.0, 1.0, 0.0]]), labels)) == pytest.approx(worst, rel=1e-6)
    # Constant scores: ties broken by index, so the order is 0, 1, 2 (same as the worst case here).
    assert float(ndcg(jnp.zeros((1, 3)), labels)) == pytest.approx(worst, rel=1e-6)
    # Masking an item equals dropping it.
    scores = jnp.asarray([[0.3, 5.0, 0.1, 0.2]])
    labels4 = jnp.asarray([[1.0, 0.0, 2.0, 1.0]])
    mask = jnp.asarray([[True, False, True, True]])
    dropped = ndcg(scores[:, [0, 2, 3]], labels4[:, [0, 2, 3]], k=2)
    assert float(ndcg(scores, labels4, k=2, where=mask)) == pytest.approx(float(dropped), rel=1e-6)
    # No relevant item: empty_value; reduce_fn=None keeps the batch shape; mean reduction by default.
    batch_scores = jnp.asarray([[1.0, 2.0], [1.0, 2.0]])
    batch_labels = jnp.asarray([[0.0, 0.0], [0.0, 1.0]])
    per_list = ndcg(batch_scores, batch_labels, reduce_fn=None)
    assert per_list.shape == (2,) and float(per_list[0]) == 0.0 and float(per_list[1]) == 1.0
    assert float(ndcg(batch_scores, batch_labels, empty_value=1.0, reduce_fn=None)[0]) == 1.0
    assert float(ndcg(batch_scores, batch_labels)) == pytest.approx(0.5)
    assert ndcg(jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 4)), reduce_fn=None).shape == (2, 3)
    with pytest.raises(ValueError, match="share a shape"):
        ndcg(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="k must be"):
        ndcg(jnp.zeros(3), jnp.zeros(3), k=0)
