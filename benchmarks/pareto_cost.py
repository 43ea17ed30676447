"""Wall time to an 11-point Pareto front: W-COS-DPO (one conditioned run) vs DPO-LS (one run per weight).

Run::

    python benchmarks/pareto_cost.py                               # synthetic K = 2 task of `make demo`
    python benchmarks/pareto_cost.py --experiment.num-objectives 5
    python benchmarks/pareto_cost.py --experiment.vertex-fraction 0.18   # W-COS-DPO with the vertex-cover sampler
    python benchmarks/pareto_cost.py --experiment.data-path \\
        ../shared/data/mslr-web10k-sample/msn1.fold1.train.5k.txt.gz
    python benchmarks/pareto_cost.py --sweep-cos-steps 150 300 600 900 --sweep-run-steps 75 150 300  # + schedules
    python benchmarks/pareto_cost.py --quick                       # seconds-long smoke preset

Any option of ``experiments/cos_dpo_ltr.py``'s config applies under ``--experiment.``; its defaults are the paper's
settings (a fresh 2-layer ranker of width 64 with w concatenated to its input, base of width 128, ``auto`` label
normalisation). The base ranker is trained
once. Then ``repeats`` rounds alternate the two methods (the first method of each round rotates), each run cold —
its train step compiled again, under the load of the moment:

- **DPO-LS**: ``num_weights`` runs of ``run_steps`` steps (one compiled step for all weights); round r uses data
  order seed ``seed + 1 + r·7919``.
- **W-COS-DPO**: one weight-conditioned run in chunks of ``chunk_steps`` steps up to ``max_steps`` (default DPO-LS's
  total step count, beyond which it cannot be faster), its test front evaluated after every chunk (evaluation time
  not counted), with the same seed convention.

The target is the median DPO-LS hypervolume (reference 0) over the rounds. Round r's speedup is DPO-LS's time in that
round over W-COS-DPO's time to the first chunk at or above the target (compile included on both sides); the headline
is the median over rounds, with a round that never reaches the target ranked below every finite speedup (so the
headline is ``nan`` when the median round never got there). Also printed: the same at 99 % of the target, in process
CPU time, and excluding the compile, and the 4× budget: from the measured compile and per-step times, the number of
W-COS-DPO steps within which it must reach the target for a 4× speedup (and its HV there). The paper (COS-DPO
Table 1): 3.6× faster on MSLR with K = 5, 10.8× on GPT-2.

Last line: ``front_speedup_vs_dpo_ls=<median over rounds of DPO-LS seconds / W-COS-DPO seconds to parity>``.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import alternate, format_table, headline, load_average  # noqa: E402
from experiments._common import cli  # noqa: E402
from experiments._report import command_line  # noqa: E402
from experiments._ltr_train import Experiment  # noqa: E402
from experiments.cos_dpo_ltr import Config  # noqa: E402
from experiments.cos_dpo_ltr import get_config as experiment_config  # noqa: E402
from mojax.metrics import hypervolume  # noqa: E402
from mojax.simplex import simplex_weights  # noqa: E402

SEED_STRIDE = 7919  # seed offset between rounds: far from the W-COS chunk offsets (seed + steps done)
TARGET_SPEEDUP = 4.0  # issue 12's target: W-COS-DPO at DPO-LS's HV in a quarter of its wall time


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """The benchmark's protocol around one ``cos_dpo_ltr`` experiment config.

    Attributes:
      experiment: the task, models and methods (``experiments/cos_dpo_ltr.py``'s ``Config``).
      repeats: alternated rounds (each round = one cold DPO-LS front and one cold W-COS-DPO curve).
      chunk_steps: W-COS-DPO steps between front evaluations (the resolution of the step count to parity).
      max_steps: W-COS-DPO step budget per round; ``None`` = DPO-LS's total (``num_weights · run_steps``).
      sweep_cos_steps, sweep_run_steps: if given, also sweep fixed budgets under both learning-rate schedules
        (``constant``, and ``cosine`` decaying to 0 over each run's own budget): one fresh W-COS-DPO run per budget
        in ``sweep_cos_steps`` and one 11-run DPO-LS front per per-run budget in ``sweep_run_steps``, each
        evaluated once at its end (HV only, on the experiment's seed). E.g. ``--sweep-cos-steps 150 300 600 900
        --sweep-run-steps 75 150 300``.
    """

    experiment: Config
    repeats: int = 3
    chunk_steps: int = 75
    max_steps: int | None = None
    sweep_cos_steps: tuple[int, ...] = ()
    sweep_run_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if self.repeats < 1 or self.chunk_steps < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("repeats, chunk_steps and max_steps must be >= 1")
        if any(n < 1 for n in (*self.sweep_cos_steps, *self.sweep_run_steps)):
            raise ValueError("sweep budgets must be >= 1")


def get_config(quick: bool = False) -> BenchConfig:
    """The default protocol on the ``make demo`` task, or with ``quick`` a seconds-long smoke preset."""
    if quick:
        return BenchConfig(experiment=experiment_config(quick=True), repeats=2, chunk_steps=6)
    return BenchConfig(experiment=experiment_config())


@dataclasses.dataclass(frozen=True)
class Front:
    """One timed training of a method up to a front: wall/CPU seconds (compile included) and the front's HV."""

    steps: int
    seconds: float
    compile_seconds: float
    cpu_seconds: float
    compile_cpu_seconds: float
    hypervolume: float


def first_reaching(curve: Sequence[Front], target: float) -> Front | None:
    """The first point of a training curve whose hypervolume is at least ``target`` (``None`` if none is)."""
    return next((f for f in curve if f.hypervolume >= target), None)


def median_speedup(speedups: Sequence[float | None]) -> float:
    """Median over rounds, a round that never reached parity (``None``) ranking below every finite speedup.

    ``nan`` when the median falls on (or, for an even count, next to) such a round.
    """
    if not speedups:
        raise ValueError("no rounds")
    value = statistics.median(-math.inf if s is None else s for s in speedups)
    return float(value) if math.isfinite(value) else math.nan


def speedups_at(ls: Sequence[Front], cos: Sequence[Sequence[Front]], target: float) -> dict[str, list[float | None]]:
    """Per-round DPO-LS / W-COS-DPO ratios at the first W-COS chunk reaching ``target``: wall, CPU, and both
    excluding the compile each method paid in that round; also the W-COS step count (``None``: not reached)."""
    out: dict[str, list[float | None]] = {"steps": [], "wall": [], "cpu": [], "wall_excl_compile": [],
                                          "cpu_excl_compile": []}
    for a, curve in zip(ls, cos):
        b = first_reaching(curve, target)
        out["steps"].append(None if b is None else b.steps)
        for key, num, den in (
                ("wall", a.seconds, None if b is None else b.seconds),
                ("cpu", a.cpu_seconds, None if b is None else b.cpu_seconds),
                ("wall_excl_compile", a.seconds - a.compile_seconds,
                 None if b is None else b.seconds - b.compile_seconds),
                ("cpu_excl_compile", a.cpu_seconds - a.compile_cpu_seconds,
                 None if b is None else b.cpu_seconds - b.compile_cpu_seconds)):
            out[key].append(None if den is None else num / den)
    return out


def step_budget_for(ls: Sequence[Front], cos: Sequence[Sequence[Front]], factor: float = 4.0, *,
                    cpu: bool = False) -> dict[str, float]:
    """What a ``factor``× speedup leaves W-COS-DPO, from the measured compile and per-step times (medians over rounds).

    DPO-LS's front takes ``T`` seconds; W-COS-DPO pays its compile ``C`` and ``s`` seconds per step, so it must reach
    the target within ``n = (T / factor − C) / s`` steps (``n ≤ 0``: its compile alone exceeds the time allowed).
    Returned: ``dpo_ls_seconds``, ``cos_compile_seconds``, ``cos_step_ms``, ``dpo_ls_step_ms``, ``steps_allowed``
    and ``cap``, the speedup of a W-COS-DPO run of zero steps (``T / C``). ``cpu``: in process CPU time (≈ idle wall
    time for these single-threaded kernels, steadier on a loaded machine) instead of wall time.
    """
    def total(f: Front) -> float:
        return f.cpu_seconds if cpu else f.seconds

    def compile_(f: Front) -> float:
        return f.compile_cpu_seconds if cpu else f.compile_seconds

    t = statistics.median(total(f) for f in ls)
    ls_step = statistics.median((total(f) - compile_(f)) / f.steps for f in ls)
    c = statistics.median(compile_(curve[-1]) for curve in cos)
    step = statistics.median((total(curve[-1]) - compile_(curve[-1])) / curve[-1].steps for curve in cos)
    return {"dpo_ls_seconds": t, "cos_compile_seconds": c, "cos_step_ms": 1e3 * step, "dpo_ls_step_ms": 1e3 * ls_step,
            "steps_allowed": (t / factor - c) / step, "cap": t / c if c > 0 else math.inf}


def budget_sweep(c: Config, cos_budgets: Sequence[int], run_budgets: Sequence[int]) -> list[list]:
    """HV of fresh fixed-budget runs under a constant and a cosine-decayed step size: one row per schedule."""
    rows = []
    for schedule in ("constant", "cosine"):
        exp = Experiment(dataclasses.replace(c, lr_schedule=schedule))
        exp.train_base()  # deterministic: the same base ranker as the main protocol's
        weights = simplex_weights(exp.num_objectives, c.num_weights, seed=c.seed).astype(np.float32)
        ref = np.zeros(exp.num_objectives)
        row = [schedule]
        for n in cos_budgets:
            trained = exp.train_w_cos(c.beta, steps=n)
            row.append(float(hypervolume(exp.eval_points(exp.w_cos_diffs(trained, weights))[0], ref, maximize=True)))
        for n in run_budgets:
            runs = exp.run_dpo_ls(weights, steps=n)
            points = exp.eval_points([exp.scores(r, exp.test, exp.ref_test) for r in runs])[0]
            row.append(float(hypervolume(points, ref, maximize=True)))
        rows.append(row)
    return rows


def main(config: BenchConfig) -> float:
    """Print the rounds, the W-COS-DPO curve and the speedups; return the headline speedup."""
    c = dataclasses.replace(config.experiment, progress=False)
    if c.lr_schedule != "constant":
        raise ValueError("pareto_cost evaluates W-COS-DPO along one constant-step-size run; a decaying schedule "
                         "ends with its run, so each budget would be its own run (see docs/benchmarks-pareto-cost.md "
                         "for that sweep)")
    exp = Experiment(c)
    exp.train_base()
    k = exp.num_objectives
    weights = simplex_weights(k, c.num_weights, seed=c.seed).astype(np.float32)
    ref = np.zeros(k)
    max_steps = config.max_steps or c.num_weights * c.run_steps
    load_before = load_average()

    def progress(msg: str) -> None:  # stderr: stdout holds the tables and the headline
        print(f"[pareto_cost] {msg}", file=sys.stderr, flush=True)

    progress(f"{len(exp.train)} train / {len(exp.test)} test lists, K = {k}, label_norm {exp.label_norm}, "
             f"{config.repeats} rounds")

    def hv_of(diffs):
        return float(hypervolume(exp.eval_points(diffs)[0], ref, maximize=True))

    rounds = {"dpo_ls": 0, "w_cos_dpo": 0}

    def dpo_ls() -> Front:
        seed = c.seed + 1 + SEED_STRIDE * rounds["dpo_ls"]
        rounds["dpo_ls"] += 1
        exp.drop_compiled()
        runs = exp.run_dpo_ls(weights, seed=seed)
        front = Front(len(runs) * c.run_steps, sum(r.seconds for r in runs), sum(r.compile_seconds for r in runs),
                      sum(r.cpu_seconds for r in runs), sum(r.compile_cpu_seconds for r in runs),
                      hv_of([exp.scores(r, exp.test, exp.ref_test) for r in runs]))
        progress(f"DPO-LS round {rounds['dpo_ls']}: HV {front.hypervolume:.4f} in {front.seconds:.1f} s")
        return front

    def w_cos() -> list[Front]:
        seed = c.seed + 1 + SEED_STRIDE * rounds["w_cos_dpo"]
        rounds["w_cos_dpo"] += 1
        exp.drop_compiled()
        curve, trained, totals, steps = [], None, np.zeros(4), 0
        while steps < max_steps:
            chunk = min(config.chunk_steps, max_steps - steps)
            trained = exp.train_w_cos(c.beta, steps=chunk, resume=trained, seed=seed)
            totals += (trained.seconds, trained.compile_seconds, trained.cpu_seconds, trained.compile_cpu_seconds)
            steps += chunk
            curve.append(Front(steps, *totals.tolist(), hv_of(exp.w_cos_diffs(trained, weights))))
        progress(f"W-COS-DPO round {rounds['w_cos_dpo']}: HV " + " ".join(f"{p.hypervolume:.4f}" for p in curve)
                 + f" at every {config.chunk_steps} steps, {curve[-1].seconds:.1f} s")
        return curve

    results = alternate({"dpo_ls": dpo_ls, "w_cos_dpo": w_cos}, rounds=config.repeats)
    ls, cos = results["dpo_ls"], results["w_cos_dpo"]
    target = statistics.median(f.hypervolume for f in ls)
    at_parity = speedups_at(ls, cos, target)
    near = speedups_at(ls, cos, 0.99 * target)

    d = exp.train
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}; {load_before} at start, "
          f"{load_average()} at end")
    print(f"command: {command_line()}")
    print(f"data: {c.data_path or 'synthetic'} ({len(d)} train / {len(exp.test)} test queries), K = {k}, "
          f"{c.num_weights} weights, {c.run_steps} steps per DPO-LS run, batch {c.batch_size}, lr {c.learning_rate:g} "
          f"({c.lr_schedule}), {config.repeats} alternated cold rounds; W-COS-DPO evaluated every "
          f"{config.chunk_steps} steps up to {max_steps}; target = median DPO-LS HV {target:.4f}")

    def cell(x, fmt=".2f"):
        return "not reached" if x is None else format(x, fmt)

    print()
    print(format_table(
        ["round", "DPO-LS s (compile)", "DPO-LS CPU s", "DPO-LS HV", "W-COS steps to target",
         "W-COS s to target (compile)", "speedup (wall)", "speedup (CPU)", "steps to 99 %", "speedup at 99 %"],
        [[r, f"{a.seconds:.2f} ({a.compile_seconds:.2f})", a.cpu_seconds, a.hypervolume,
          cell(at_parity["steps"][r], "d"),
          "–" if (b := first_reaching(cos[r], target)) is None else f"{b.seconds:.2f} ({b.compile_seconds:.2f})",
          cell(at_parity["wall"][r]), cell(at_parity["cpu"][r]), cell(near["steps"][r], "d"), cell(near["wall"][r])]
         for r, a in enumerate(ls)]))
    print()
    ls_seconds = statistics.median(f.seconds for f in ls)
    rows = []
    for j, point in enumerate(cos[0]):
        hvs = [curve[j].hypervolume for curve in cos]
        secs = statistics.median(curve[j].seconds for curve in cos)
        compile_s = statistics.median(curve[j].compile_seconds for curve in cos)
        rows.append([point.steps, statistics.median(hvs), f"{min(hvs):.4f}–{max(hvs):.4f}",
                     statistics.median(hvs) / target, secs, compile_s, ls_seconds / secs])
    print(format_table(["W-COS steps", "HV (median)", "HV range over rounds", "HV / target", "s (median)",
                        "of which compile", "DPO-LS s / this"], rows))
    print()
    for label, values in (("CPU time", at_parity["cpu"]),
                          ("wall time excluding compile", at_parity["wall_excl_compile"]),
                          ("CPU time excluding compile", at_parity["cpu_excl_compile"])):
        print(f"speedup at the target in {label}: {median_speedup(values):.2f}")
    print(f"within 1 % of the target: {median_speedup(near['wall']):.2f}× in wall time, "
          f"{median_speedup(near['cpu']):.2f}× in CPU time, {median_speedup(near['cpu_excl_compile']):.2f}× in CPU "
          f"time excluding compile (W-COS steps per round: {near['steps']})")
    print(f"DPO-LS HV per round: {[round(f.hypervolume, 4) for f in ls]}; W-COS steps to the target per round: "
          f"{at_parity['steps']} (None = not reached within {max_steps})")
    for clock, cpu in (("wall", False), ("CPU", True)):
        b = step_budget_for(ls, cos, TARGET_SPEEDUP, cpu=cpu)
        allowed = [p for p in cos[0] if p.steps <= b["steps_allowed"]]
        reached = ("no evaluated chunk fits in it" if not allowed else
                   f"its median HV at {allowed[-1].steps} steps is "
                   f"{statistics.median(curve[len(allowed) - 1].hypervolume for curve in cos) / target:.1%} of the "
                   f"target")
        print(f"{TARGET_SPEEDUP:g}× budget in {clock} time: DPO-LS's front took {b['dpo_ls_seconds']:.2f} s "
              f"({b['dpo_ls_step_ms']:.2f} ms per step); W-COS-DPO compiles in {b['cos_compile_seconds']:.2f} s and "
              f"steps in {b['cos_step_ms']:.2f} ms, so {TARGET_SPEEDUP:g}× needs the target within "
              f"{b['steps_allowed']:.0f} steps ({b['steps_allowed'] / c.run_steps:.2f} DPO-LS runs; compile alone "
              f"caps the speedup at {b['cap']:.2f}×); " + reached)
    if config.sweep_cos_steps or config.sweep_run_steps:
        print()
        print("Fixed-budget sweep (each budget a fresh run, HV at its end; every budget shown, none selected):")
        print(format_table(["schedule", *(f"W-COS {n}" for n in config.sweep_cos_steps),
                            *(f"DPO-LS {n}/run" for n in config.sweep_run_steps)],
                           budget_sweep(c, config.sweep_cos_steps, config.sweep_run_steps)))
    speedup = median_speedup(at_parity["wall"])
    print(headline("front_speedup_vs_dpo_ls", speedup))
    return speedup


if __name__ == "__main__":
    cli(get_config, main, description=__doc__)
