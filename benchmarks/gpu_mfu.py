"""Benchmark: tokens/second and model FLOPs utilisation (MFU) of mojax's DPO step on one accelerator, bf16 compute.

Run on a machine with one GPU (or TPU core):

    .venv/bin/python benchmarks/gpu_mfu.py                                  # ~1.1B Llama, 16 pairs packed in rows of 1,024
    .venv/bin/python benchmarks/gpu_mfu.py --remat-policy dots_saveable     # keep the matmuls: less recompute, more memory
    .venv/bin/python benchmarks/gpu_mfu.py --layout padded                  # the same pairs, one padded row per sequence
    .venv/bin/python benchmarks/gpu_mfu.py --cpu-smoke                      # scaled-down config on CPU: checks it runs

Needs ``jax[cuda12]`` (or the TPU build) instead of the CPU jaxlib. Without an accelerator (and without
``--cpu-smoke``) it prints why and ``mfu=nan``, exit 0; ``tests/benchmarks/test_gpu_mfu.py`` runs the smoke config.

Model: a Llama-architecture decoder, d = 2,048, 16 layers, 32 query heads and 8 key/value heads (GQA), head 64,
SwiGLU MLP 8,192, vocabulary 32,000, untied — 1.10B parameters (Llama 3.2 1B's shape with a Llama 2 vocabulary).
The accelerator options of issue 13, all on by default:

* attention through ``jax.nn.dot_product_attention`` (``DecoderConfig(attention_impl="fused")``: cuDNN flash
  attention on a GPU in bf16, with the causal hint; ``--attention einsum`` for the reference path);
* the 16 blocks under one ``lax.scan`` (``scan_layers=True``), each rematerialised in the backward pass
  (``--remat-policy``, default ``nothing_saveable``; ``none`` to keep every activation);
* packed rows (``mojax.data.pack_examples``): each sequence (prompt + response) is a segment of a row of
  ``--seq-len`` tokens (attention confined to the segment, positions restarting per segment); ``--layout padded``
  gives each sequence its own padded row instead, for comparison;
* bf16 compute (``dtype=bfloat16``; norms, softmax and log-probs in float32), parameters and AdamW state float32
  (``--param-dtype bfloat16`` stores parameters in bf16 with float32 master weights where this mojax has it).

Step: sigmoid DPO with the reference model run in the step (``ref_mode="model"``, an
:class:`mojax.train.AnchoredPolicy` of two models), compact chunked log-probs, AdamW with clipping, via the
library's ``create_train_state`` / ``make_train_step`` / ``jit_train_step``. Data: ``--pairs`` random pairs, prompt
and each response of length uniform in [T/8, T/2] (seeded), so sequences are 1/4 to 1 row long.

What is counted (model FLOPs, PaLM appendix B convention — what the model needs, not what the hardware executes),
per real (non-padding) token of a sequence of length L:

* policy, forward + backward: ``6 · N`` with N the parameters that multiply activations (all but the token-embedding
  table; the unembedding is counted at every token), plus attention ``12 · layers · heads · head_dim · L``;
* reference, forward only: ``2 · N`` plus ``4 · layers · heads · head_dim · L``.

Attention is counted over each sequence's own L × L square (as PaLM counts the T × T square), not over the packed
row, and not halved for causality. Padding, rematerialisation (recomputed blocks, the chunked log-prob backward)
and the cross-segment blocks a kernel computes and masks are *not* counted: they are hardware work, so they lower
MFU. Tokens/second counts real tokens (prompt and responses, both sides of each pair).

MFU = counted FLOPs per step ÷ step time ÷ the device's peak dense bf16 FLOP/s, from :data:`PEAK_BF16` keyed by
``jax.devices()[0].device_kind`` (override with ``--peak-tflops``): H100 SXM and H200 989 TFLOP/s, H100 PCIe 756,
A100 312, … (vendors' datasheets, without sparsity). Step time: median of ``--steps`` steps after ``--warmup``
untimed ones, compile reported separately. Published anchor: DPO/RLHF training of ~1–8B models reaches about
20–40% MFU on H100s.

The last line is ``mfu=<fraction>`` (``nan`` when the peak of the device is unknown, e.g. on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from _bench import format_table, headline, load_average, median

# Dense (no sparsity) bf16 tensor throughput in FLOP/s, from the vendors' datasheets. Matched against JAX's
# device_kind by the first entry whose every word occurs in it, so more specific keys come first.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918e12),
)


def peak_flops(device_kind: str) -> float:
    """The device's peak dense bf16 FLOP/s from :data:`PEAK_BF16`, or NaN if it is not listed (CPU included)."""
    for key, value in PEAK_BF16:
        if all(word in device_kind for word in key.split()):
            return value
    return math.nan


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shape:
    """The model and batch sizes the FLOP count needs."""

    vocab: int
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    pairs: int
    seq_len: int

    @property
    def matmul_params(self) -> int:
        """Parameters that multiply activations: attention and MLP kernels, and the unembedding (norms excluded)."""
        d, h = self.d_model, self.head_dim
        attn = d * self.heads * h * 2 + d * self.kv_heads * h * 2  # q, o; k, v
        mlp = 3 * d * self.mlp
        return self.layers * (attn + mlp) + d * self.vocab

    @property
    def tokens(self) -> int:
        """Tokens of a step whose every sequence is ``seq_len`` long (the upper bound of :func:`make_examples`)."""
        return self.pairs * 2 * self.seq_len

    def step_flops(self) -> float:
        """Model FLOPs of one DPO step whose every sequence is ``seq_len`` long: policy forward+backward and
        reference forward (module docstring); ``counted_flops(shape, [seq_len] * tokens // seq_len)``."""
        attn_fwd = 4 * self.layers * self.heads * self.head_dim * self.seq_len  # per token: QKᵀ and AV, 2 FLOPs/MAC
        policy = (6 * self.matmul_params + 3 * attn_fwd) * self.tokens
        reference = (2 * self.matmul_params + attn_fwd) * self.tokens
        return float(policy + reference)


