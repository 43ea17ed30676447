"""Fault injection, end to end through ``python -m mojax.train`` on a tiny model: kill, corrupt, bad records, NaN.

Run from the repository root::

    python benchmarks/fault_injection.py                      # every scenario, 3 kills at random steps
    python benchmarks/fault_injection.py --fast               # one trial of each scenario
    python benchmarks/fault_injection.py --scenarios non-finite --only "rate nan,beta"   # the test's variant
    python benchmarks/fault_injection.py --scenarios kill --trials 5 --seed 1

Scenarios (each trial is one or more real CLI processes in a fresh run directory; tiny random decoder, DPO,
checkpoints every ``EVERY`` steps, one step logged per line):

- ``kill``: SIGKILL at a random step after the first checkpoint, then the same command again. Survived = it exits 0
  and its final parameters, optimizer state and step equal an uninterrupted run's bit for bit. Lost = steps trained
  twice (killed step − newest complete checkpoint).
- ``corrupt``: a finished run's newest checkpoint is damaged (64 bytes flipped in its largest data file; a truncated
  ``manifest.ocdbt``; a deleted data file; flipped bytes in the array metadata), then the command is rerun with
  ``EVERY`` more steps. Survived = exit 0, exactly one stderr line reports the bad checkpoint, and the final state
  equals an uninterrupted run of the longer length bit for bit. Lost = steps trained again (the damaged checkpoint's
  step − the one restored).
- ``bad-record``: a JSONL file of good pairs plus one bad record of each kind (invalid JSON, 200,000 nested ``[``, a
  lone surrogate, a missing field, a number where text belongs, a blank line, a UTF-8 BOM before the first record).
  Survived = exit 0, every bad record counted under a reason in ``data_report.json`` and every good one kept. Lost =
  good records not kept.
- ``non-finite``: ``--optimizer.learning-rate nan`` / ``inf`` (must be refused: exit 2 naming it, nothing written)
  and ``--beta 1e30`` / ``--optimizer.learning-rate 1e38`` (must not write a non-finite parameter; a run whose steps
  are mostly skipped must stop with exit status 3 saying so). Lost = checkpoints holding a non-finite value.

Prints a table (scenario, trials, survived, lost) and, last, ``fault_injection_survived=<fraction of trials>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 6, 2
GOOD_RECORDS = 24
TINY = ("--num-pairs", "32", "--train.batch-size", "4", "--data.max-length", "32", "--data.max-prompt-length", "16")


@dataclass
class Trial:
    """One injected fault and what came of it."""

    scenario: str
    variant: str
    survived: bool
    lost: int
    note: str = ""


def command(run_dir: Path, steps: int, *extra: str) -> list[str]:
    """The CLI command of a tiny DPO run (CLI flag names live only here)."""
    return [sys.executable, "-m", "mojax.train", "--method", "dpo", "--train.steps", str(steps),
            "--checkpoint.every-steps", str(EVERY), "--train.run-dir", str(run_dir), "--train.no-progress",
            "--train.log-every", "1", *TINY, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return env


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a CLI process to its end (stdout/stderr captured)."""
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Complete checkpoints of a run directory (Orbax renames a step directory into place when it is complete)."""
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def final_state(run_dir: Path) -> dict[str, np.ndarray]:
    """Every array of the newest checkpoint, read by Orbax directly (no mojax code, no verification)."""
    import orbax.checkpoint as ocp

    step = checkpoint_steps(run_dir)[-1]
    restored = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state")
    return {k: np.asarray(v) for k, v in restored.items()}


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Whether two flat states hold the same keys, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


def all_finite(run_dir: Path) -> bool:
    """Whether every floating array of every checkpoint in the run directory is finite."""
    import orbax.checkpoint as ocp

    for step in checkpoint_steps(run_dir):
        for v in ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state").values():
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                return False
    return True


def _tail(proc: subprocess.CompletedProcess, n: int = 300) -> str:
    return " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-1:])[-n:]


class References:
    """Uninterrupted runs, one per length, computed once and shared by the trials."""

    def __init__(self, work: Path):
        self.work, self.states = work, {}

    def __call__(self, steps: int) -> dict[str, np.ndarray]:
        if steps not in self.states:
            run_dir = self.work / f"reference-{steps}"
            proc = run(command(run_dir, steps))
            if proc.returncode:
                raise RuntimeError(f"the uninterrupted {steps}-step run failed: {proc.stderr[-2000:]}")
            self.states[steps] = final_state(run_dir)
        return self.states[steps]


# --- kill -------------------------------------------------------------------------------------------------------


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass  # a line being written
    return steps


def kill_trial(work: Path, refs: References, rng: random.Random, index: int) -> Trial:
    """SIGKILL the run once it logged a random step past the first checkpoint, then rerun it."""
    run_dir = work / f"kill-{index}"
    at = rng.randint(EVERY + 1, STEPS - 1)
    proc = subprocess.Popen(command(run_dir, STEPS), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if at in _logged_steps(run_dir) and checkpoint_steps(run_dir):
            break
        time.sleep(0.02)
    killed_at = max(_logged_steps(run_dir), default=0)
    if proc.poll() is not None:
        return Trial("kill", f"step {at}", False, 0, f"the run ended (code {proc.returncode}) before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = max(checkpoint_steps(run_dir), default=0)
    resumed = run(command(run_dir, STEPS))
    ok = resumed.returncode == 0 and same_bits(final_state(run_dir), refs(STEPS))
    return Trial("kill", f"SIGKILL after step {killed_at}", ok, max(0, killed_at - saved),
                 "" if ok else f"exit {resumed.returncode}: {_tail(resumed)}")


# --- corrupt ----------------------------------------------------------------------------------------------------


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


CORRUPTIONS = {
    "flip 64 bytes in the largest data file": lambda d: _flip(_largest_data_file(d)),
    "truncate manifest.ocdbt": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(
        (d / "state" / "manifest.ocdbt").read_bytes()[:50]),
    "delete the largest data file": lambda d: _largest_data_file(d).unlink(),
    "flip bytes in the array metadata": lambda d: _flip(d / "state" / "_METADATA", n=16),
}


def corrupt_trial(work: Path, refs: References, variant: str) -> Trial:
    """Damage a finished run's newest checkpoint, rerun it longer, compare with an uninterrupted longer run."""
    run_dir = work / f"corrupt-{list(CORRUPTIONS).index(variant)}"
    first = run(command(run_dir, STEPS))
    if first.returncode:
        return Trial("corrupt", variant, False, 0, f"first run failed: {_tail(first)}")
    newest = checkpoint_steps(run_dir)[-1]
    CORRUPTIONS[variant](run_dir / "checkpoints" / str(newest))
    again = run(command(run_dir, STEPS + EVERY))
    reports = [line for line in again.stderr.splitlines() if f"checkpoint {newest}" in line and "corrupt" in line]
    ok = (again.returncode == 0 and len(reports) == 1
          and same_bits(final_state(run_dir), refs(STEPS + EVERY)))
    note = "" if ok else f"exit {again.returncode}, {len(reports)} report line(s): {_tail(again)}"
    return Trial("corrupt", variant, ok, EVERY, note)


