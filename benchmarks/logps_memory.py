"""Benchmark: chunked sequence log-probs from hidden states vs full logits — memory and time, forward + backward.

Run:  .venv/bin/python benchmarks/logps_memory.py [--chunks 32,64,128,256,512] [--time-chunks 128] [--rounds 3]
      (``--smoke``: tiny shapes, to check the script in seconds)

Shapes: vocab V = 50,257, width D = 768, B × T = 8 × 1,024, float32. The function differentiated (with respect to the
hidden states ``[B, T, D]`` and the unembedding ``[D, V]``) is the sum of the B sequence log-probs:

* ``full``: ``mojax.losses.sequence_logps(hidden @ unembedding, targets, where=where)`` — materialises ``[B, T, V]``
  logits (1.65 GB in float32) and their gradient;
* ``chunk C``: ``mojax.losses.sequence_logps_from_hidden(hidden, unembedding, targets, where=where, chunk_size=C)``
  — a scan over token chunks whose body is rematerialised, so only ``[B, C, V]`` logits live at a time (forward
  and backward), at the price of recomputing the logits in the backward pass (4/3 of the matmul FLOPs).

Memory, two ways: (1) XLA's compiled ``memory_analysis()`` of the jitted ``value_and_grad`` — ``temp`` is the scratch
the program needs beyond its arguments and outputs (which are the same for every variant); compile only, cheap, exact
for what XLA allocates; (2) peak RSS of a separate process per variant that builds the inputs, compiles and runs the
step once (``_bench.run_measured``), also shown above a baseline process that only builds the inputs. ``--no-rss``
skips (2). Time: median over ``--rounds`` alternating rounds (one call per variant per round, rotating the order) of
the compiled step (no warm-up call: compilation is done beforehand), for ``full`` and each of ``--time-chunks``; the
ratio is the median of per-round ratios. Values and
gradients of every timed chunked variant are checked against ``full`` (max relative difference).

The last line is ``chunked_memory_ratio=<compiled temp of chunk --chunk-size ÷ compiled temp of full>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _bench import MIB, alternate, format_table, headline, load_average, median, median_ratio, run_measured

V, D, B, T = 50257, 768, 8, 1024


def inputs(seed: int = 0):
    """Hidden states ``[B, T, D]``, unembedding ``[D, V]`` (scaled so logits are O(1)), targets, and a mask with a
    prompt-like masked prefix per row."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, D), dtype=np.float32)
    unembedding = rng.standard_normal((D, V), dtype=np.float32) / np.float32(np.sqrt(D))
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    prompt = rng.integers(T // 64, T // 4, (B, 1))  # 16..255 masked tokens at T = 1024
    where = np.arange(T)[None] >= prompt
    return jnp.asarray(hidden), jnp.asarray(unembedding), jnp.asarray(targets), jnp.asarray(where)


def make_fn(chunk: int | None):
    """``value_and_grad`` (w.r.t. hidden and unembedding) of the summed sequence log-probs, jitted."""
    import jax
    import jax.numpy as jnp

    from mojax.losses import sequence_logps, sequence_logps_from_hidden

    def total(hidden, unembedding, targets, where):
        if chunk is None:
            logits = jnp.einsum("BTD,DV->BTV", hidden, unembedding)
            return jnp.sum(sequence_logps(logits, targets, where=where))
        return jnp.sum(sequence_logps_from_hidden(hidden, unembedding, targets, where=where, chunk_size=chunk))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def label(chunk: int | None) -> str:
    return "full" if chunk is None else f"chunk {chunk}"


def role_rss(chunk: int | None, baseline: bool) -> dict:
    """Child process: build the inputs (and unless ``baseline``, compile and run one step); report timings."""
    import jax

    args = inputs()
    jax.block_until_ready(args)
    if baseline:
        return {"baseline": True}
    fn = make_fn(chunk)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return {"compile_s": compile_s, "run_s": time.perf_counter() - start}


def rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", default="32,64,128,256,512", help="chunk sizes for the memory table")
    parser.add_argument("--time-chunks", default="128", help="chunk sizes timed against full logits")
    parser.add_argument("--chunk-size", type=int, default=128, help="the chunk size of the headline ratio")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-process peak RSS measurements")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (V 1000, D 64, 2×128 tokens)")
    parser.add_argument("--role", choices=["rss"], help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)  # 0 = full logits
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.smoke:
        global V, D, B, T
        V, D, B, T = 1000, 64, 2, 128

    if args.role == "rss":
        print(json.dumps(role_rss(args.chunk or None, args.baseline)))
        return

    chunks = [int(c) for c in args.chunks.split(",") if c]
    time_chunks = [int(c) for c in args.time_chunks.split(",") if c]
    if args.chunk_size not in chunks:
        chunks.append(args.chunk_size)
    variants: list[int | None] = [None] + sorted(set(chunks))
    print(f"sequence log-probs, value_and_grad w.r.t. hidden and unembedding; V={V}, D={D}, B×T={B}×{T}, float32; "
          f"full logits alone are {B * T * V * 4 / MIB:.0f} MiB; {load_average()} at start", flush=True)

    # (2) peak RSS, one process per variant — first, before this driver imports JAX.
    rss: dict[str, float] = {}
    if not args.no_rss:
        def child(chunk, baseline=False):
            cmd = [sys.executable, __file__, "--role", "rss", "--chunk", str(chunk or 0)] + ["--smoke"] * args.smoke
            return run_measured(cmd + (["--baseline"] if baseline else []), timeout=1800)

        rss["baseline"] = child(None, baseline=True).peak_rss_bytes
        for chunk in [None] + [c for c in variants if c is not None and c in (time_chunks + [args.chunk_size])]:
            m = child(chunk)
            rss[label(chunk)] = m.peak_rss_bytes
            print(f"  rss {label(chunk)}: {m.peak_rss_bytes / MIB:.0f} MiB ({m.json_result()}), {load_average()}",
                  file=sys.stderr, flush=True)

    import jax

    x = inputs()
    # (1) XLA's compiled memory analysis.
    compiled, temp = {}, {}
    for chunk in variants:
        compiled[chunk] = make_fn(chunk).lower(*x).compile()
        temp[chunk] = compiled[chunk].memory_analysis().temp_size_in_bytes

    # Time: alternating rounds. The programs are compiled already, so no warm-up call (each costs minutes here);
    # the first call's outputs are kept to compare the variants.
    timed = [None] + [c for c in time_chunks if c in compiled]
    outputs = {}

    def timer(chunk):
        def run():
            start = time.perf_counter()
            out = jax.block_until_ready(compiled[chunk](*x))
            elapsed = time.perf_counter() - start
            outputs.setdefault(chunk, out)
            return elapsed
        return run

    times = alternate({c: timer(c) for c in timed}, rounds=args.rounds)
    ref_val, (ref_gh, ref_gw) = outputs[None]

    rows = []
    for chunk in variants:
        row = [label(chunk), temp[chunk] / MIB, temp[chunk] / temp[None]]
        if chunk in times:
            t = median(times[chunk])
            ratio = median_ratio(times[chunk], times[None])
            val, (gh, gw) = outputs[chunk]
            err = max(rel_diff(val, ref_val), rel_diff(gh, ref_gh), rel_diff(gw, ref_gw))
            row += [t, ratio, err]
        else:
            row += [float("nan")] * 3
        key = label(chunk)
        row += [rss[key] / MIB if key in rss else float("nan"),
                (rss[key] - rss["baseline"]) / MIB if key in rss else float("nan")]
        rows.append(row)
    print(format_table(["variant", "XLA temp MiB", "temp ÷ full", "time s (median)", "time ÷ full",
                        "max rel diff vs full", "peak RSS MiB", "RSS above inputs MiB"], rows))
    if rss:
        print(f"baseline process (JAX + inputs only): {rss['baseline'] / MIB:.0f} MiB peak RSS")
    print(f"{args.rounds} rounds; {load_average()} at end")
    print(headline("chunked_memory_ratio", temp[args.chunk_size] / temp[None]))


if __name__ == "__main__":
    main()