FULL = Shape(vocab=32000, d_model=2048, layers=16, heads=32, kv_heads=8, head_dim=64, mlp=8192, pairs=16,
             seq_len=1024)
SMOKE = Shape(vocab=1024, d_model=128, layers=2, heads=4, kv_heads=2, head_dim=32, mlp=256, pairs=4, seq_len=64)


def make_examples(shape: Shape, seed: int = 0) -> list:
    """``shape.pairs`` random pairs: prompt and each response of length uniform in [T/8, T/2], EOS-free ids."""
    import numpy as np

    from mojax.data import TokenizedExample

    rng = np.random.default_rng(seed)
    lo, hi = max(1, shape.seq_len // 8), shape.seq_len // 2
    draw = lambda: rng.integers(1, shape.vocab - 1, int(rng.integers(lo, hi + 1))).astype(np.int32)  # noqa: E731
    return [TokenizedExample(prompt_ids=draw(), response_ids=(draw(), draw()), labels=np.array([[1.0, 0.0]]))
            for _ in range(shape.pairs)]


def sequence_lengths(examples) -> list[int]:
    """Length (prompt + response) of every sequence of every pair."""
    return [len(e.prompt_ids) + len(r) for e in examples for r in e.response_ids]


def counted_flops(shape: Shape, lengths) -> float:
    """Model FLOPs of one DPO step over sequences of these lengths (module docstring): Σ L · (8N + 16·l·H·h·L)."""
    attn = 16 * shape.layers * shape.heads * shape.head_dim
    return float(sum(n * (8 * shape.matmul_params + attn * n) for n in lengths))


def build_batch(examples, shape: Shape, layout: str) -> dict:
    """The examples as a packed batch (segments of rows of T) or a padded one (``[B, 2, T]``)."""
    import numpy as np

    from mojax.data.packing import PackConfig, pack_examples

    t = shape.seq_len
    if layout == "packed":
        # at least 2 tokens per segment (each sequence is >= T/4 long), so T/8 segments always suffice
        return pack_examples(examples, PackConfig(row_length=t, max_segments=max(2, min(16, t // 8))))
    if layout != "padded":
        raise ValueError(f"layout must be 'packed' or 'padded', got {layout!r}")
    b = len(examples)
    ids = np.zeros((b, 2, t), np.int32)
    attention = np.zeros((b, 2, t), np.int32)
    loss = np.zeros((b, 2, t), bool)
    for i, e in enumerate(examples):
        for n, r in enumerate(e.response_ids):
            seq = np.concatenate([e.prompt_ids, r])
            ids[i, n, :len(seq)] = seq
            attention[i, n, :len(seq)] = 1
            loss[i, n, len(e.prompt_ids):len(seq)] = True
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def run(shape: Shape, *, attention: str = "fused", scan: bool = True, remat_policy: str = "nothing_saveable",
        layout: str = "packed", param_dtype: str = "float32", chunk_size: int = 256, steps: int, warmup: int,
        peak: float) -> dict:
    """Build the model and batch, compile the DPO step, time ``steps`` steps after ``warmup``; returns the figures."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mojax.models import Decoder, DecoderConfig
    from mojax.train import (AnchoredPolicy, MeshConfig, OptimizerConfig, create_train_state, dpo_objective,
                             jit_train_step, make_mesh, make_optimizer, make_train_step)
    from mojax.train.state import param_count

    extra = {}
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-6))
    if param_dtype != "float32":
        if "param_dtype" not in {f.name for f in dataclasses.fields(DecoderConfig)}:
            raise SystemExit(f"gpu_mfu: --param-dtype {param_dtype} needs a mojax with DecoderConfig.param_dtype")
        from mojax.train import master_weights

        extra["param_dtype"] = jnp.dtype(param_dtype)
        tx = master_weights(tx)
    config = DecoderConfig(model_type="llama", vocab_size=shape.vocab, d_model=shape.d_model,
                           num_layers=shape.layers, num_heads=shape.heads, num_kv_heads=shape.kv_heads,
                           head_dim=shape.head_dim, mlp_dim=shape.mlp, max_positions=shape.seq_len,
                           dtype=jnp.bfloat16, attention_impl=attention, scan_layers=scan, remat_policy=remat_policy,
                           **extra)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    build = lambda: AnchoredPolicy(Decoder(config, rngs=nnx.Rngs(0)), Decoder(config, rngs=nnx.Rngs(0)))  # noqa: E731
    # (same init for both: the first loss is ln 2, a check that the step is the DPO step)
    graphdef, state, shardings = create_train_state(build, tx, mesh=mesh, wrt=AnchoredPolicy.trainable)
    n_params = param_count(state.params)
    # The FLOP count's N must be the model's: total = matmul kernels + token embedding + RMSNorm gains.
    expected = shape.matmul_params + shape.vocab * shape.d_model + (2 * shape.layers + 1) * shape.d_model
    if n_params != expected:
        raise RuntimeError(f"model has {n_params} parameters, the FLOP count assumes {expected}")

    examples = make_examples(shape)
    lengths = sequence_lengths(examples)
    host = build_batch(examples, shape, layout)
    slots = int(host["input_ids"].size)
    batch = jax.device_put(host, jax.devices()[0])
    step = jit_train_step(make_train_step(graphdef, dpo_objective(ref_mode="model", chunk_size=chunk_size), tx),
                          shardings, batch, mesh)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    times, losses = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        losses.append(float(metrics["loss"]))  # blocks until the step is done
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = median(times)
    flops = counted_flops(shape, lengths)
    tokens = sum(lengths)
    memory = compiled.memory_analysis()
    return {"device": jax.devices()[0].device_kind, "params": n_params, "compile_s": compile_s, "step_s": step_s,
            "tokens": tokens, "slots": slots, "rows": int(host["input_ids"].reshape(-1, shape.seq_len).shape[0]),
            "tokens_per_s": tokens / step_s, "tflops": flops / step_s / 1e12, "mfu": flops / step_s / peak,
            "losses": losses, "step_flops": flops, "packed": "segment_ids" in host,
            "temp_bytes": int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1,
            "config": {"attention_impl": config.attention_impl, "scan_layers": config.scan_layers,
                       "remat_policy": config.remat_policy, "dtype": str(jnp.dtype(config.dtype))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="a scaled-down config on CPU (checks it runs)")
    parser.add_argument("--pairs", type=int, help="pairs per step (default 16; smoke 4)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default 1024; smoke 64)")
    parser.add_argument("--layers", type=int, help="decoder layers (default 16)")
    parser.add_argument("--attention", choices=["fused", "einsum", "auto"], default="fused")
    parser.add_argument("--no-scan", action="store_true", help="run the blocks in a Python loop instead of a scan")
    parser.add_argument("--remat-policy", default="nothing_saveable",
                        help="per-block rematerialisation (a DecoderConfig.remat_policy name; 'none' to keep all)")
    parser.add_argument("--layout", choices=["packed", "padded"], default="packed")
    parser.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per log-prob chunk")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="override the device's peak dense bf16 TFLOP/s")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import jax

    if args.cpu_smoke:
        jax.config.update("jax_platforms", "cpu")
        base, steps, warmup = SMOKE, min(args.steps, 3), min(args.warmup, 1)
    else:
        if jax.default_backend() == "cpu":
            print("gpu_mfu: no GPU or TPU found (jax backend is cpu); run on an accelerator, or pass --cpu-smoke "
                  "for a scaled-down CPU check")
            print(headline("mfu", math.nan))
            return
        base, steps, warmup = FULL, args.steps, args.warmup
    shape = dataclasses.replace(base, **{k: v for k, v in (("pairs", args.pairs), ("seq_len", args.seq_len),
                                                            ("layers", args.layers)) if v is not None})
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(kind)
    print(f"DPO step MFU: {shape}; attention {args.attention}, scan {not args.no_scan}, remat {args.remat_policy}, "
          f"{args.layout} rows, params {args.param_dtype}, compute bfloat16, chunk {args.chunk_size}; device {kind!r} "
          f"(peak bf16 {peak / 1e12:.0f} TFLOP/s); {load_average()}", flush=True)
    r = run(shape, attention=args.attention, scan=not args.no_scan, remat_policy=args.remat_policy,
            layout=args.layout, param_dtype=args.param_dtype, chunk_size=args.chunk_size, steps=steps, warmup=warmup,
            peak=peak)
    if not all(math.isfinite(v) for v in r["losses"]):
        raise RuntimeError(f"non-finite DPO loss: {r['losses']}")
    print(format_table(
        ["device", "params", "rows", "real tokens", "padding", "compile s", "step s", "tokens/s", "model TFLOP/s",
         "MFU", "XLA temp GiB"],
        [[r["device"], f"{r['params'] / 1e9:.3f}B", r["rows"], r["tokens"], f"{1 - r['tokens'] / r['slots']:.1%}",
          r["compile_s"], r["step_s"], r["tokens_per_s"], r["tflops"], r["mfu"], r["temp_bytes"] / 2 ** 30]]))
    print(f"losses {', '.join(f'{v:.4f}' for v in r['losses'])}; counted {r['step_flops'] / 1e9:.4g} GFLOP/step")
    print(headline("mfu", r["mfu"]))


if __name__ == "__main__":
    main()
