"""Objectives against float64 NumPy re-derivations, closed forms and the solvers they call."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from _train_tiny import TinyLM, make_batch
from mojax.models import (AugmentedRanker, ConditionedLM, Decoder, DecoderConfig, HPTConfig, HyperPromptTuning,
                          ListRanker, ListRankerConfig, LoRAConfig, RewardModel, add_lora)
from mojax.solvers import min_norm_weights
from mojax.train import objectives as O
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.state import create_train_state
from mojax.train.step import init_extras, make_train_step


def np_logsig(z):
    return -np.logaddexp(0.0, -z)


def np_logps(model, batch, **kwargs):
    """float64 Σ_t loss_mask[t] · log softmax(logits[t-1])[ids[t]] from the model's full logits, ``[B, N]``."""
    ids = np.asarray(batch["input_ids"])
    b, n, t = ids.shape
    logits = np.asarray(model(jnp.asarray(ids.reshape(b * n, t)),
                              attention_mask=jnp.asarray(batch["attention_mask"]).reshape(b * n, t), **kwargs),
                        np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    flat = ids.reshape(b * n, t)
    mask = np.asarray(batch["loss_mask"]).reshape(b * n, t)
    out = np.zeros(b * n)
    for i in range(b * n):
        for s in range(1, t):
            if mask[i, s]:
                out[i] += logp[i, s - 1, flat[i, s]]
    return out.reshape(b, n)


def _batch(seed=0, **extra):
    batch = {k: jnp.asarray(v) for k, v in make_batch(seed).items()}
    batch.update(extra)
    return batch


@pytest.mark.parametrize("chunk_size,compact", [(4, False), (4, True), (1, True), (6, True), (None, True)])
def test_policy_logps_one_chunked_forward_matches_float64(chunk_size, compact, monkeypatch):
    # dense chunk 4: T = 6 gives two chunks, the last one padded; compact 4 / 1: B·N·4 and B·N rows per chunk, the
    # loss positions packed (several chunks, some skipped); compact 6: one chunk holds every position (no loop).
    # MIN_CHUNK_LOGITS = 0 so the tiny vocabulary is chunked as asked (the floor is tested below).
    monkeypatch.setattr(O._common, "MIN_CHUNK_LOGITS", 0)
    model = TinyLM(rngs=nnx.Rngs(0))
    batch = _batch()
    got = O.policy_logps(model, batch, chunk_size=chunk_size, compact=compact)
    np.testing.assert_allclose(got, np_logps(model, batch), rtol=1e-5, atol=1e-5)
    # and the gradient equals the full-logits one (the path every objective differentiates)
    cot = jnp.asarray(np.random.default_rng(0).standard_normal(got.shape), jnp.float32)
    graphdef, params = nnx.split(model)

    def grad(**kw):
        return jax.grad(lambda p: jnp.sum(cot * O.policy_logps(nnx.merge(graphdef, p), batch, **kw)))(params)

    for a, b in zip(jax.tree.leaves(grad(chunk_size=chunk_size, compact=compact)),
                    jax.tree.leaves(grad(chunk_size=None))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, N, T\]"):
        O.policy_logps(model, {**batch, "input_ids": batch["input_ids"][:, 0]})


def _scans(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("scan[")


def test_policy_logps_small_heads_are_not_chunked(monkeypatch):
    # B·N·T·V = 16·6·16 logits are far below MIN_CHUNK_LOGITS: one piece, no loop; with the floor at 0, chunk 1 loops.
    model = TinyLM(rngs=nnx.Rngs(0))
    batch = _batch()
    for compact in (True, False):
        assert _scans(lambda b: O.policy_logps(model, b, chunk_size=1, compact=compact), batch) == 0
    monkeypatch.setattr(O._common, "MIN_CHUNK_LOGITS", 0)
    for compact in (True, False):
        assert _scans(lambda b: O.policy_logps(model, b, chunk_size=1, compact=compact), batch) == 1
    # The floor rounds rows up to whole positions per sequence: 16·6·16 = 1536 logits → exactly one chunk of T.
    monkeypatch.setattr(O._common, "MIN_CHUNK_LOGITS", 16 * 6 * 16)
    assert _scans(lambda b: O.policy_logps(model, b, chunk_size=1), batch) == 0
    monkeypatch.setattr(O._common, "MIN_CHUNK_LOGITS", 16 * 6 * 16 + 1)  # needs 7 positions per sequence > T: still one
    assert _scans(lambda b: O.policy_logps(model, b, chunk_size=1), batch) == 0
    monkeypatch.setattr(O._common, "MIN_CHUNK_LOGITS", 16 * 5 * 16)  # 5 positions per sequence: two chunks, a loop
    assert _scans(lambda b: O.policy_logps(model, b, chunk_size=1), batch) == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            O.policy_logps(model, batch, chunk_size=bad)


def test_dpo_objective_matches_numpy_in_cached_and_model_modes():
    policy, reference = TinyLM(rngs=nnx.Rngs(0)), TinyLM(rngs=nnx.Rngs(1))
    mask = jnp.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    ref = np_logps(reference, _batch())
    batch = _batch(example_mask=mask, ref_logps=jnp.asarray(ref, jnp.float32))
    pol = np_logps(policy, batch)
    beta, eps = 0.3, 0.1
    z = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    per = -(1 - eps) * np_logsig(z) - eps * np_logsig(-z)
    expected = per[np.asarray(mask)].mean()
    cached, m1 = O.dpo_objective(beta=beta, label_smoothing=eps)(policy, batch, None)
    anchored, m2 = O.dpo_objective(beta=beta, label_smoothing=eps, ref_mode="model")(
        O.AnchoredPolicy(policy, reference), {k: v for k, v in batch.items() if k != "ref_logps"}, None)
    np.testing.assert_allclose(cached, expected, rtol=1e-5)
    np.testing.assert_allclose(anchored, expected, rtol=1e-5)
    assert float(m1["count"]) == 6.0
    np.testing.assert_allclose(m1["accuracy"], np.mean(z[np.asarray(mask)] > 0), atol=1e-6)
    with pytest.raises(ValueError, match="ref_mode"):
        O.dpo_objective(ref_mode="nope")
    with pytest.raises(TypeError, match="AnchoredPolicy"):
        O.dpo_objective(ref_mode="model")(policy, batch, None)


def test_lora_dpo_starts_at_ln2_and_trains_only_the_adapters():
    cfg = DecoderConfig.tiny(num_layers=1)
    tx = optax.adam(1e-2)

    def build():
        model = Decoder(cfg, rngs=nnx.Rngs(0))
        return add_lora(model, LoRAConfig(rank=2, targets=("q_proj", "v_proj")), rngs=nnx.Rngs(1))

    mesh = make_mesh(MeshConfig())
    graphdef, state, _ = create_train_state(build, tx, mesh=mesh, wrt=nnx.LoRAParam)
    rs = np.random.RandomState(0)
    ids = rs.randint(1, cfg.vocab_size, size=(4, 2, 8)).astype(np.int32)
    loss_mask = np.zeros((4, 2, 8), bool)
    loss_mask[..., 3:] = True
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask}
    step = jax.jit(make_train_step(graphdef, O.dpo_objective(beta=0.5, ref_mode="lora"), tx))
    frozen = jax.tree.map(np.asarray, state.rest)
    losses = []
    for i in range(4):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert abs(losses[0] - math.log(2.0)) < 1e-6
    assert losses[-1] < losses[0] - 1e-3
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(state.rest)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_cos_dpo_is_weighted_dpo_with_the_sampled_weights():
    k = 2
    model = ConditionedLM(TinyLM(rngs=nnx.Rngs(0)),
                          HyperPromptTuning(HPTConfig.tiny(num_objectives=k), d_model=8, rngs=nnx.Rngs(1)))
    batch = _batch()
    rs = np.random.RandomState(3)
    first = rs.randint(0, 2, size=(8, k))
    labels = np.stack([first, 1 - first], axis=-1).astype(np.float32)  # [B, K, 2], binary pairs
    ref = rs.normal(-8, 1, size=(8, 2))
    batch.update(labels=jnp.asarray(labels), ref_logps=jnp.asarray(ref, jnp.float32))
    beta, rng = 0.2, jax.random.PRNGKey(7)
    for per_example, penalty in ((True, 0.0), (False, 0.5)):
        sampling = O.COSDPOSampling(num_objectives=k, per_example=per_example)
        loss, m = O.cos_dpo_objective(sampling=sampling, beta=beta, penalty=penalty)(model, batch, rng)
        w, _ = O.sample_conditioning(rng, 8, sampling)
        w = np.asarray(w, np.float64)
        pol = np_logps(model, batch, weights=jnp.repeat(jnp.asarray(w, jnp.float32), 2, axis=0))
        h = (pol - ref)
        # Objective k prefers response argmax(labels[:, k]); DPO on that orientation.
        sign = np.where(labels[:, :, 0] == 1, 1.0, -1.0)  # [B, K]
        dpo = -np_logsig(beta * sign * (h[:, 0] - h[:, 1])[:, None])  # [B, K]
        if per_example:
            expected = np.mean(np.sum(w * dpo, axis=1))
        else:
            means = dpo.mean(0)
            cos = means @ w[0] / (np.linalg.norm(means) * np.linalg.norm(w[0]))
            expected = means @ w[0] - penalty * cos
            assert np.allclose(w, w[0])  # one w per step
        np.testing.assert_allclose(loss, expected, rtol=2e-5)
        np.testing.assert_allclose(m["objective_losses"], dpo.mean(0), rtol=2e-5)


def test_t_cos_dpo_conditions_on_the_temperature_direction():
    """T-COS-DPO: the model sees (w, d = β/‖β‖₁); objective k trains at temperature K·β·d_k."""
    k = 2
    hpt = HyperPromptTuning(HPTConfig(num_objectives=k, num_prefix_tokens=2, rank=2, hidden_dim=8,
                                      condition_on_temperature=True), d_model=8, rngs=nnx.Rngs(1))
    model = ConditionedLM(TinyLM(rngs=nnx.Rngs(0)), hpt)
    batch = _batch()
    rs = np.random.RandomState(4)
    first = rs.randint(0, 2, size=(8, k))
    labels = np.stack([first, 1 - first], axis=-1).astype(np.float32)
    ref = rs.normal(-8, 1, size=(8, 2))
    batch.update(labels=jnp.asarray(labels), ref_logps=jnp.asarray(ref, jnp.float32))
    sampling = O.COSDPOSampling(num_objectives=k, per_example=True, temperature=True, beta_min=0.1, beta_max=2.0)
    beta, rng = 0.3, jax.random.PRNGKey(11)
    loss, _ = O.cos_dpo_objective(sampling=sampling, beta=beta)(model, batch, rng)
    w, d = (np.asarray(x, np.float64) for x in O.sample_conditioning(rng, 8, sampling))
    np.testing.assert_allclose(d.sum(-1), 1.0, rtol=1e-6)
    assert np.ptp(d[:, 0]) > 1e-3  # per-example temperature directions differ
    pol = np_logps(model, batch, weights=jnp.repeat(jnp.asarray(w, jnp.float32), 2, axis=0),
                   temperatures=jnp.repeat(jnp.asarray(d, jnp.float32), 2, axis=0))
    h = (pol - ref)
    sign = np.where(labels[:, :, 0] == 1, 1.0, -1.0)
    dpo = -np_logsig(k * beta * d * sign * (h[:, 0] - h[:, 1])[:, None])  # [B, K]
    np.testing.assert_allclose(loss, np.mean(np.sum(w * dpo, axis=1)), rtol=2e-5)


def test_spo_objective_phi_and_alpha_zero_is_dpo_against_last_round():
    model = TinyLM(rngs=nnx.Rngs(0))
    rs = np.random.RandomState(1)
    prev = rs.normal(-8, 1, size=(3, 8, 2)).astype(np.float32)  # π_0, π_1, π_2
    batch = _batch(ref_logps=jnp.asarray(prev))
    pol = np_logps(model, batch)
    beta, alpha = 0.5, (0.3, 0.7)
    loss, m = O.spo_objective(beta=beta, alpha=alpha)(model, batch, None)
    margins = prev[:, :, 0] - prev[:, :, 1]  # [3, B]
    z = beta * ((pol[:, 0] - pol[:, 1]) - margins[2]) - (alpha[0] * (margins[1] - margins[0])
                                                         + alpha[1] * (margins[2] - margins[1]))
    np.testing.assert_allclose(loss, np.mean(-np_logsig(z)), rtol=1e-5)
    np.testing.assert_allclose(m["phi_mean"], np.mean(1 / (1 + np.exp(z))), rtol=1e-5)
    s_dpo, _ = O.spo_objective(beta=beta, alpha=0.0)(model, batch, None)
    dpo, _ = O.dpo_objective(beta=beta)(model, {**batch, "ref_logps": batch["ref_logps"][2]}, None)
    np.testing.assert_allclose(s_dpo, dpo, rtol=1e-6)


def test_modpo_and_stable_po_simpo_and_sft_match_numpy():
    model = TinyLM(rngs=nnx.Rngs(0))
    rs = np.random.RandomState(2)
    table = rs.normal(-8, 1, size=(3, 8, 2)).astype(np.float32)
    batch = _batch(ref_logps=jnp.asarray(table))
    pol = np_logps(model, batch)
    beta, w = 0.4, (0.5, 0.3, 0.2)
    loss, _ = O.modpo_objective(beta=beta, weights=w, objective_index=0)(model, batch, None)
    ref = table[0]
    others = beta * ((table[1:, :, 0] - ref[:, 0]) - (table[1:, :, 1] - ref[:, 1]))  # [2, B]
    z = (beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])) - (w[1] * others[0] + w[2] * others[1])) / w[0]
    np.testing.assert_allclose(loss, np.mean(-np_logsig(z)), rtol=1e-5)

    lengths = np.asarray(batch["loss_mask"]).sum(-1)
    gamma, lam = 0.5, 2.0
    spo_batch = {**batch, "ref_logps": jnp.asarray(table[0])}
    loss, m = O.stable_po_objective(beta=beta, penalty=lam, pref="simpo", gamma=gamma)(model, spo_batch, None)
    zs = beta * pol[:, 0] / lengths[:, 0] - beta * pol[:, 1] / lengths[:, 1] - gamma
    hinge = np.maximum(0.0, table[0][:, 0] - pol[:, 0])
    np.testing.assert_allclose(loss, np.mean(-np_logsig(zs) + lam * hinge), rtol=1e-5)
    np.testing.assert_allclose(m["hinge_active"], np.mean(hinge > 0), atol=1e-7)

    loss, m = O.sft_objective()(model, batch, None)
    np.testing.assert_allclose(loss, -pol[:, 0].sum() / lengths[:, 0].sum(), rtol=1e-5)
    assert float(m["count"]) == lengths[:, 0].sum()
    with pytest.raises(ValueError, match="preference loss"):
        O.stable_po_objective(pref="orpo")


