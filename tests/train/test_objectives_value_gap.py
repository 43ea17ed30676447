"""Stable PO's value-gap objective against a float64 composition written out directly, central finite differences
and the small-step closed form ``gap ≈ η‖∇L_SFT(θ)‖²``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from _train_tiny import TinyLM, make_batch
from mojax.train import objectives as O


def _setup(batch_size=6):
    model = TinyLM(rngs=nnx.Rngs(0), vocab=12, width=4, hidden=6)
    batch = {k: jnp.asarray(v) for k, v in make_batch(4, batch=batch_size, vocab=12).items()}
    ref = np.asarray(jax.random.normal(jax.random.key(3), (batch_size, 2)), np.float64) - 6.0
    batch["ref_logps"] = jnp.asarray(ref)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return model, batch, graphdef, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params), rest


def _direct(graphdef, rest, batch, *, beta, penalty, inner_lr, inner_steps=1):
    """L(θ) = mean_b DPO_b(θ) + λ·(L_SFT(θ) − L_SFT(θ_K)), θ_{k+1} = θ_k − η∇L_SFT(θ_k), from full logits; L_SFT =
    −Σ_b logπ(y_w) / Σ_b |y_w| (all examples valid)."""
    ids, attn, mask, ref = batch["input_ids"], batch["attention_mask"], batch["loss_mask"], batch["ref_logps"]
    b, n, t = ids.shape

    def logps(p):
        logits = nnx.merge(graphdef, p, rest)(ids.reshape(b * n, t), attention_mask=attn.reshape(b * n, t))
        lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        tok = jnp.take_along_axis(lp, ids.reshape(b * n, t)[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(tok * mask.reshape(b * n, t)[:, 1:], axis=-1).reshape(b, n)

    def sft(p):
        return -jnp.sum(logps(p)[:, 0]) / jnp.sum(mask[:, 0, 1:])

    def objective(p):
        lp = logps(p)
        dpo = jnp.mean(-jax.nn.log_sigmoid(beta * ((lp[:, 0] - ref[:, 0]) - (lp[:, 1] - ref[:, 1]))))
        inner = p
        for _ in range(inner_steps):
            inner = jax.tree.map(lambda x, g: x - inner_lr * g, inner, jax.grad(sft)(inner))
        return dpo + penalty * (sft(p) - sft(inner))

    return objective, sft


def test_value_gap_objective_matches_direct_composition_and_finite_differences():
    with jax.enable_x64(True):
        model, batch, graphdef, params, rest = _setup()
        hp = {"beta": 0.7, "penalty": 3.0, "inner_lr": 0.4}
        for steps in (2,):  # two unrolled inner steps (one step is the closed-form test's case)
            objective = O.value_gap_stable_po_objective(inner_steps=steps, chunk_size=None)

            @jax.jit
            def engine(p, hp):
                return objective.fn(nnx.merge(graphdef, p, rest), batch, None, hp)

            hp_in = {k: jnp.asarray(v, jnp.float64) for k, v in hp.items()}
            (loss, metrics), grad = jax.value_and_grad(engine, has_aux=True)(params, hp_in)
            direct, _ = _direct(graphdef, rest, batch, inner_steps=steps, **hp)
            want_loss, want_grad = jax.value_and_grad(direct)(params)
            np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-7)
            assert float(metrics["value_gap"]) > 1e-3  # the penalty is active and positive (the inner steps descend)
            for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
            # Central finite differences of the engine's own loss along a random direction (float64, ε = 1e-5).
            leaves, treedef = jax.tree.flatten(params)
            d = jax.tree.unflatten(treedef, [jnp.asarray(np.random.RandomState(i).normal(size=x.shape))
                                             for i, x in enumerate(leaves)])
            f = lambda s: float(engine(jax.tree.map(lambda p, v: p + s * v, params, d), hp_in)[0])  # noqa: E731
            fd = (f(1e-5) - f(-1e-5)) / 2e-5
            analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
            assert abs(analytic) > 1e-3
            np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_value_gap_small_step_closed_form_controls_and_first_order():
    with jax.enable_x64(True):
        model, batch, graphdef, params, rest = _setup()
        objective = O.value_gap_stable_po_objective(chunk_size=None)
        _, sft = _direct(graphdef, rest, batch, beta=0.5, penalty=1.0, inner_lr=0.0)
        g2 = sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(jax.grad(sft)(params)))

        compiled = {}  # one compiled value-and-grad per objective fn; the hparams are traced arguments

        def run(obj, **hp):
            hp = {**{k: jnp.asarray(v, jnp.float64) for k, v in obj.hparams.items()},
                  **{k: jnp.asarray(v, jnp.float64) for k, v in hp.items()}}
            if obj.fn not in compiled:
                compiled[obj.fn] = jax.jit(jax.value_and_grad(
                    lambda p, h: obj.fn(nnx.merge(graphdef, p, rest), batch, None, h), has_aux=True))
            return compiled[obj.fn](params, hp)

        # One step of η: gap = η‖g‖² − O(η²) (Taylor); at η = 1e-4 the relative error is ~1e-4.
        (_, m), _ = run(objective, inner_lr=1e-4)
        np.testing.assert_allclose(float(m["value_gap"]) / 1e-4, g2, rtol=2e-3)
        # λ = 0 is DPO exactly.
        (loss0, _), grad0 = run(objective, penalty=0.0, beta=0.5)
        dpo = O.dpo_objective(beta=0.5, chunk_size=None)
        np.testing.assert_allclose(float(loss0), float(dpo(nnx.merge(graphdef, params, rest), batch, None)[0]),
                                   rtol=1e-10)
        # first_order drops the Hessian factor: the same loss, a different gradient (≈ ∇L(θ) − ∇L(θ⁺)).
        fo = O.value_gap_stable_po_objective(chunk_size=None, first_order=True)
        (l_full, _), g_full = run(objective, penalty=5.0, inner_lr=0.3)
        (l_fo, _), g_fo = run(fo, penalty=5.0, inner_lr=0.3)
        np.testing.assert_allclose(float(l_full), float(l_fo), rtol=1e-12)
        assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_full),
                                                                  jax.tree.leaves(g_fo))) > 1e-4


def test_value_gap_objective_shares_its_step_across_hparams_and_rejects_bad_options():
    a = O.value_gap_stable_po_objective(penalty=0.1)
    b = O.value_gap_stable_po_objective(penalty=10.0, inner_lr=0.5)
    assert a.fn is b.fn and set(a.hparams) == {"beta", "penalty", "inner_lr", "label_smoothing"}
    assert set(O.value_gap_stable_po_objective(pref="simpo").hparams) == {"beta", "penalty", "inner_lr", "gamma",
                                                                         "label_smoothing"}
    for bad in ({"inner_steps": 0}, {"penalty": -1.0}, {"pref": "orpo"}):
        try:
            O.value_gap_stable_po_objective(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
