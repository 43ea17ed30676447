"""Train-step time of COS-DPO LTR as the list length L, the batch B and the number of objectives K grow.

Run::

    python benchmarks/scaling.py                  # writes runs/scaling/<timestamp>/scaling.png
    python benchmarks/scaling.py --quick          # a seconds-long smoke run

Both methods use the experiment's ranker shapes (``experiments/cos_dpo_ltr.py``'s defaults, the paper's: 2 layers,
width 64, base width 128), wrapped as the augmentation network on a frozen base so that only the correction network
runs in a step (the same network, hence the same step cost, as the default ``concat`` ranker), and the engine's
jitted step, on random batches of the demo's feature width. Per setting: one compile, ``warmup`` steps, then the
median over ``repeats`` blocks of ``steps`` steps.

- W-COS-DPO: the ranker is conditioned on w (K inputs) and a step computes K listwise-DPO losses; one run serves
  the whole front, so its front cost is ``cos_steps × step``.
- DPO-LS: an unconditioned ranker, one run per weight; covering the simplex at the paper's K = 2 density (11 weights
  for 2 objectives) takes ``n(K) = 11·K/2`` runs, so its front cost is ``n(K) × run_steps × step``.

Last line: ``cos_dpo_k_slope=<x>``: the least-squares slope of W-COS-DPO's step time (process CPU time, robust to a
shared machine's load; wall time is in the tables) against K, as a fraction of its K = 2 step time per added objective
(0 = flat in K).
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from experiments._common import cli, make_run_dir  # noqa: E402
from experiments._report import markdown_table  # noqa: E402
from experiments._ltr_train import compiler_options, ranker_config  # noqa: E402
from experiments.cos_dpo_ltr import Config as ExperimentConfig  # noqa: E402
from mojax.models.ranker import AugmentedRanker, ListRanker  # noqa: E402
from mojax.simplex import simplex_sampler  # noqa: E402
from mojax.train.loop import TrainConfig  # noqa: E402
from mojax.train.mesh import MeshConfig, make_mesh  # noqa: E402
from mojax.train.objectives import (  # noqa: E402
    COSDPOSampling,
    ltr_cos_dpo_objective,
    ltr_scalarized_dpo_objective,
)
from mojax.train.state import create_train_state  # noqa: E402
from mojax.train.step import OptimizerConfig, jit_train_step, make_optimizer, make_train_step  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (Agg backend already selected by experiments._report)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Scaling benchmark settings; the varied axis takes each value with the others at their base value."""

    list_sizes: tuple[int, ...] = (16, 32, 64, 128)
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128)
    num_objectives: tuple[int, ...] = (2, 3, 5, 8)
    base_list_size: int = 32
    base_batch_size: int = 32
    base_num_objectives: int = 2
    num_features: int = 32
    steps: int = 20
    repeats: int = 3
    warmup: int = 3
    cos_steps: int = 300
    run_steps: int = 150
    seed: int = 0
    out: str | None = None


def get_config(quick: bool = False) -> Config:
    """Default grid, or a tiny one for a smoke run."""
    if quick:
        return Config(list_sizes=(8, 16), batch_sizes=(8, 16), num_objectives=(2, 3), base_list_size=8,
                      base_batch_size=8, num_features=8, steps=3, repeats=1, warmup=1)
    return Config()


