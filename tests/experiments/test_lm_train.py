"""One training run of the LM experiments (experiments/_lm_train.py) and parameter files."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import experiments._lm_common as L
from lm_reference import MODEL, TASK
from mojax.train.objectives import sft_objective, spo_objective



def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_train_lowers_loss_and_leaves_the_input_model_alone(lm_sft):
    model, _, _ = lm_sft
    before = _params(model)
    corpus = L.sft_corpus(TASK, num_sequences=128, seed=7)
    run = L.TrainConfig(steps=12, batch_size=16, eval_every=5, progress=False)
    opt = L.OptimizerConfig(learning_rate=1e-2)
    objective = sft_objective()
    trained, hist = L.train(model, objective, corpus, run, opt, eval_fn=lambda m: {"nll": L.token_nll(m, corpus)})
    assert len(hist.metrics["loss"]) == 12 and np.all(np.isfinite(hist.metrics["loss"]))
    assert [e["step"] for e in hist.evals] == [0, 5, 10, 12]
    nll = [e["nll"] for e in hist.evals]
    assert nll[-1] < nll[0]  # training on the corpus lowers its NLL
    np.testing.assert_allclose(nll[0], L.token_nll(model, corpus), rtol=1e-6)  # step 0 = the input model
    jax.tree.map(np.testing.assert_array_equal, _params(model), before)  # donation did not touch the input
    # A rerun is deterministic (same batches, same step keys).
    again, hist2 = L.train(model, objective, corpus, run, opt)
    jax.tree.map(np.testing.assert_array_equal, _params(again), _params(trained))
    assert hist2.metrics["loss"] == hist.metrics["loss"]
    # The batch is cut to a data set smaller than batch_size.
    _, small = L.train(model, objective, corpus.subset(np.arange(5)), L.TrainConfig(steps=2, batch_size=16,
                                                                                    progress=False), opt)
    assert len(small.metrics["loss"]) == 2


def test_load_params_rejects_a_foreign_checkpoint(tmp_path, lm_sft):
    model, _, _ = lm_sft
    path = L.save_params(model, tmp_path / "p.npz")
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    name = next(k for k, v in stored.items() if v.ndim == 2)
    np.savez(tmp_path / "bad_shape.npz", **{**stored, name: stored[name][:-1]})
    with pytest.raises(ValueError, match="shape"):
        L.load_params(model, tmp_path / "bad_shape.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in stored.items() if k != name})
    with pytest.raises(ValueError, match="missing"):
        L.load_params(model, tmp_path / "missing.npz")


def test_runs_differing_in_hparams_share_one_compiled_step(lm_sft):
    """SPO's α (a traced hyper-parameter) changes the result but not the program: the second run reuses the step."""
    model, _, _ = lm_sft
    other = L.build_decoder(TASK, MODEL, seed=1)  # an untrained π_1: Δu = Δ[logπ_1 − logπ_0] is far from 0
    data = L.with_ref_logps(L.synthetic_pairs(TASK, dimension=1, num_pairs=16, seed=3), [model, other])
    run = L.TrainConfig(steps=2, batch_size=8, progress=False)
    opt = L.OptimizerConfig(learning_rate=1e-2)
    objective = spo_objective(beta=0.1)
    _, hist_a = L.train(model, objective, data, run, opt, hparams={"alpha": 0.0})
    _, hist_b = L.train(model, objective, data, run, opt, hparams={"alpha": 5.0})
    assert not hist_b.compiled
    # Same batches and keys, θ = π_0 at step 0: the losses differ only through α·Δu.
    assert abs(hist_a.metrics["loss"][0] - hist_b.metrics["loss"][0]) > 1e-3
