"""Run directories: a fingerprint checked before anything is written, new directories by default, resume checks."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from mojax.train.run_dir import (FINGERPRINT_FILE, RunMismatchError, check_or_claim, check_resume_step,
                                 data_fingerprint, make_fingerprint, new_run_dir)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Opt:
    learning_rate: float = 1e-3
    schedule: str = "constant"


def _fp(tmp_path, **changes):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    fields = dict(model="models/tiny", method="dpo", beta=0.1, optimizer=_Opt(), steps=3,
                  data=data_fingerprint([data], seed=0), shapes={"batch_size": 8, "accum_steps": 1, "max_length": 64})
    fields.update(changes)
    return make_fingerprint(**fields)


def _snapshot(path):
    return {p: (p.stat().st_size, p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}


def test_fresh_claim_then_same_run_resumes_and_more_steps_is_allowed(tmp_path):
    run = tmp_path / "run"
    claim = check_or_claim(run, _fp(tmp_path))
    assert claim.fresh and (run / FINGERPRINT_FILE).is_file()
    again = check_or_claim(run, _fp(tmp_path))
    assert not again.fresh and again.changed == {}
    more = check_or_claim(run, _fp(tmp_path, steps=5))
    assert more.changed == {"steps": (3, 5)}
    record = json.loads((run / FINGERPRINT_FILE).read_text())
    assert record["fields"]["steps"] == 5 and record["history"][-1]["changed"] == {"steps": [3, 5]}


@pytest.mark.parametrize("change, field", [
    ({"method": "ipo"}, "method"),
    ({"optimizer": _Opt(learning_rate=2e-3)}, "optimizer.learning_rate"),
    ({"shapes": {"batch_size": 4, "accum_steps": 1, "max_length": 64}}, "shapes.batch_size"),
    ({"model": "models/other"}, "model"),
])
def test_a_different_run_is_refused_in_one_line_naming_the_field_and_nothing_is_written(tmp_path, change, field):
    run = tmp_path / "run"
    check_or_claim(run, _fp(tmp_path))
    (run / "checkpoints" / "3").mkdir(parents=True)
    before = _snapshot(run)
    with pytest.raises(RunMismatchError) as err:
        check_or_claim(run, _fp(tmp_path, **change))
    message = str(err.value)
    assert "\n" not in message and field in message and "belongs to another run" in message
    assert _snapshot(run) == before
    # the same change passes when explicitly allowed (by field or by its dotted prefix)
    assert field in check_or_claim(run, _fp(tmp_path, **change), allow=(field.split(".")[0],)).changed


def test_changed_data_content_or_order_seed_is_refused(tmp_path):
    run = tmp_path / "run"
    check_or_claim(run, _fp(tmp_path))
    with pytest.raises(RunMismatchError, match="data.seed 0 → 1"):
        check_or_claim(run, _fp(tmp_path, data=data_fingerprint([tmp_path / "pairs.jsonl"], seed=1)))
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "B", "rejected": "c"}\n')  # same size, edited
    with pytest.raises(RunMismatchError, match="data.files"):
        check_or_claim(run, _fp(tmp_path))
    os.utime(tmp_path / "pairs.jsonl", (0, 0))  # only the mtime: the content hash is what counts
    assert data_fingerprint([tmp_path / "pairs.jsonl"]) == data_fingerprint([tmp_path / "pairs.jsonl"])


def test_checkpoints_without_fingerprint_are_refused_unless_adopted(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoints" / "25").mkdir(parents=True)
    with pytest.raises(RunMismatchError, match="no fingerprint.json"):
        check_or_claim(run, _fp(tmp_path))
    assert not (run / FINGERPRINT_FILE).exists()
    assert check_or_claim(run, _fp(tmp_path), allow=("*",)).fresh
    # a directory with files but no checkpoint (a run that died before saving) is simply claimed
    assert check_or_claim(tmp_path / "crashed", _fp(tmp_path)).fresh


def test_unreadable_fingerprint_and_non_writing_processes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / FINGERPRINT_FILE).write_text("{trunc")
    with pytest.raises(RunMismatchError, match="unreadable"):
        check_or_claim(run, _fp(tmp_path))
    other = tmp_path / "other"
    assert check_or_claim(other, _fp(tmp_path), write=False).fresh and not other.exists()


def test_new_run_dirs_are_distinct_and_resume_step_checks(tmp_path):
    a, b = new_run_dir(tmp_path, "dpo"), new_run_dir(tmp_path, "dpo")
    assert a != b and a.is_dir() and b.is_dir() and a.name.startswith("dpo-") and not any(a.iterdir())
    assert check_resume_step(None, 10) is None
    assert check_resume_step(6, 8) == "resumed from step 6 of 8"
    with pytest.raises(ValueError, match="checkpoint is at step 25 but steps=20"):
        check_resume_step(25, 20)


def test_fingerprint_values_round_trip_json():
    fp = make_fingerprint(a=(1, 2), b={"c": float("nan")}, p=os.path.join("x", "y"), e={})
    assert fp == {"a": [1, 2], "b.c": "nan", "p": os.path.join("x", "y"), "e": {}}


def test_skip_monitor_stops_a_mostly_skipped_run_and_tolerates_a_few():
    from mojax.train.run_dir import SkipMonitor, SkippedStepsError

    few = SkipMonitor(start_step=0, start_skipped=0, total_steps=100)
    for step in range(1, 101):
        few.update(step, step // 10)  # one step in ten skipped
    mostly = SkipMonitor(start_step=0, start_skipped=0, total_steps=100)
    with pytest.raises(SkippedStepsError, match="stopped at step 20: 11 of the last 20 steps") as err:
        for step in range(1, 101):
            mostly.update(step, max(0, step - 9))  # every step from step 10 on is skipped
    assert "learning rate" in str(err.value) and "\n" not in str(err.value)
    logged_every_5 = SkipMonitor(start_step=40, start_skipped=3, total_steps=100)
    assert logged_every_5.update(45, 3) == 0 and logged_every_5.update(50, 8) == 5  # newly skipped per call
    with pytest.raises(SkippedStepsError):
        for step in range(55, 101, 5):
            logged_every_5.update(step, 8 + step - 50)
    short = SkipMonitor(start_step=0, start_skipped=0, total_steps=6)  # shorter than the window: judged at its end
    for step in range(1, 6):
        short.update(step, step)
    with pytest.raises(SkippedStepsError, match="6 of the last 6"):
        short.update(6, 6)


def test_fit_fingerprint_names_the_math():
    from mojax.train.run_dir import fit_fingerprint

    @dataclasses.dataclass(frozen=True)
    class _Cfg:
        steps: int = 5
        batch_size: int = 8
        accum_steps: int = 1
        seed: int = 0
        log_every: int = 1

    def dpo_fn(model, batch, rng, hparams):
        return 0.0, {}

    fp = fit_fingerprint(objective=dpo_fn, hparams={"beta": 0.1}, optimizer=_Opt(), config=_Cfg(),
                         extra={"model": "m"})
    assert fp["objective"].endswith("dpo_fn") and fp["hparams.beta"] == 0.1 and fp["steps"] == 5
    assert fp["optimizer.learning_rate"] == 1e-3 and fp["shapes.batch_size"] == 8 and fp["model"] == "m"
    assert "log_every" not in json.dumps(fp)


# --- through fit: the claim happens before anything is written; resume line; steps check; mostly-skipped runs ---


def _fit(run_dir, steps, *, lr=1e-2, batches=None, **kwargs):
    import sys
    from pathlib import Path

    from flax import nnx

    sys.path.insert(0, str(Path(__file__).parent))
    from _train_tiny import TinyLM, nll_objective
    from _train_worker import _grain_pairs
    from mojax.train.checkpoint import CheckpointConfig
    from mojax.train.loop import TrainConfig, fit
    from mojax.train.mesh import MeshConfig, make_mesh
    from mojax.train.step import OptimizerConfig

    return fit(lambda: TinyLM(rngs=nnx.Rngs(0)), nll_objective, _grain_pairs() if batches is None else batches,
               optimizer=OptimizerConfig(learning_rate=lr), mesh=make_mesh(MeshConfig()),
               config=TrainConfig(steps=steps, log_every=1, run_dir=None if run_dir is None else str(run_dir),
                                  progress=False),
               checkpoint=CheckpointConfig(every_steps=3, async_save=False), **kwargs)


def test_fit_refuses_another_run_before_writing_checks_steps_and_says_resumed(tmp_path, capsys):
    run = tmp_path / "run"
    _fit(run, 3, fingerprint={"data": "pairs-v1"})
    before = _snapshot(run)
    with pytest.raises(RunMismatchError, match="optimizer.learning_rate 0.01 → 0.02"):
        _fit(run, 3, lr=2e-2, fingerprint={"data": "pairs-v1"})
    with pytest.raises(RunMismatchError, match='data "pairs-v1" → "pairs-v2"'):
        _fit(run, 3, fingerprint={"data": "pairs-v2"})
    with pytest.raises(ValueError, match="checkpoint is at step 3 but steps=2"):
        _fit(run, 2, fingerprint={"data": "pairs-v1"})
    assert _snapshot(run) == before  # config.json, metrics, fingerprint, checkpoints: untouched
    capsys.readouterr()
    result = _fit(run, 5, fingerprint={"data": "pairs-v1"})
    assert result.start_step == 3 and int(result.state.step) == 5
    assert "mojax: resumed from step 3 of 5" in capsys.readouterr().out


def test_fit_stops_a_run_whose_steps_are_mostly_skipped():
    import sys
    from pathlib import Path

    import numpy as np

    from mojax.train.run_dir import SkippedStepsError

    sys.path.insert(0, str(Path(__file__).parent))
    from _train_tiny import make_batch

    def batches():  # a non-finite loss scale from step 3 on: every later update is dropped by the step's guard
        for i in range(100):
            batch = make_batch(i)
            batch["scale"] = np.full(batch["input_ids"].shape[0], np.nan if i >= 2 else 1.0, np.float32)
            yield batch

    with pytest.raises(SkippedStepsError, match="stopped at step 20: 18 of the last 20 steps were skipped"):
        _fit(None, 40, batches=batches())
