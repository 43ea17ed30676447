"""Host loop: run directory contents, evaluation hook, metrics, resume; the CLI end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from _train_tiny import TinyLM, nll_objective
from mojax.train.checkpoint import CheckpointConfig, StopFlag
from mojax.train.loop import TrainConfig, fit
from mojax.train.mesh import MeshConfig, make_mesh
from mojax.train.step import OptimizerConfig

sys.path.insert(0, str(Path(__file__).parent))
from _train_worker import _grain_pairs  # noqa: E402


def _run(run_dir, steps, *, stop_flag=None, eval_fn=None, on_step=None):
    return fit(lambda: TinyLM(rngs=nnx.Rngs(0)), nll_objective, _grain_pairs(),
               optimizer=OptimizerConfig(learning_rate=1e-2), mesh=make_mesh(MeshConfig()),
               config=TrainConfig(steps=steps, log_every=2, eval_every=3, run_dir=str(run_dir), progress=False),
               checkpoint=CheckpointConfig(every_steps=3), eval_fn=eval_fn, stop_flag=stop_flag,
               data_report={"kept": 64, "skipped": 0}, on_metrics=on_step)


def test_stop_flag_then_resume_with_run_dir_metrics_and_eval(tmp_path):
    flag, evals = StopFlag(), []

    def on_step(step, metrics):
        if step == 4:
            flag.set()  # as the SIGTERM handler would

    def eval_fn(step, model):
        evals.append(step)
        return {"embed_norm": float(np.linalg.norm(np.asarray(model.embed[...])))}

    stopped = _run(tmp_path, 6, stop_flag=flag, on_step=on_step, eval_fn=eval_fn)
    assert stopped.stopped and int(stopped.state.step) == 4 and evals == [3]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 4]

    result = _run(tmp_path, 6, eval_fn=eval_fn)  # same run dir: resumes at 4
    assert result.start_step == 4 and int(result.state.step) == 6 and not result.stopped
    assert evals == [3, 6]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["steps"] == 6 and config["log_every"] == 2
    assert json.loads((tmp_path / "data_report.json").read_text()) == {"kept": 64, "skipped": 0}
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6]
    assert all(np.isfinite(x["loss"]) and x["count"] == 8.0 and x["steps_per_s"] > 0 for x in train_lines)
    assert [x["step"] for x in lines if "eval/embed_norm" in x] == [3, 6]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 6]  # keep-2


def test_train_config_validation():
    with pytest.raises(ValueError, match="accum_steps >= 1"):
        TrainConfig(accum_steps=0)


def _read_tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Decode TensorBoard event files (TFRecord framing: u64 length, u32 crc, payload, u32 crc) independently of
    the writer, so the test checks what TensorBoard would read."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_metrics_writer_writes_jsonl_and_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    from mojax.train.loop import MetricsWriter

    writer = MetricsWriter(tmp_path, tensorboard=True)
    writer.write(1, {"loss": np.float32(0.75), "accuracy": 0.5, "lambda": np.array([0.2, 0.8])})
    writer.write(2, {"loss": 0.25, "accuracy": 1.0})
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and lines[0]["lambda"] == [0.2, 0.8]
    scalars = _read_tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["loss"] == [(1, 0.75), (2, 0.25)]
    assert scalars["accuracy"] == [(1, 0.5), (2, 1.0)]
    assert "lambda" not in scalars  # vectors go to metrics.jsonl only


def test_fit_in_memory_sweep_reuses_one_compiled_step_and_matches_fresh_runs(tmp_path, monkeypatch):
    """``run_dir=None`` writes nothing; a β sweep through fit() compiles once (one trace of the objective, one cache
    entry, ``compiled`` only on the first run) and each run equals a run of a freshly built constant-β objective."""
    import jax

    from mojax.train import clear_step_cache, dpo_objective
    from mojax.train.loop import _STEP_CACHE

    monkeypatch.chdir(tmp_path)
    rs = np.random.RandomState(0)
    from _train_tiny import make_batch

    batches = [{**make_batch(s), "ref_logps": rs.normal(-8, 1, (8, 2)).astype(np.float32)} for s in range(3)]
    config = TrainConfig(steps=3, log_every=1, progress=False, eval_every=2)
    clear_step_cache()
    base = dpo_objective(beta=0.1)
    traces = []
    objective = O_counting(base, traces)
    evals = []
    results = []
    for beta in (0.05, 0.5, 2.0):
        results.append(fit(lambda: TinyLM(rngs=nnx.Rngs(0)), objective, iter(batches), config=config,
                           hparams={"beta": beta}, eval_fn=lambda step, model: evals.append(step) or {"x": 1.0}))
    assert len(traces) == 1 and len(_STEP_CACHE) == 1
    assert [r.compiled for r in results] == [True, False, False]
    assert list(tmp_path.iterdir()) == [] and all(r.run_dir is None for r in results)
    assert evals == [2, 3] * 3
    for beta, result in zip((0.05, 0.5, 2.0), results):
        fresh = dpo_objective(beta=beta)
        plain = lambda m, b, r, fresh=fresh: fresh(m, b, r)  # noqa: E731 — β baked in as a constant
        want = fit(lambda: TinyLM(rngs=nnx.Rngs(0)), plain, iter(batches), config=config)
        np.testing.assert_allclose(result.metrics("loss"), want.metrics("loss"), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(want.state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(result.state.hparams["beta"]), beta, rtol=1e-7)
    assert len({tuple(r.metrics("loss")) for r in results}) == 3


def O_counting(objective, traces):
    from mojax.train import Objective

    def fn(*args):
        traces.append(1)
        return objective.fn(*args)

    return Objective(fn=fn, hparams=objective.hparams)


def test_fit_leaves_the_callers_module_intact_and_continues_a_result():
    import jax

    model = TinyLM(rngs=nnx.Rngs(0))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model))]
    config = TrainConfig(steps=2, log_every=1, progress=False)
    first = fit(model, nll_objective, _grain_pairs(), config=config)
    after = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]  # would raise if the step deleted them
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    more = fit(first, nll_objective, _grain_pairs(), config=TrainConfig(steps=4, log_every=1, progress=False))
    assert more.start_step == 2 and int(more.state.step) == 4 and [h["step"] for h in more.history] == [3, 4]
    assert int(first.state.step) == 2  # the earlier result is still readable (the continuation copied it)


def test_fit_and_ref_cache_trace_under_the_mesh_and_match_one_device(tmp_path):
    """Issue 10 §1: on a (data=2, tensor=2) mesh of 4 host devices the step lowered without ``jax.set_mesh`` has no
    sharding constraint (``constrain`` cannot see the mesh), traced under it has the model's; the programs fit()
    and the reference-log-prob cache actually compiled hold them (XLA's pre-optimisation dump); and losses,
    parameters and reference log-probs equal a one-device run's."""
    import os
    import subprocess

    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 --xla_dump_to={tmp_path} --xla_dump_hlo_as_text"}
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "_train_worker.py"), "mesh_constraints",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["devices"] == 4
    assert got["lowered_without_mesh"] == 0 and got["lowered_with_mesh"] > 0
    assert got["dumped"]["train_step"] == got["lowered_with_mesh"] and got["dumped"]["forward"] > 0
    assert abs(got["grid_losses"][0] - np.log(2)) < 1e-6  # LoRA starts at its base, the reference
    np.testing.assert_allclose(got["grid_losses"], got["one_losses"], rtol=1e-5)
    for a, b in zip(got["grid_params"], got["one_params"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["grid_ref"], got["one_ref"], rtol=1e-5, atol=1e-5)
