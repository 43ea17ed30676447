"""Benchmark: compile time and program size of the DPO training step against depth, scanned vs unrolled layers.

    nice -n 5 .venv/bin/python benchmarks/compile_depth.py                  # 2, 8, 32 layers; 3 rounds
    nice -n 5 .venv/bin/python benchmarks/compile_depth.py --layers 2 8 --rounds 1

Each measurement is one fresh process (JAX caches compiled programs in-process, so a second compile of the same
step in one process would be a cache hit): it builds a Llama-shaped decoder of the given depth with
``scan_layers`` on or off, the library's DPO step (``mojax.train.dpo_objective`` with cached reference log-probs,
``create_train_state`` / ``make_train_step`` / ``jit_train_step``, AdamW), then times ``lower()`` (tracing to
StableHLO) and ``compile()`` (XLA) separately, records the StableHLO and optimised-HLO text sizes, and runs the
step once for its loss. Scanned and unrolled runs of one depth must give the same loss (≤ 1e-5): the same
parameters, the same computation. Processes alternate over configurations in each round (``_bench.alternate``);
the table reports medians over rounds.

Model: d = 64, 4 heads (2 key/value), head 16, SwiGLU MLP 128, vocabulary 256, 2 pairs × 2 responses × 32
tokens: small, so compile time is dominated by the program's structure, not by its sizes.

The last line is ``scan_compile_ratio_32_vs_2=<x>``: the scanned step's lower+compile time at 32 layers over
that at 2 layers (target < 2; the unrolled ratio is in the table for comparison).

Diagnostics (``--modes``, ``--grad-only``): mode ``stacked`` is the scanned decoder with its block parameters
*stored* stacked ``[L, ...]`` (a subclass built here: one leaf per parameter kind, what the scan reads, so neither the
per-leaf stacking in the step nor per-layer optimizer leaves exist) — the layout the library does not have yet;
``--grad-only`` lowers the DPO loss and its gradient without the optimizer update, separating the model's share of
the program from AdamW's per-leaf work.

    nice -n 5 .venv/bin/python benchmarks/compile_depth.py --layers 2 32 --modes scan stacked unrolled
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _bench import alternate, format_table, headline, load_average, median

SIZES = dict(vocab_size=256, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128, max_positions=64)
PAIRS, SEQ = 2, 32


MODES = ("scan", "unrolled", "stacked")


def stacked_decoder(config, *, rngs):
    """A scanned :class:`mojax.models.Decoder` whose block parameters are stored stacked ``[L, ...]`` (the per-layer
    blocks stacked once at build time; logical axis names gain a leading unsharded layer axis). Same weights, same
    computation as the per-layer model built from the same seed."""
    from flax import nnx

    from mojax.models import Decoder

    class StackedDecoder(Decoder):
        def __init__(self, config, *, rngs):
            super().__init__(config, rngs=rngs)
            graphdef, state = Decoder._stacked_blocks(self)
            block = nnx.merge(graphdef, state)
            for _, var in nnx.iter_graph(block):
                if isinstance(var, nnx.Variable) and var.get_metadata().get("out_sharding") is not None:
                    var.set_metadata(out_sharding=(None, *var.get_metadata()["out_sharding"]))
            self.stack = block
            self.blocks = nnx.List([])

        def _stacked_blocks(self):
            return nnx.split(self.stack)

    return StackedDecoder(config.replace(scan_layers=True), rngs=rngs)


def measure(layers: int, scan: bool | str, *, sizes: dict | None = None, pairs: int = PAIRS, seq: int = SEQ,
            grad_only: bool = False) -> dict:
    """Lower, compile and run one DPO step of a ``layers``-deep decoder in this process; ``scan``: True/``"scan"``
    (scanned), False/``"unrolled"``, or ``"stacked"`` (scanned, parameters stored stacked: :func:`stacked_decoder`).

    Returns ``{"lower_s", "compile_s", "total_s", "cpu_s", "stablehlo_chars", "hlo_chars", "loss"}``: wall seconds
    of ``lower()``, ``compile()`` and both, the process CPU seconds of both (less sensitive to a shared machine's
    load), the StableHLO and optimised-HLO text sizes, and the step's loss.
    """
    import jax
    import numpy as np
    from flax import nnx

    from mojax.models import Decoder, DecoderConfig
    from mojax.train import (MeshConfig, OptimizerConfig, create_train_state, dpo_objective, jit_train_step,
                             make_mesh, make_optimizer, make_train_step)

    mode = {True: "scan", False: "unrolled"}.get(scan, scan)
    config = DecoderConfig(model_type="llama", num_layers=layers, scan_layers=mode != "unrolled", **(sizes or SIZES))
    build = (lambda: stacked_decoder(config, rngs=nnx.Rngs(0))) if mode == "stacked" else (
        lambda: Decoder(config, rngs=nnx.Rngs(0)))
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3))
    graphdef, state, shardings = create_train_state(build, tx, mesh=mesh)
    rng = np.random.default_rng(0)
    loss_mask = np.zeros((pairs, 2, seq), bool)
    loss_mask[..., seq // 4:] = True
    batch = {"input_ids": rng.integers(0, config.vocab_size, (pairs, 2, seq)).astype(np.int32),
             "attention_mask": np.ones((pairs, 2, seq), np.int32), "loss_mask": loss_mask,
             "ref_logps": rng.normal(-60.0, 1.0, (pairs, 2)).astype(np.float32)}
    objective = dpo_objective(ref_mode="cached")
    if grad_only:  # the loss and its gradient alone: no optimizer, no update guard
        def grads(state, batch, key):
            def f(params):
                return objective(nnx.merge(graphdef, params, state.rest), batch, key)[0]
            loss, g = jax.value_and_grad(f)(state.params)
            return g, {"loss": loss}
        step = jax.jit(grads)
    else:
        step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batch, mesh)
    key = jax.random.PRNGKey(0)
    c0, t0 = time.process_time(), time.perf_counter()
    lowered = step.lower(state, batch, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    c2, t2 = time.process_time(), time.perf_counter()
    _, metrics = compiled(state, batch, key)
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0, "cpu_s": c2 - c0,
            "stablehlo_chars": len(lowered.as_text()), "hlo_chars": len(compiled.as_text()),
            "loss": float(metrics["loss"])}


def _child(layers: int, mode: str, grad_only: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(layers), mode] + (["--grad-only"] if grad_only
                                                                                   else []),
                         check=True, capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", **_env()})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {layers} layers, {mode}: {json.dumps(result)}", file=sys.stderr, flush=True)  # progress
    return result


def _env() -> dict:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["scan", "unrolled"])
    parser.add_argument("--grad-only", action="store_true", help="loss + gradient only (no optimizer update)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child: layers, mode
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], grad_only=args.grad_only)))
        return
    modes = list(args.modes)
    configs = {f"{n}:{mode}": (lambda n=n, m=mode: _child(n, m, args.grad_only))
               for n in args.layers for mode in modes}
    what = "DPO loss + gradient" if args.grad_only else "DPO step"
    print(f"compile_depth: {what}, {SIZES}, {PAIRS} pairs x {SEQ} tokens; modes {modes}; {args.rounds} rounds; "
          f"{load_average()}")
    runs = alternate(configs, args.rounds)
    rows, med = [], {}
    for n in args.layers:
        losses = {}
        for mode in modes:
            r = runs[f"{n}:{mode}"]
            med[(n, mode)] = {k: median([x[k] for x in r]) for k in ("lower_s", "compile_s", "total_s", "cpu_s")}
            losses[mode] = r[0]["loss"]
            m = med[(n, mode)]
            rows.append([n, mode, m["lower_s"], m["compile_s"], m["total_s"], m["cpu_s"], r[0]["stablehlo_chars"],
                         r[0]["hlo_chars"], r[0]["loss"]])
        gap = max(losses.values()) - min(losses.values())
        if gap > 1e-5:
            raise SystemExit(f"compile_depth: the modes' losses differ at {n} layers by {gap:.3g}: {losses}")
    print(format_table(["layers", "mode", "lower s", "compile s", "lower+compile s", "CPU s", "StableHLO chars",
                        "optimised HLO chars", "loss"], rows))
    lo, hi = min(args.layers), max(args.layers)
    for mode in modes:
        print(f"{mode}: lower+compile at {hi} layers / {lo} layers = "
              f"{med[(hi, mode)]['total_s'] / med[(lo, mode)]['total_s']:.3g} wall, "
              f"{med[(hi, mode)]['cpu_s'] / med[(lo, mode)]['cpu_s']:.3g} CPU")
    print(f"finished with {load_average()}")
    if "scan" in modes:
        print(headline(f"scan_compile_ratio_{hi}_vs_{lo}",
                       med[(hi, "scan")]["total_s"] / med[(lo, "scan")]["total_s"]))


if __name__ == "__main__":
    main()