# --- bad records ------------------------------------------------------------------------------------------------


def _tokenizer_dir(work: Path) -> Path:
    """A word-level tokenizer saved to disk (self-made: no download; a tiny vocabulary keeps the model tiny)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = work / "tokenizer"
    if not path.is_dir():
        words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(path)
    return path


BAD_RECORDS = {
    "invalid JSON": '{"prompt": "w1 w2", "chosen": "w3"',
    "200,000 nested [": "[" * 200_000,
    "lone surrogate": '{"prompt": "w1 \\ud800", "chosen": "w3 w4", "rejected": "w5"}',
    "missing field": '{"prompt": "w1 w2", "chosen": "w3 w4"}',
    "number as text": '{"prompt": "w1 w2", "chosen": 7, "rejected": "w5"}',
    "blank line": "   ",
}


def bad_record_trial(work: Path) -> Trial:
    """Good pairs with one bad record of each kind between them, and a UTF-8 BOM before the first record."""
    rng = random.Random(0)
    good = [json.dumps({"prompt": " ".join(f"w{rng.randrange(40)}" for _ in range(4)),
                        "chosen": " ".join(f"w{rng.randrange(40)}" for _ in range(3)),
                        "rejected": " ".join(f"w{rng.randrange(40)}" for _ in range(3))}) for _ in range(GOOD_RECORDS)]
    lines = list(good)
    for i, bad in enumerate(BAD_RECORDS.values()):
        lines.insert(2 + 3 * i, bad)
    data = work / "mixed.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    run_dir = work / "bad-record"
    proc = run(command(run_dir, 2, "--data.data-paths", str(data), "--data.tokenizer-path", str(_tokenizer_dir(work))))
    report_path = run_dir / "data_report.json"
    if proc.returncode or not report_path.is_file():
        return Trial("bad-record", f"{len(BAD_RECORDS)} bad of {len(lines)}", False, GOOD_RECORDS,
                     f"exit {proc.returncode}: {_tail(proc)}")
    report = json.loads(report_path.read_text())
    report = report.get("train", report) if isinstance(report, dict) else report
    kept = int(report.get("kept", 0))
    skipped = sum(report.get("skipped", {}).values())
    expected_bad = len(BAD_RECORDS) - 1  # a blank line is not a record: ignored, not counted
    ok = kept == GOOD_RECORDS and skipped >= expected_bad
    return Trial("bad-record", f"{len(BAD_RECORDS)} bad of {len(lines)}", ok, GOOD_RECORDS - kept,
                 "" if ok else f"kept {kept}/{GOOD_RECORDS}, skipped {report.get('skipped')}")


# --- non-finite -------------------------------------------------------------------------------------------------


NON_FINITE = {
    "learning rate nan": (("--optimizer.learning-rate", "nan"), "refused"),
    "learning rate inf": (("--optimizer.learning-rate", "inf"), "refused"),
    "learning rate 1e38": (("--optimizer.learning-rate", "1e38"), "finite"),
    "beta 1e30": (("--beta", "1e30"), "finite"),
}


def non_finite_trial(work: Path, variant: str) -> Trial:
    """A config that yields non-finite values: refused up front, or trained without writing a non-finite value."""
    flags, expect = NON_FINITE[variant]
    run_dir = work / f"non-finite-{list(NON_FINITE).index(variant)}"
    proc = run(command(run_dir, STEPS, *flags))
    finite = all_finite(run_dir)
    lost = sum(1 for _ in checkpoint_steps(run_dir)) if not finite else 0
    if expect == "refused":
        ok = proc.returncode == 2 and "finite" in proc.stderr and not checkpoint_steps(run_dir)
    else:  # trained: nothing non-finite written; if it stopped, it said why with a non-zero code
        ok = finite and (proc.returncode == 0 or (proc.returncode == 3 and "skipped" in proc.stderr))
    return Trial("non-finite", variant, ok, lost, f"exit {proc.returncode}: {_tail(proc)}")


# --- driver -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[Trial]:
    """Run the chosen scenarios, print the table and the ``fault_injection_survived=`` line; returns the trials."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="kill,corrupt,bad-record,non-finite")
    parser.add_argument("--trials", type=int, default=3, help="kill trials (random steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="one trial of each scenario")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only the variants naming one")
    parser.add_argument("--workdir", default="", help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    only = [x for x in args.only.split(",") if x]

    def pick(variants):
        chosen = [v for v in variants if not only or any(o in v for o in only)]
        return chosen[:1] if args.fast else chosen
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mojax-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    refs, rng, trials = References(work), random.Random(args.seed), []
    try:
        for scenario in scenarios:
            if scenario == "kill":
                trials += [kill_trial(work, refs, rng, i) for i in range(1 if args.fast else args.trials)]
            elif scenario == "corrupt":
                trials += [corrupt_trial(work, refs, v) for v in pick(CORRUPTIONS)]
            elif scenario == "bad-record":
                trials.append(bad_record_trial(work))
            elif scenario == "non-finite":
                trials += [non_finite_trial(work, v) for v in pick(NON_FINITE)]
            else:
                parser.error(f"unknown scenario {scenario!r}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'scenario':<11} {'variant':<40} {'survived':<8} {'lost':>4}  note")
    for t in trials:
        print(f"{t.scenario:<11} {t.variant:<40} {'yes' if t.survived else 'NO':<8} {t.lost:>4}  {t.note[:200]}")
    print()
    print(f"{'scenario':<11} {'trials':>6} {'survived':>8} {'lost':>5}   (lost: steps re-trained / good records dropped"
          " / non-finite checkpoints)")
    for scenario in dict.fromkeys(t.scenario for t in trials):
        group = [t for t in trials if t.scenario == scenario]
        print(f"{scenario:<11} {len(group):>6} {sum(t.survived for t in group):>8} {sum(t.lost for t in group):>5}")
    survived = sum(t.survived for t in trials) / max(1, len(trials))
    print(f"fault_injection_survived={survived:.3f}")
    return trials


if __name__ == "__main__":
    main()