def _tiny_f64_params(model, wrt=nnx.Param):
    graphdef, params, rest = nnx.split(model, wrt, ...)
    return graphdef, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params), rest


def test_bilevel_stable_po_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        model = TinyLM(rngs=nnx.Rngs(0), vocab=12, width=4, hidden=6)
        batch = {k: jnp.asarray(v) for k, v in make_batch(4, batch=4, vocab=12).items()}
        batch["ref_logps"] = jnp.asarray(np_logps(TinyLM(rngs=nnx.Rngs(5), vocab=12, width=4, hidden=6), batch))
        graphdef, params, rest = _tiny_f64_params(model)
        objective = O.bilevel_stable_po_objective(beta=0.5, penalty=1.0, inner_lr=0.1, chunk_size=None)

        @jax.jit
        def f(p):
            return objective(nnx.merge(graphdef, p, rest), batch, None)[0]

        grad = jax.jit(jax.grad(f))(params)
        leaves, treedef = jax.tree.flatten(params)
        direction = jax.tree.unflatten(treedef, [jnp.asarray(np.random.RandomState(i).normal(size=x.shape))
                                                 for i, x in enumerate(leaves)])
        eps = 1e-5
        shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)  # noqa: E731
        fd = (f(shift(eps)) - f(shift(-eps))) / (2 * eps)
        analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
        assert abs(analytic) > 1e-3
        np.testing.assert_allclose(analytic, float(fd), rtol=1e-6)
        # inner_lr = 0: the bilevel objective is the penalty form.
        zero = O.bilevel_stable_po_objective(beta=0.5, penalty=1.0, inner_lr=0.0, chunk_size=None)(model, batch,
                                                                                                  None)[0]
        pen = O.stable_po_objective(beta=0.5, penalty=1.0, chunk_size=None)(model, batch, None)[0]
        np.testing.assert_allclose(zero, pen, rtol=1e-6)