def step_time(method: str, *, b: int, l: int, k: int, cfg: Config, mesh) -> tuple[float, float, float]:
    """(median wall s/step, median process-CPU s/step, compile s) of one method at batch b, list l, k objectives.

    CPU time is reported beside wall time because this benchmark often runs on a shared machine: wall time then
    measures the neighbours' load as much as the step, while the process's CPU time stays close to the step's cost
    (XLA's CPU thunks for these sizes run on one thread, so CPU time ≈ unloaded wall time).
    """
    exp_cfg = ExperimentConfig()
    f = cfg.num_features
    rng = np.random.default_rng(cfg.seed)
    base = ListRanker(ranker_config(exp_cfg, f, d_model=exp_cfg.base_d_model), rngs=nnx.Rngs(cfg.seed))
    cond = k if method == "w_cos_dpo" else 0
    model = AugmentedRanker(base, ListRanker(ranker_config(exp_cfg, f, d_model=exp_cfg.d_model, cond_dim=cond),
                                             rngs=nnx.Rngs(cfg.seed + 1)))
    tx = make_optimizer(OptimizerConfig(learning_rate=exp_cfg.learning_rate))
    batch = {"features": rng.normal(size=(b, l, f)).astype(np.float32), "where": np.ones((b, l), bool),
             "labels": (4 * rng.random((b, k, l))).astype(np.float32)}
    if method == "w_cos_dpo":
        objective = ltr_cos_dpo_objective(sampling=COSDPOSampling(num_objectives=k), beta=1.0)
        # the experiment draws w on the host each step (~10 µs of NumPy, outside the compiled step)
        batch["weights"] = simplex_sampler(k, 1.0, per_example=False)(rng, b)
    else:
        objective = ltr_scalarized_dpo_objective(weights=(1.0 / k,) * k, beta=1.0)
    graphdef, state, shardings = create_train_state(model, tx, mesh=mesh, rng=cfg.seed, wrt=AugmentedRanker.trainable,
                                                    hparams=objective.initial_hparams())
    key = np.asarray(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    options = TrainConfig(compiler_options=compiler_options()).compiler_options_dict()
    jitted = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batch, mesh, compiler_options=options)
    with jax.set_mesh(mesh):  # traced under the mesh, as mojax.train.fit traces its step
        step = jitted.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(cfg.warmup):
        state, _ = step(state, batch, key)
    jax.block_until_ready(state)
    walls, cpus = [], []
    for _ in range(cfg.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(cfg.steps):
            state, _ = step(state, batch, key)  # the host loop's per-step work: dispatch and batch transfer
        jax.block_until_ready(state)
        walls.append((time.perf_counter() - t0) / cfg.steps)
        cpus.append((time.process_time() - c0) / cfg.steps)
    return statistics.median(walls), statistics.median(cpus), compile_s


def main(cfg: Config) -> float:
    """Measure, print the tables, write the plot; returns W-COS-DPO's relative step-time slope in K."""
    mesh = make_mesh(MeshConfig())
    axes = {"L": [(cfg.base_batch_size, v, cfg.base_num_objectives) for v in cfg.list_sizes],
            "B": [(v, cfg.base_list_size, cfg.base_num_objectives) for v in cfg.batch_sizes],
            "K": [(cfg.base_batch_size, cfg.base_list_size, v) for v in cfg.num_objectives]}
    measured: dict[tuple[int, int, int], dict[str, tuple[float, float]]] = {}
    for settings in axes.values():
        for b, l, k in settings:
            if (b, l, k) not in measured:
                measured[(b, l, k)] = {m: step_time(m, b=b, l=l, k=k, cfg=cfg, mesh=mesh)
                                       for m in ("w_cos_dpo", "dpo_ls")}
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, "
          f"{jax.device_count()} {jax.default_backend()} device(s); median of {cfg.repeats}×{cfg.steps} steps")
    for axis, settings in axes.items():
        rows = []
        for b, l, k in settings:
            (wc, tc, cc), (wl, tl, cl) = measured[(b, l, k)]["w_cos_dpo"], measured[(b, l, k)]["dpo_ls"]
            row = {"B": b, "L": l, "K": k, "W-COS step CPU ms": 1e3 * tc, "DPO-LS step CPU ms": 1e3 * tl,
                   "W-COS step wall ms": 1e3 * wc, "DPO-LS step wall ms": 1e3 * wl,
                   "W-COS compile s": cc, "DPO-LS compile s": cl}
            if axis == "K":
                n = round(11 * k / 2)
                row |= {"DPO-LS runs n(K)": n, "W-COS front CPU s": cfg.cos_steps * tc,
                        "DPO-LS front CPU s": n * cfg.run_steps * tl}
            rows.append(row)
        print(f"\nvarying {axis}:")
        print(markdown_table(rows, formats={c: ".2f" for c in rows[0] if c.endswith(("ms", " s"))}))

    ks = np.asarray(cfg.num_objectives, float)
    k_rows = [measured[s] for s in axes["K"]]
    cos_t = np.asarray([r["w_cos_dpo"][1] for r in k_rows])  # CPU time per step (see step_time)
    ls_front = np.asarray([round(11 * k / 2) * cfg.run_steps * r["dpo_ls"][1] for k, r in zip(ks, k_rows)])
    cos_front = cfg.cos_steps * cos_t
    slope = float(np.polyfit(ks, cos_t, 1)[0] / cos_t[0]) if len(ks) > 1 else 0.0
    ls_slope = float(np.polyfit(ks, ls_front, 1)[0] / ls_front[0]) if len(ks) > 1 else 0.0

    run_dir = make_run_dir("scaling", cfg.out)
    fig, axs = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (axis, settings) in zip(axs, axes.items()):
        x = [dict(zip("BLK", s))[axis] for s in settings]
        for m, label in (("w_cos_dpo", "W-COS-DPO"), ("dpo_ls", "DPO-LS (one run)")):
            ax.plot(x, [1e3 * measured[s][m][1] for s in settings], "o-", label=label)
        ax.set_xlabel(axis)
        ax.set_ylabel("CPU ms per train step")
        if axis != "K":
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axs[3].plot(ks, cos_front, "o-", label=f"W-COS-DPO: 1 run × {cfg.cos_steps} steps")
    axs[3].plot(ks, ls_front, "o-", label=f"DPO-LS: 11·K/2 runs × {cfg.run_steps} steps")
    axs[3].set_xlabel("K")
    axs[3].set_ylabel("CPU seconds per front (steps only)")
    axs[3].grid(alpha=0.3)
    axs[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "scaling.png", dpi=110)
    plt.close(fig)
    print(f"\nplot: {run_dir / 'scaling.png'}")
    print(f"dpo_ls_front_k_slope={ls_slope:.3f}")
    print(f"cos_dpo_k_slope={slope:.4f}")
    return slope


if __name__ == "__main__":
    cli(get_config, main, description=__doc__)
