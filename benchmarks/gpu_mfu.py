"""Benchmark: tokens/second and model FLOPs utilisation (MFU) of mojax's DPO step on one accelerator, bf16 compute.

Run on a machine with one GPU (or TPU core):

    .venv/bin/python benchmarks/gpu_mfu.py                       # ~1.1B Llama, 8 pairs × 1,024 tokens
    .venv/bin/python benchmarks/gpu_mfu.py --pairs 16 --remat    # bigger batch, per-block rematerialisation
    .venv/bin/python benchmarks/gpu_mfu.py --cpu-smoke           # scaled-down config on CPU: checks it runs

Needs ``jax[cuda12]`` (or the TPU build) instead of the CPU jaxlib. Not part of CI; without an accelerator (and
without ``--cpu-smoke``) it prints why and exits 0.

Model: a Llama-architecture decoder, d = 2,048, 16 layers, 32 query heads and 8 key/value heads (GQA), head 64,
SwiGLU MLP 8,192, vocabulary 32,000, untied — 1.10B parameters (Llama 3.2 1B's shape with a Llama 2 vocabulary).
Parameters float32 (mojax keeps master weights in float32), compute bfloat16 (``DecoderConfig(dtype=bfloat16)``),
log-softmax in float32. Step: sigmoid DPO with the reference model run in the step (``ref_mode="model"``, an
:class:`mojax.train.AnchoredPolicy` of two models), chunked log-probs, AdamW with clipping, via the library's own
``create_train_state`` / ``make_train_step`` / ``jit_train_step``. Data: random token ids, every sequence full
length (no padding, so every counted token is computed), responses after a 1/4-length prompt.

What is counted (model FLOPs, PaLM appendix B convention — what the model needs, not what the hardware executes):

* policy, forward + backward: ``6 · N · tokens`` with N the parameters that multiply activations (all but the
  token-embedding table; the unembedding is counted), plus attention ``12 · layers · heads · head_dim · T``
  per token;
* reference, forward only: ``2 · N · tokens`` plus ``4 · layers · heads · head_dim · T`` per token;
* tokens = pairs × 2 responses × T. Attention is counted over the full T × T square (as PaLM does), although the
  causal mask makes half of it unnecessary. Recomputation (rematerialised blocks, the chunked log-prob backward)
  is *not* counted: it is hardware work, not model work, so it lowers MFU.

MFU = counted FLOPs per step ÷ step time ÷ the device's peak dense bf16 FLOP/s, from :data:`PEAK_BF16` keyed by
``jax.devices()[0].device_kind`` (override with ``--peak-tflops``). Step time: median of ``--steps`` steps after
``--warmup`` untimed ones, compile reported separately. Published anchor: DPO/RLHF training of ~1–8B models reaches
about 20–40% MFU on H100s.

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
        return self.pairs * 2 * self.seq_len

    def step_flops(self) -> float:
        """Model FLOPs of one DPO step: policy forward+backward and reference forward (see the module docstring)."""
        attn_fwd = 4 * self.layers * self.heads * self.head_dim * self.seq_len  # per token: QKᵀ and AV, 2 FLOPs/MAC
        policy = (6 * self.matmul_params + 3 * attn_fwd) * self.tokens
        reference = (2 * self.matmul_params + attn_fwd) * self.tokens
        return float(policy + reference)


FULL = Shape(vocab=32000, d_model=2048, layers=16, heads=32, kv_heads=8, head_dim=64, mlp=8192, pairs=8,
             seq_len=1024)
SMOKE = Shape(vocab=1024, d_model=128, layers=2, heads=4, kv_heads=2, head_dim=32, mlp=256, pairs=2, seq_len=64)


def run(shape: Shape, *, remat: bool, chunk_size: int, steps: int, warmup: int, peak: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from mojax.models import Decoder, DecoderConfig
    from mojax.train import (AnchoredPolicy, MeshConfig, OptimizerConfig, create_train_state, dpo_objective,
                             jit_train_step, make_mesh, make_optimizer, make_train_step)
    from mojax.train.state import param_count

    config = DecoderConfig(model_type="llama", vocab_size=shape.vocab, d_model=shape.d_model,
                           num_layers=shape.layers, num_heads=shape.heads, num_kv_heads=shape.kv_heads,
                           head_dim=shape.head_dim, mlp_dim=shape.mlp, max_positions=shape.seq_len,
                           dtype=jnp.bfloat16, remat=remat)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-6))
    build = lambda: AnchoredPolicy(Decoder(config, rngs=nnx.Rngs(0)), Decoder(config, rngs=nnx.Rngs(0)))  # noqa: E731
    # (same init for both: the first loss is ln 2, a check that the step is the DPO step)
    graphdef, state, shardings = create_train_state(build, tx, mesh=mesh, wrt=AnchoredPolicy.trainable)
    n_params = param_count(state.params)
    # The FLOP count's N must be the model's: total = matmul kernels + token embedding + RMSNorm gains.
    expected = shape.matmul_params + shape.vocab * shape.d_model + (2 * shape.layers + 1) * shape.d_model
    if n_params != expected:
        raise RuntimeError(f"model has {n_params} parameters, the FLOP count assumes {expected}")

    rng = np.random.default_rng(0)
    b, t = shape.pairs, shape.seq_len
    loss_mask = np.zeros((b, 2, t), bool)
    loss_mask[..., t // 4:] = True
    batch = {"input_ids": rng.integers(0, shape.vocab, (b, 2, t)).astype(np.int32),
             "attention_mask": np.ones((b, 2, t), np.int32), "loss_mask": loss_mask}
    batch = jax.device_put(batch, jax.devices()[0])
    step = jit_train_step(make_train_step(graphdef, dpo_objective(ref_mode="model", chunk_size=chunk_size), tx),
                          shardings, batch, mesh)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
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
    flops = shape.step_flops()
    return {"device": jax.devices()[0].device_kind, "params": n_params, "compile_s": compile_s, "step_s": step_s,
            "tokens_per_s": shape.tokens / step_s, "tflops": flops / step_s / 1e12, "mfu": flops / step_s / peak,
            "losses": losses, "step_flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="a scaled-down config on CPU (checks it runs)")
    parser.add_argument("--pairs", type=int, help="pairs per step (default 8; smoke 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per response sequence (default 1024; smoke 64)")
    parser.add_argument("--layers", type=int, help="decoder layers (default 16)")
    parser.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
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
    print(f"DPO step MFU: {shape}; remat={args.remat}, chunk {args.chunk_size}; device {kind!r} "
          f"(peak bf16 {peak / 1e12:.0f} TFLOP/s); {load_average()}", flush=True)
    r = run(shape, remat=args.remat, chunk_size=args.chunk_size, steps=steps, warmup=warmup, peak=peak)
    if not all(math.isfinite(v) for v in r["losses"]):
        raise RuntimeError(f"non-finite DPO loss: {r['losses']}")
    print(format_table(
        ["device", "params", "tokens/step", "compile s", "step s", "tokens/s", "model TFLOP/s", "MFU"],
        [[r["device"], f"{r['params'] / 1e9:.3f}B", shape.tokens, r["compile_s"], r["step_s"], r["tokens_per_s"],
          r["tflops"], r["mfu"]]]))
    print(f"losses {', '.join(f'{v:.4f}' for v in r['losses'])}; counted {r['step_flops'] / 1e9:.4g} GFLOP/step")
    print(headline("mfu", r["mfu"]))


if __name__ == "__main__":
    main()
