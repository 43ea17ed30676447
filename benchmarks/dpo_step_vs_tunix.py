"""Benchmark: DPO training, mojax's ``fit`` vs Google Tunix's ``DPOTrainer`` (PyPI ``google-tunix``), CPU, float32.

Run:  .venv/bin/python benchmarks/dpo_step_vs_tunix.py --peer-python ../tunix-venv/bin/python \\
          [--configs tiny,small] [--rounds 3] [--steps 3] [--warmup 1]

Tunix pins its own dependency set (transformers, qwix, grain, tensorflow-datasets, …), so it is best installed in
a venv of its own (``python3.11 -m venv tunix-venv && tunix-venv/bin/pip install google-tunix==0.1.7``); the peer's
worker process runs under ``--peer-python`` (default: this interpreter). The driver imports neither JAX nor torch.

What is compared, per config (``tiny``: d 64, 2 layers, 4/2 heads, MLP 256, vocabulary 1,024, rows of 16 + 48
tokens; ``small``: d 256, 4 layers, 8/4 heads of 32, MLP 1,024, vocabulary 32,000, rows of 64 + 192 tokens):

* the same model — a random Hugging Face ``LlamaForCausalLM`` (untied, RoPE base 10⁶, RMSNorm ε 1e-5) saved as
  safetensors by a ``prepare`` process; mojax loads it twice with :func:`mojax.models.load_hf` (policy and frozen
  reference in an :class:`mojax.train.AnchoredPolicy`), Tunix twice with its own
  ``tunix.models.llama3.params.create_model_from_safe_tensors`` (policy and ``ref_model``). The RoPE base is 10⁶
  because Tunix 0.1.7's Llama 3 attention calls ``apply_rope`` without the config's ``rope_theta`` (its default,
  10⁶, is what runs);
* the same data — 8 pairs per step of synthetic token ids (prompt P/2…P tokens, chosen response exactly R, rejected
  R/2…R, both ending in EOS), in the same order; Tunix gets its tokenized ``TrainingInput`` layout (prompt
  left-padded to P, responses right-padded to R), mojax the library layout ``[B, 2, P + R]`` right-padded: both run
  rows of P + R tokens;
* the same training — full fine-tuning, sigmoid DPO β 0.1, the reference model run every step (Tunix computes it in
  ``_prepare_inputs``; mojax ``ref_mode="model"``), ``optax.chain(clip_by_global_norm(1.0), adamw(lr, 0.9, 0.999,
  1e-8, weight_decay=0))`` constant lr, float32, each library's own trainer loop with its defaults (progress bar on,
  no checkpoints, metrics every step: mojax ``fit(..., TrainConfig(log_every=1))``, Tunix ``DPOTrainer.train``).

Timing (wall, and process CPU seconds between the same callbacks): each process runs ``--warmup + --steps`` steps; a step's time is the interval between consecutive
end-of-step callbacks (mojax ``on_metrics``, after the step's metrics reached the host; Tunix's
``TrainingHooks.on_train_step_end``, which Tunix fires one step late, after the next step is dispatched — in steady
state both intervals are one step), so batch preparation, the reference forward and the host loop are included on
both sides. The first ``--warmup`` intervals (compilation) are dropped. Compile: mojax's own ``compile_seconds``;
for Tunix, which compiles inside its first steps, the time to its first callback minus a steady step (approximate).
Each side in its own process (peak RSS from the kernel, ``_bench.run_measured``), alternating sides and rotating who
goes first for ``--rounds`` rounds; the speedup is the median over rounds of the per-round ratio of median steps.

Parity (printed per config): the mean chosen log-prob of the first batch under the initial weights (mojax's first
logged ``chosen_logps``; Tunix's ``dpo_loss_fn`` aux ``log_probs/chosen`` on ``_prepare_inputs`` of the same batch,
computed before training), and the loss trajectories, which agree only if gradients and updates agree.

Each config's line also gives the ratio of process CPU seconds per step (median over rounds), which survives a
loaded machine better than wall time (where a process mostly waits for a core).

The last line is ``speedup_vs_tunix=<min over configs of mojax pairs/s ÷ Tunix pairs/s>`` (wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench import MIB, format_table, headline, load_average, median, median_ratio, run_measured

CONFIGS = {
    # name: (vocab, d_model, layers, heads, kv_heads, head_dim, mlp, prompt P, response R)
    "tiny": (1024, 64, 2, 4, 2, 16, 256, 16, 48),
    "small": (32000, 256, 4, 8, 4, 32, 1024, 64, 192),
}
# The tiny config's steps take ~0.05 s and are noisy on a shared machine: it runs this many times --steps.
STEP_FACTOR = {"tiny": 10, "small": 1}
PAIRS = 8
BETA = 0.1
ROPE_THETA = 1_000_000.0
NORM_EPS = 1e-5


def make_examples(vocab: int, prompt: int, response: int, num: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``num`` pairs of token-id lists ``{prompt, chosen, rejected}``; responses end with EOS (= vocab − 1).

    Prompts are ``prompt/2 … prompt`` tokens, chosen responses exactly ``response``, rejected ``response/2 …
    response``, so every batch fills a row of ``prompt + response`` on at least one sequence.
    """
    import numpy as np

    if prompt < 2 or response < 4 or vocab < 3:
        raise ValueError(f"need prompt >= 2, response >= 4 and vocab >= 3, got {prompt}, {response}, {vocab}")
    rng = np.random.default_rng(seed)
    eos = vocab - 1
    draw = lambda n: [int(x) for x in rng.integers(1, vocab - 1, n)]  # noqa: E731  (no EOS inside)
    out = []
    for _ in range(num):
        p = int(rng.integers(prompt // 2, prompt + 1))
        r = int(rng.integers(response // 2, response + 1))
        out.append({"prompt": draw(p), "chosen": draw(response - 1) + [eos], "rejected": draw(r - 1) + [eos]})
    return out


def batches_for(config: str, steps: int) -> list[list[dict[str, list[int]]]]:
    """The examples of each of ``steps`` batches, identical in both processes."""
    vocab, *_, prompt, response = CONFIGS[config]
    ex = make_examples(vocab, prompt, response, PAIRS * steps)
    return [ex[i:i + PAIRS] for i in range(0, len(ex), PAIRS)]


# ------------------------------------------------------------------------------------------------------------------
# Roles, each run in its own process.


def role_prepare(args) -> dict:
    """Save a random Hugging Face Llama (safetensors) to ``args.model_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, d, layers, heads, kv, head_dim, mlp, prompt, response = CONFIGS[args.config]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, head_dim=head_dim, intermediate_size=mlp,
                         max_position_embeddings=prompt + response, rms_norm_eps=NORM_EPS, tie_word_embeddings=False,
                         rope_theta=ROPE_THETA, bos_token_id=vocab - 1, eos_token_id=vocab - 1, attention_bias=False,
                         mlp_bias=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.model_dir, safe_serialization=True)
    return {"params": sum(p.numel() for p in model.parameters())}


def mojax_batch(group, prompt: int, response: int, pad: int) -> dict:
    """The library batch layout (docs/contracts.md) of one group of pairs, right padded to ``prompt + response``."""
    import numpy as np

    t = prompt + response
    ids = np.full((PAIRS, 2, t), pad, np.int32)
    attn = np.zeros((PAIRS, 2, t), np.int32)
    loss = np.zeros((PAIRS, 2, t), bool)
    for b, e in enumerate(group):
        for n, resp in enumerate((e["chosen"], e["rejected"])):
            seq = e["prompt"] + resp
            ids[b, n, :len(seq)] = seq
            attn[b, n, :len(seq)] = 1
            loss[b, n, len(e["prompt"]):len(seq)] = True
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def tunix_batch(group, prompt: int, response: int, pad: int) -> dict:
    """Tunix's tokenized ``TrainingInput`` fields: prompt left-padded to ``prompt``, responses right-padded."""
    import numpy as np

    out = {k: np.full((PAIRS, prompt if k.startswith("prompt") else response), pad if k.endswith("ids") else 0,
                      np.int32)
           for k in ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
    for b, e in enumerate(group):
        p = e["prompt"]
        out["prompt_ids"][b, prompt - len(p):] = p
        out["prompt_mask"][b, prompt - len(p):] = 1
        for name in ("chosen", "rejected"):
            out[f"{name}_ids"][b, :len(e[name])] = e[name]
            out[f"{name}_mask"][b, :len(e[name])] = 1
    return out


def role_mojax(args) -> dict:
    import jax

    from _bench import peak_rss_bytes
    from mojax.models import load_hf
    from mojax.train import AnchoredPolicy, OptimizerConfig, TrainConfig, dpo_objective, fit

    vocab, *_, prompt, response = CONFIGS[args.config]
    total = args.warmup + args.steps * STEP_FACTOR[args.config]
    batches = [mojax_batch(g, prompt, response, pad=vocab - 1) for g in batches_for(args.config, total)]
    model = AnchoredPolicy(load_hf(args.model_dir), load_hf(args.model_dir))
    ends: list[float] = []
    cpus: list[float] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    result = fit(model, dpo_objective(beta=BETA, ref_mode="model"), iter(batches),
                 config=TrainConfig(steps=total, batch_size=PAIRS, log_every=1),
                 optimizer=OptimizerConfig(learning_rate=args.lr, max_grad_norm=1.0, weight_decay=0.0),
                 wrt=AnchoredPolicy.trainable,
                 on_metrics=lambda step, host: (ends.append(time.perf_counter()), cpus.append(time.process_time())))
    step_s = [b - a for a, b in zip([start] + ends[:-1], ends)]
    step_cpu_s = [b - a for a, b in zip([cpu0] + cpus[:-1], cpus)]
    return {"side": "mojax", "step_s": step_s[args.warmup:], "step_cpu_s": step_cpu_s[args.warmup:],
            "first_step_s": step_s[0],
            "compile_s": result.compile_seconds, "loss": [float(v) for v in result.metrics("loss")],
            "chosen_logps": [float(v) for v in result.metrics("chosen_logps")], "peak_rss_self": peak_rss_bytes(),
            "versions": {"jax": jax.__version__}}


def role_tunix(args) -> dict:
    import flax
    import jax
    import numpy as np
    import optax
    from tunix.models.llama3 import model as llama_lib
    from tunix.models.llama3 import params as llama_params
    from tunix.sft import hooks
    from tunix.sft.dpo import dpo_trainer

    from _bench import peak_rss_bytes

    vocab, d, layers, heads, kv, head_dim, mlp, prompt, response = CONFIGS[args.config]
    total = args.warmup + args.steps * STEP_FACTOR[args.config]
    batches = [tunix_batch(g, prompt, response, pad=vocab - 1) for g in batches_for(args.config, total)]
    config = llama_lib.ModelConfig(num_layers=layers, vocab_size=vocab, embed_dim=d, hidden_dim=mlp, num_heads=heads,
                                   head_dim=head_dim, num_kv_heads=kv, rope_theta=int(ROPE_THETA), norm_eps=NORM_EPS,
                                   weight_tying=False)
    policy = llama_params.create_model_from_safe_tensors(args.model_dir, config)
    reference = llama_params.create_model_from_safe_tensors(args.model_dir, config)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    trainer = dpo_trainer.DPOTrainer(
        model=policy, ref_model=reference, optimizer=tx,
        training_config=dpo_trainer.DPOTrainingConfig(eval_every_n_steps=10 ** 9, max_steps=total, beta=BETA,
                                                      label_smoothing=0.0))

    # Parity probe, before training: Tunix's own loss function on its own prepared first batch.
    _, aux = dpo_trainer.dpo_loss_fn(policy, trainer._prepare_inputs(dict(batches[0])), algorithm="dpo", beta=BETA)
    first_chosen = float(aux["log_probs/chosen"])

    class Timer(hooks.TrainingHooks):
        def __init__(self):
            self.ends, self.cpus, self.losses = [], [], {}

        def on_train_start(self, ctx):
            self.start, self.cpu0 = time.perf_counter(), time.process_time()

        def on_train_end(self, ctx):
            pass

        def on_train_step_start(self, ctx):
            pass

        def on_train_step_end(self, ctx, step, loss):
            self.ends.append(time.perf_counter())
            self.cpus.append(time.process_time())
            self.losses[int(step)] = float(np.asarray(loss))

        def on_eval_step_start(self, ctx):
            pass

        def on_eval_step_end(self, ctx, loss):
            pass

    timer = Timer()
    trainer.with_training_hooks(timer)
    trainer.train(iter(batches))
    step_s = [b - a for a, b in zip([timer.start] + timer.ends[:-1], timer.ends)]
    step_cpu_s = [b - a for a, b in zip([timer.cpu0] + timer.cpus[:-1], timer.cpus)]
    steady = median(step_s[args.warmup:])
    import importlib.metadata as md
    return {"side": "tunix", "step_s": step_s[args.warmup:], "step_cpu_s": step_cpu_s[args.warmup:],
            "first_step_s": step_s[0],
            "compile_s": step_s[0] - steady, "loss": [timer.losses[k] for k in sorted(timer.losses)],
            "chosen_logps": [first_chosen], "peak_rss_self": peak_rss_bytes(),
            "versions": {"tunix": md.version("google-tunix"), "jax": jax.__version__, "flax": flax.__version__}}


# ------------------------------------------------------------------------------------------------------------------
# Driver (imports neither JAX nor torch: it stays small, so it neither competes with nor inflates the children).


def child(role: str, args, config: str, model_dir: str) -> list[str]:
    python = args.peer_python if role == "tunix" else sys.executable
    return [python, __file__, "--role", role, "--config", config, "--model-dir", model_dir, "--steps",
            str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr)]


def run_config(args, config: str, tmp: str) -> dict:
    model_dir = os.path.join(tmp, config)
    prep = run_measured(child("prepare", args, config, model_dir), timeout=args.timeout).json_result()
    sides = ["mojax", "tunix"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        k = r % len(sides)
        for side in sides[k:] + sides[:k]:  # rotate who goes first
            m = run_measured(child(side, args, config, model_dir), timeout=args.timeout,
                             env={"JAX_PLATFORMS": "cpu"})
            res = m.json_result()
            res["peak_rss"] = m.peak_rss_bytes
            res["load"] = os.getloadavg()[0]
            runs[side].append(res)
            print(f"  [{config}] {side} round {r}: median step {median(res['step_s']):.3f} s, "
                  f"peak RSS {m.peak_rss_bytes / MIB:.0f} MiB, load {res['load']:.1f}", file=sys.stderr, flush=True)
    return {"params": prep["params"], "runs": runs}


def summarise(config: str, result: dict) -> tuple[list, float, dict]:
    runs = result["runs"]
    med = {side: [median(r["step_s"]) for r in runs[side]] for side in runs}
    ratios = [t / m for t, m in zip(med["tunix"], med["mojax"])]
    speedup = median_ratio(med["tunix"], med["mojax"])  # pairs/s ratio = Tunix step time / mojax step time
    rss = {side: max(r["peak_rss"] for r in runs[side]) for side in runs}
    mj, tx = runs["mojax"][0], runs["tunix"][0]
    n = min(len(mj["loss"]), len(tx["loss"]))
    cpu = {side: [median(r["step_cpu_s"]) for r in runs[side]] for side in runs}
    notes = {"rss_ratio": rss["mojax"] / rss["tunix"], "ratios": ratios, "steps_compared": n,
             "cpu_ratios": [t / m for t, m in zip(cpu["tunix"], cpu["mojax"])],
             "max_abs_loss_diff": max(abs(a - b) for a, b in zip(mj["loss"][:n], tx["loss"][:n])),
             "first_chosen_logps": (mj["chosen_logps"][0], tx["chosen_logps"][0]),
             "last_loss": (mj["loss"][n - 1], tx["loss"][n - 1]), "versions": tx["versions"]}
    rows = []
    for side in runs:
        step = median(med[side])
        cpu = median([median(r["step_cpu_s"]) for r in runs[side]])
        rows.append([config, f"{result['params'] / 1e6:.2f}M", side, PAIRS / step, step, cpu,
                     median([r["first_step_s"] for r in runs[side]]), median([r["compile_s"] for r in runs[side]]),
                     rss[side] / MIB])
    return rows, speedup, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (tiny: 10x)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per process (compilation)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--peer-python", default=sys.executable,
                        help="the Python whose environment has google-tunix (default: this one)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    parser.add_argument("--role", choices=["prepare", "mojax", "tunix"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        if args.role != "tunix":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        result = {"prepare": role_prepare, "mojax": role_mojax, "tunix": role_tunix}[args.role](args)
        print(json.dumps(result))
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("need --rounds, --steps and --warmup >= 1")
    if not os.access(args.peer_python, os.X_OK):
        parser.error(f"--peer-python {args.peer_python} is not an executable")
    print(f"DPO training, mojax fit vs Tunix DPOTrainer: batch {PAIRS} pairs, full fine-tuning, CPU float32; "
          f"{args.rounds} alternating rounds of {args.warmup} warm-up + {args.steps} timed steps (tiny x"
          f"{STEP_FACTOR['tiny']}); {load_average()} at start", flush=True)
    rows, speedups, notes = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            r, speedups[config], notes[config] = summarise(config, run_config(args, config, tmp))
            rows += r
    print(format_table(["config", "params", "side", "pairs/s", "step s", "CPU s/step", "first step s", "compile s",
                        "peak RSS MiB"], rows))
    for config in configs:
        n = notes[config]
        mc, tc = n["first_chosen_logps"]
        print(f"{config}: speedup {speedups[config]:.2f}x (median of per-round ratios "
              f"{', '.join(f'{x:.2f}' for x in n['ratios'])}); by process CPU s per step "
              f"{median(n['cpu_ratios']):.2f}x (load-robust); peak RSS mojax/Tunix {n['rss_ratio']:.2f}")
        print(f"{config}: parity: first-batch mean chosen logp mojax {mc:.5f} vs Tunix {tc:.5f} "
              f"(|diff| {abs(mc - tc):.2e}); max |loss diff| over {n['steps_compared']} steps "
              f"{n['max_abs_loss_diff']:.2e}; last loss {n['last_loss'][0]:.6f} vs {n['last_loss'][1]:.6f}")
        if abs(mc - tc) > 1e-4 * abs(tc) or n["max_abs_loss_diff"] > 1e-4:
            print(f"WARNING: {config}: the two sides disagree: they are not running the same model/data/step")
    print(f"peer: {notes[configs[0]]['versions']}")
    print(f"{load_average()} at end")
    print(headline("speedup_vs_tunix", min(speedups.values())))


if __name__ == "__main__":
    main()