def _np_free_stable_po_bilevel(graphdef, rest, batch, *, beta, penalty, inner_lr):
    """The pre-refactor one-step bilevel objective written out directly (full logits, no engine pieces): θ⁺ = θ −
    η∇L_SFT(θ), L = mean_b DPO_b(θ⁺) + λ·mean_b max(0, logπ_ref(y_w) − logπ_θ⁺(y_w)), the preference term and the
    hinge from separate forwards at θ⁺ (as the pre-refactor code passed the hinge through ``penalty=``)."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    b, n, t = ids.shape
    ref = batch["ref_logps"]

    def logps(p):
        logits = nnx.merge(graphdef, p, rest)(ids.reshape(b * n, t), attention_mask=attn.reshape(b * n, t))
        lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        tok = jnp.take_along_axis(lp, ids.reshape(b * n, t)[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(tok * mask.reshape(b * n, t)[:, 1:], axis=-1).reshape(b, n)

    def sft(p):
        return -jnp.sum(logps(p)[:, 0]) / jnp.sum(mask[:, 0])

    def pref(p):
        lp = logps(p)
        return jnp.mean(-jax.nn.log_sigmoid(beta * ((lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1]))))

    def hinge(p):
        return jnp.mean(jax.nn.relu(ref[:, 0] - logps(p)[:, 0]))

    def objective(p):
        inner = jax.tree.map(lambda x, g: x - inner_lr * g, p, jax.grad(sft)(p))
        return pref(inner) + penalty * hinge(inner)

    return objective


def test_bilevel_stable_po_equals_pre_refactor_objective():
    # Issue 10: the refactor moved λ·hinge from bilevel_objective's `penalty=` into the outer loss (one forward at θ⁺
    # instead of two) so λ can be traced; the objective — value and hypergradient — must be unchanged. Traced hparams
    # (β, λ, η as jit arguments, not the defaults) and a reference under which the hinge is active on some pairs.
    with jax.enable_x64(True):
        model = TinyLM(rngs=nnx.Rngs(0), vocab=12, width=4, hidden=6)
        batch = {k: jnp.asarray(v) for k, v in make_batch(4, batch=6, vocab=12).items()}
        ref = np_logps(TinyLM(rngs=nnx.Rngs(5), vocab=12, width=4, hidden=6), batch)
        ref[:, 0] = np_logps(model, batch)[:, 0] + np.array([0.3, -0.3, 0.2, -0.2, 0.05, -0.4])  # hinge on 3 of 6
        batch["ref_logps"] = jnp.asarray(ref)
        graphdef, params, rest = _tiny_f64_params(model)
        objective = O.bilevel_stable_po_objective(chunk_size=None)
        hp = {"beta": 0.7, "penalty": 0.6, "inner_lr": 0.3}

        @jax.jit
        def engine(p, hp):
            return objective.fn(nnx.merge(graphdef, p, rest), batch, None, hp)[0]

        hp_in = {k: jnp.asarray(v, jnp.float64) for k, v in hp.items()}
        loss, grad = jax.value_and_grad(engine)(params, hp_in)
        old = _np_free_stable_po_bilevel(graphdef, rest, batch, **hp)
        want_loss, want_grad = jax.value_and_grad(old)(params)
        assert float(want_loss) > 0.0
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-7)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)  # engine: f32 pieces
        # Controls far outside that tolerance: without λ, or with η = 0 (the hinge and preference term at θ), the
        # loss and the gradient differ.
        for other in ({"penalty": 0.0}, {"inner_lr": 0.0}):
            ctrl_loss, ctrl_grad = jax.value_and_grad(_np_free_stable_po_bilevel(graphdef, rest, batch,
                                                                                 **{**hp, **other}))(params)
            assert abs(float(ctrl_loss) - float(want_loss)) > 1e-3
            assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ctrl_grad),
                                                                      jax.tree.leaves(want_grad))) > 1e-4


def test_bilevel_stable_po_train_step_runs_and_moves_params():
    tx = optax.adam(1e-2)
    graphdef, state, _ = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=make_mesh(MeshConfig()))
    batch = _batch(ref_logps=jnp.asarray(np.full((8, 2), -9.0, np.float32)))
    step = jax.jit(make_train_step(graphdef, O.bilevel_stable_po_objective(penalty=1.0, inner_lr=0.05), tx))
    before = jax.tree.map(np.asarray, state.params)
    state, m = step(state, batch, jax.random.PRNGKey(0))
    assert float(m["finite"]) == 1.0 and np.isfinite(float(m["loss"]))
    assert max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(before),
                                                                      jax.tree.leaves(state.params))) > 1e-3


def _reward_batch(k, seed=0):
    batch = _batch(seed)
    batch["dataset_id"] = jnp.asarray(np.arange(8) % k, jnp.int32)
    return batch


def _separate_head_grads(model, batch, k):
    """g_k = ∇_W L_k on stop-gradient features, computed apart from the objective."""
    feats = jax.lax.stop_gradient(model.features(batch["input_ids"], attention_mask=batch["attention_mask"]))
    kernel = model.score.kernel[...]

    def loss_k(w, i):
        r = (feats @ w)[..., 0]  # head 0
        m = np.asarray(batch["dataset_id"]) == i
        return -jnp.mean(jax.nn.log_sigmoid(r[m, 0] - r[m, 1]))

    return jnp.stack([jax.grad(loss_k)(kernel, i).ravel() for i in range(k)])


def test_more_lambda_in_step_equals_min_norm_of_head_gradients():
    k = 3  # K >= 3 exercises the general QP (K = 2 is the solver's closed form)
    build = lambda: RewardModel(TinyLM(rngs=nnx.Rngs(0)), num_heads=2, d_model=8, rngs=nnx.Rngs(1))  # noqa: E731
    objective = O.more_objective(num_datasets=k, ema_decay=0.99, normalize=True)
    tx = optax.sgd(0.5)
    graphdef, state, _ = create_train_state(build, tx, mesh=make_mesh(MeshConfig()),
                                            extras=init_extras(objective, build))
    step = jax.jit(make_train_step(graphdef, objective, tx))
    b1, b2 = _reward_batch(k, 0), _reward_batch(k, 1)
    g1 = _separate_head_grads(nnx.merge(graphdef, state.params, state.rest), b1, k)
    state, m1 = step(state, b1, jax.random.PRNGKey(0))
    np.testing.assert_allclose(m1["lambda"], min_norm_weights(g1, normalize=True), atol=1e-5)
    g2 = _separate_head_grads(nnx.merge(graphdef, state.params, state.rest), b2, k)
    state, m2 = step(state, b2, jax.random.PRNGKey(1))
    ema = 0.99 * g1 + 0.01 * g2
    np.testing.assert_allclose(state.extras["ema"], ema, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(m2["lambda"], min_norm_weights(ema, normalize=True), atol=1e-5)
    # The loss is Σ λ_k L_k with the reported λ and per-dataset losses.
    np.testing.assert_allclose(m2["loss"], np.dot(m2["lambda"], m2["dataset_losses"]), rtol=1e-5)
    assert abs(float(np.sum(m2["lambda"])) - 1.0) < 1e-5


def test_bradley_terry_objective_matches_numpy():
    model = RewardModel(TinyLM(rngs=nnx.Rngs(0)), num_heads=1, d_model=8, rngs=nnx.Rngs(1))
    batch = _batch()
    r = np.asarray(model(batch["input_ids"], attention_mask=batch["attention_mask"]), np.float64)[..., 0]
    loss, m = O.bradley_terry_objective()(model, batch, None)
    np.testing.assert_allclose(loss, np.mean(-np_logsig(r[:, 0] - r[:, 1])), rtol=1e-5)
    np.testing.assert_allclose(m["accuracy"], np.mean(r[:, 0] > r[:, 1]), atol=1e-7)


def test_ltr_cos_dpo_at_init_is_log_of_list_length_and_listnet_matches_numpy():
    k, f = 2, 5
    small = dict(num_features=f, d_model=8, num_layers=0, num_heads=1, mlp_dim=8)  # item-wise MLP: cheap to trace
    base = ListRanker(ListRankerConfig(**small), rngs=nnx.Rngs(0))
    delta = ListRanker(ListRankerConfig(**small, cond_dim=k), rngs=nnx.Rngs(1))
    model = AugmentedRanker(base, delta)
    rs = np.random.RandomState(0)
    where = np.ones((6, 4), bool)
    where[1, 3] = where[2, 2:] = where[4, 1:] = False  # valid counts 4, 3, 2, 4, 1, 4
    batch = {"features": jnp.asarray(rs.normal(size=(6, 4, f)), jnp.float32), "where": jnp.asarray(where),
             "labels": jnp.asarray(rs.randint(0, 3, size=(6, k, 4)), jnp.float32)}
    sampling = O.COSDPOSampling(num_objectives=k, per_example=True)
    loss, m = O.ltr_cos_dpo_objective(sampling=sampling)(model, batch, jax.random.PRNGKey(0))
    # Zero-initialised correction: s = β(f − f_ref) = 0, so each list's cross-entropy is log(#valid) for any labels.
    np.testing.assert_allclose(loss, np.mean(np.log(where.sum(-1))), rtol=1e-6)
    np.testing.assert_allclose(m["objective_losses"], [np.mean(np.log(where.sum(-1)))] * k, rtol=1e-6)

    scores = np.asarray(base(batch["features"], where=batch["where"]), np.float64)
    lab = np.asarray(batch["labels"])[:, 0]
    expected = []
    for i in range(6):
        v = where[i]
        target = np.exp(lab[i, v]) / np.exp(lab[i, v]).sum()
        logp = scores[i, v] - np.log(np.exp(scores[i, v]).sum())
        expected.append(-(target * logp).sum())
    loss, _ = O.ltr_listnet_objective()(base, batch, None)
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def test_listwise_dpo_on_two_binary_items_is_dpo_and_ltr_listwise_at_init():
    model = TinyLM(rngs=nnx.Rngs(0))
    rs = np.random.RandomState(6)
    batch = _batch(ref_logps=jnp.asarray(rs.normal(-8, 1, size=(8, 2)), jnp.float32),
                   labels=jnp.asarray(np.tile([[[1.0, 0.0]]], (8, 1, 1)), jnp.float32))
    listwise, m = O.listwise_dpo_objective(beta=0.7, label_norm="l1")(model, batch, None)
    dpo, _ = O.dpo_objective(beta=0.7)(model, batch, None)
    np.testing.assert_allclose(listwise, dpo, rtol=1e-6)
    assert float(m["count"]) == 8.0

    f = 3
    small = dict(num_features=f, d_model=8, num_layers=0, num_heads=1, mlp_dim=8)
    ranker = AugmentedRanker(ListRanker(ListRankerConfig(**small), rngs=nnx.Rngs(0)),
                             ListRanker(ListRankerConfig(**small), rngs=nnx.Rngs(1)))
    where = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    ltr = {"features": jnp.asarray(rs.normal(size=(2, 4, f)), jnp.float32), "where": jnp.asarray(where),
           "labels": jnp.asarray(rs.randint(0, 3, size=(2, 1, 4)), jnp.float32)}
    loss, m = O.ltr_listwise_dpo_objective(beta=2.0)(ranker, ltr, None)
    np.testing.assert_allclose(loss, np.mean(np.log([4.0, 2.0])), rtol=1e-6)  # s = β(f − f_ref) = 0 at init
    assert float(m["count"]) == 2.0


def _counting(objective):
    """``objective`` with a trace counter on its ``fn`` (the step traces ``fn`` once per compilation)."""
    calls = []

    def fn(*args):
        calls.append(1)
        return objective.fn(*args)

    return O.Objective(fn=fn, hparams=objective.hparams, init_extras=objective.init_extras), calls


@pytest.mark.parametrize("factory,sweep", [
    ("dpo", [{"beta": 0.05}, {"beta": 0.5}, {"beta": 2.0, "label_smoothing": 0.1}]),
    ("spo", [{"beta": 0.2, "alpha": (0.0, 0.0)}, {"beta": 0.5, "alpha": (0.3, 0.7)}, {"beta": 1.0, "alpha": (2.0, 0.1)}]),
    ("modpo", [{"weights": (0.2, 0.8)}, {"weights": (0.5, 0.5)}, {"beta": 0.7, "weights": (0.9, 0.1)}]),
])
def test_hparam_sweep_compiles_once_and_matches_fresh_constant_objectives(factory, sweep):
    """A sweep of β / α / w through one jitted step: one trace, one executable, and each step's loss and updated
    parameters equal those of a step built from a freshly made objective whose values are Python constants."""
    from mojax.train.step import jit_train_step

    make = {"dpo": O.dpo_objective, "spo": lambda **kw: O.spo_objective(**{"alpha": (0.0, 0.0), **kw}),
            "modpo": lambda **kw: O.modpo_objective(**{"weights": (0.5, 0.5), **kw})}[factory]
    rs = np.random.RandomState(3)
    ref = rs.normal(-8, 1, size=(8, 2) if factory == "dpo" else (3 if factory == "spo" else 2, 8, 2))
    batch = {**make_batch(0), "ref_logps": ref.astype(np.float32)}
    tx = optax.sgd(0.1)
    mesh = make_mesh(MeshConfig())
    objective, traces = _counting(make())
    graphdef, state0, shardings = create_train_state(lambda: TinyLM(rngs=nnx.Rngs(0)), tx, mesh=mesh,
                                                     hparams=objective.initial_hparams())
    step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batch, mesh)
    for values in sweep:
        state = jax.tree.map(jnp.copy, state0).replace(hparams=objective.initial_hparams(values))
        new, metrics = step(state, batch, state0.rng)
        fresh = make(**values)  # the values as the objective's defaults, baked into a plain callable's step
        plain = lambda model, b, rng, fresh=fresh: fresh(model, b, rng)  # noqa: E731
        want_state, want = jax.jit(make_train_step(graphdef, plain, tx))(jax.tree.map(jnp.copy, state0), batch,
                                                                            state0.rng)
        np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want_state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(traces) == 1 and step._cache_size() == 1
    losses = {float(step(jax.tree.map(jnp.copy, state0).replace(hparams=objective.initial_hparams(v)), batch,
                         state0.rng)[1]["loss"]) for v in sweep}
    assert len(losses) == 3  # the values really reached the loss


def test_objective_hparams_are_validated_and_factories_share_fn():
    assert O.dpo_objective(beta=0.1).fn is O.dpo_objective(beta=3.0).fn  # one compiled step for a sweep
    assert O.dpo_objective().fn is not O.dpo_objective(loss_type="ipo").fn  # a static choice is another fn
    with pytest.raises(ValueError, match="finite"):
        O.dpo_objective(beta=float("inf"))
    with pytest.raises(ValueError, match="beta must be positive"):
        O.dpo_objective(beta=-1.0)
    obj = O.spo_objective(alpha=(0.1, 0.2))
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        obj.initial_hparams({"gamma": 1.0})
    with pytest.raises(ValueError, match="shape"):
        obj.initial_hparams({"alpha": (1.0, 2.0, 3.0)})
    with pytest.raises(ValueError, match="finite"):
        obj.initial_hparams({"beta": float("nan")})
    np.testing.assert_array_equal(obj.initial_hparams({"alpha": 0.5})["alpha"], [0.5, 0.5])
