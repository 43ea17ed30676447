"""MORE's gradient averaging against a hand-computed float64 reference of the released code (dunzeng/MORE
``trainer.py``: ``grad_m = (1 - alpha) * grad_m + alpha * grad``, ``grad_m`` starting from the head's initial weights)."""

import numpy as np
import optax
import pytest
from flax import nnx

from mojax.models.features import FeatureRewardModel
from mojax.train import TrainConfig, fit
from mojax.train.objectives import more_objective

D, K, B, LR = 5, 2, 8, 0.5


def _batches():
    rng = np.random.default_rng(0)
    for _ in range(2):
        yield {"input_ids": rng.normal(size=(B, 2, D)).astype(np.float32),
               "attention_mask": np.ones((B, 2), np.int32),
               "dataset_id": (np.arange(B) % K).astype(np.int32)}


def _grads(w, batch):
    """Per-dataset BT head gradients, closed form: g_k = mean_k[−σ(−wᵀΔh) Δh] (float64)."""
    dh = batch["input_ids"][:, 0].astype(np.float64) - batch["input_ids"][:, 1]
    s = 1.0 / (1.0 + np.exp(dh @ w))  # σ(−wᵀΔh)
    return np.stack([np.mean(-(s[:, None] * dh)[batch["dataset_id"] == k], 0) for k in range(K)])


def _min_norm_2(m):
    """K = 2 closed form on L2-normalised rows."""
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    gamma = np.clip((m[1] @ m[1] - m[0] @ m[1]) / np.sum((m[0] - m[1]) ** 2), 0.0, 1.0)
    return np.array([gamma, 1.0 - gamma])


def _reference(w0, batches, update):
    w, m, out = w0.copy(), np.tile(w0, (K, 1)), []
    for batch in batches:
        g = _grads(w, batch)
        m = update(m, g)
        lam = _min_norm_2(m)
        w = w - LR * lam @ g  # SGD on Σ λ_k L_k: the head gradient is Σ λ_k g_k
        out.append((m.copy(), lam, w.copy()))
    return out


def _run(objective):
    build = lambda: FeatureRewardModel(D, rngs=nnx.Rngs(3))  # noqa: E731
    w0 = np.asarray(build().score.kernel[...], np.float64)[:, 0]
    lams = []
    result = fit(build, objective, _batches(), config=TrainConfig(steps=2, batch_size=B, log_every=1, progress=False,
                                                                  tensorboard=False), optimizer=optax.sgd(LR),
                 run_dir=None, on_metrics=lambda step, m: lams.append(np.asarray(m["lambda"])))
    return w0, result, lams


@pytest.mark.parametrize("averaging", ["released", "ema"])
def test_more_averaging_two_steps_match_hand_computed_reference(averaging):
    objective = more_objective(num_datasets=K, averaging=averaging)
    w0, result, lams = _run(objective)
    if averaging == "released":  # 0.99 on the NEW gradient, starting from the head's initial weights
        ref = _reference(w0, _batches(), lambda m, g: 0.01 * m + 0.99 * g)
    else:  # mojax's earlier EMA: 0.99 on the OLD average, the first gradient initialising it
        first = [True]

        def update(m, g):
            if first[0]:
                first[0] = False
                return g
            return 0.99 * m + 0.01 * g

        ref = _reference(w0, _batches(), update)
    m2, lam2, w2 = ref[-1]
    np.testing.assert_allclose(np.asarray(result.state.extras["ema"]), m2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.stack(lams), np.stack([r[1] for r in ref]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(result.model().score.kernel[...])[:, 0], w2, rtol=1e-4, atol=1e-6)


def test_more_default_is_the_released_averaging_and_the_options_are_named():
    assert more_objective(num_datasets=K).hparams == {"alpha": 0.99}
    assert more_objective(num_datasets=K, ema_decay=0.9).hparams == {"ema_decay": 0.9}  # the pre-issue-12 call
    assert more_objective(num_datasets=K, averaging="none").hparams == {}
    with pytest.raises(ValueError, match="ema_decay applies"):
        more_objective(num_datasets=K, averaging="released", ema_decay=0.5)
    with pytest.raises(ValueError, match="averaging must be"):
        more_objective(num_datasets=K, averaging="momentum")
    with pytest.raises(ValueError, match="alpha must be"):
        more_objective(num_datasets=K, alpha=1.5)
    # The released rows start at the head's initial weights (a builder is called for them).
    extras = more_objective(num_datasets=K).init_extras(lambda: FeatureRewardModel(D, rngs=nnx.Rngs(3)))
    w0 = FeatureRewardModel(D, rngs=nnx.Rngs(3)).score.kernel[...][:, 0]
    np.testing.assert_array_equal(np.asarray(extras["ema"]), np.tile(np.asarray(w0), (K, 1)))
    assert not np.any(np.asarray(extras["seen"]))
