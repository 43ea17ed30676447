"""Benchmark: one DPO training step, mojax (jitted, packed log-probs) vs TRL's ``DPOTrainer``, CPU, float32.

Run:  .venv/bin/python benchmarks/dpo_step_vs_trl.py [--configs tiny,small] [--rounds 2] [--steps 6]
      (needs the ``bench`` extra: ``pip install -e '.[bench]'`` — torch, trl)

What is compared, per model config (``tiny``: GPT-2 d=64, 2 layers, vocab 1,000, T=64; ``small``: GPT-2 d=384,
4 layers, 6 heads, the real 50,257 vocabulary, 26.5M parameters, T=256):

* the same model — a random ``GPT2LMHeadModel`` saved with ``save_pretrained``; TRL loads that directory (policy and
  its own reference copy), mojax loads it twice with :func:`mojax.models.load_hf` (policy and frozen reference in an
  :class:`mojax.train.AnchoredPolicy`), so weights are identical;
* the same data — 8 pairs per step, synthetic token ids (prompt 16–64 tokens, up to T/4, chosen response filling the sequence
  to T, rejected response to between T/2 and T, both ending in EOS), given to TRL as text over a word-level tokenizer
  whose token ``t<i>`` is id ``i`` (so TRL tokenises to exactly these ids), in order (``train_sampling_strategy=
  "sequential"``); every batch pads to T on both sides;
* the same step — sigmoid DPO, beta 0.1, the reference model run in every step (TRL's default; mojax
  ``ref_mode="model"``), AdamW (lr ``--lr``, betas 0.9/0.999, eps 1e-8, no weight decay, constant schedule) after
  global-norm clipping at 1.0, float32, no dropout, no gradient checkpointing.

Each side runs in its own process (peak RSS per process, read by the kernel; see ``_bench.run_measured``), both
with ``OMP_WAIT_POLICY=PASSIVE`` (on a shared machine torch's spinning OpenMP threads otherwise slow TRL by up to
~80×; ``--omp-wait-policy ''`` to leave it unset): mojax
compiles once (timed separately), runs ``--warmup`` untimed steps then ``--steps`` timed steps
(``block_until_ready`` on the loss each step, host batch transfer included); TRL runs ``--warmup + --steps`` steps and
a callback times each step between consecutive ``on_step_end`` events (data collation included — it is part of the
trainer). Processes alternate mojax/TRL for ``--rounds`` rounds; the table reports medians, and the speedup is the
median over rounds of the per-round ratio of medians. Both sides log each step's loss and mean chosen log-prob: the
script checks they agree (same weights, tokens and updates), as a guard that the two do the same work.

mojax's log-probs are the library default (``dpo_objective(compact=True)``): logits only at loss positions, packed
into chunks of ``B·N·chunk_size`` rows (:func:`mojax.losses.compact_sequence_logps_from_hidden`). ``--dense`` adds a
third contender, ``mojax-dense``: the same step with ``compact=False`` (every position through the LM head, as TRL
does on CPU), to show what the packing is worth in the same run.

The last line is ``speedup_vs_trl=<min over configs of mojax pairs/s ÷ TRL pairs/s>`` (the library's default step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench import (MIB, format_table, headline, load_average, median, median_ratio, run_measured)

CONFIGS = {
    # name: (vocab, d_model, layers, heads, T)
    "tiny": (1000, 64, 2, 4, 64),
    "small": (50257, 384, 4, 6, 256),
}
# The tiny config's steps take ~0.1 s and are noisy on a shared machine: it runs this many times --steps.
STEP_FACTOR = {"tiny": 10, "small": 1}
PAIRS = 8
BETA = 0.1


# ------------------------------------------------------------------------------------------------------------------
# Shared data: token ids, identical for both sides.


def make_examples(vocab: int, seq_len: int, num: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``num`` pairs of token-id lists ``{prompt, chosen, rejected}``; responses end with EOS (= vocab − 1).

    The chosen sequence (prompt + chosen) is exactly ``seq_len`` long, so every batch pads to ``seq_len``.
    """
    import numpy as np

    if seq_len < 8 or vocab < 3:
        raise ValueError(f"need seq_len >= 8 and vocab >= 3, got {seq_len}, {vocab}")
    rng = np.random.default_rng(seed)
    eos = vocab - 1
    out = []
    for _ in range(num):
        p = int(rng.integers(min(16, seq_len // 4), min(64, seq_len // 4) + 1))
        r = int(rng.integers(seq_len // 2, seq_len + 1)) - p
        draw = lambda n: [int(x) for x in rng.integers(1, vocab - 1, n)]  # noqa: E731  (no EOS inside)
        out.append({"prompt": draw(p), "chosen": draw(seq_len - p - 1) + [eos], "rejected": draw(r - 1) + [eos]})
    return out


def to_text(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


# ------------------------------------------------------------------------------------------------------------------
# Roles, each run in its own process.


def role_prepare(args) -> dict:
    """Save a random GPT-2 and a word-level tokenizer (token ``t<i>`` ↔ id ``i``) to ``args.model_dir``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab, d, layers, heads, t = CONFIGS[args.config]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_positions=t,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=vocab - 1,
                        eos_token_id=vocab - 1)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(args.model_dir)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{vocab - 1}", pad_token=f"t{vocab - 1}",
                                   unk_token="t0")
    fast.save_pretrained(args.model_dir)
    ids = make_examples(vocab, t, 1)[0]["prompt"]
    if fast(to_text(ids))["input_ids"] != ids:
        raise RuntimeError("the word-level tokenizer does not reproduce the token ids")
    return {"params": sum(p.numel() for p in model.parameters())}


def role_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from _bench import peak_rss_bytes

    vocab, _, _, _, t = CONFIGS[args.config]
    total = args.warmup + args.steps * STEP_FACTOR[args.config]
    examples = make_examples(vocab, t, PAIRS * total)
    data = Dataset.from_list([{"prompt": to_text(e["prompt"]), "chosen": " " + to_text(e["chosen"]),
                               "rejected": " " + to_text(e["rejected"])} for e in examples])
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends, self.logs = [], []

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                self.logs.append(logs)

    timer = Timer()
    config = DPOConfig(
        output_dir=os.path.join(args.model_dir, "trl_out"), use_cpu=True, per_device_train_batch_size=PAIRS,
        max_steps=total, max_length=t, beta=BETA, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[timer])
    first = trainer.get_train_dataloader()
    batch = next(iter(first))
    if tuple(batch["input_ids"].shape) != (2 * PAIRS, t):
        raise RuntimeError(f"TRL's batch has shape {tuple(batch['input_ids'].shape)}, expected {(2 * PAIRS, t)}")
    trainer.train()
    ends = [timer.start] + timer.ends
    step_s = [b - a for a, b in zip(ends[:-1], ends[1:])]
    return {"side": "trl", "step_s": step_s[args.warmup:], "first_step_s": step_s[0],
            "loss": [lg["loss"] for lg in timer.logs], "chosen_logps": [lg["logps/chosen"] for lg in timer.logs],
            "torch_threads": torch.get_num_threads(), "peak_rss_self": peak_rss_bytes()}


def mojax_batches(examples, t: int, pad: int):
    """The batch layout (docs/contracts.md) of consecutive groups of ``PAIRS`` examples, right padded to ``t``."""
    import numpy as np

    for start in range(0, len(examples), PAIRS):
        group = examples[start:start + PAIRS]
        ids = np.full((PAIRS, 2, t), pad, np.int32)
        attn = np.zeros((PAIRS, 2, t), np.int32)
        loss = np.zeros((PAIRS, 2, t), bool)
        for b, e in enumerate(group):
            for n, resp in enumerate((e["chosen"], e["rejected"])):
                seq = e["prompt"] + resp
                ids[b, n, :len(seq)] = seq
                attn[b, n, :len(seq)] = 1
                loss[b, n, len(e["prompt"]):len(seq)] = True
        yield {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def role_mojax(args) -> dict:
    import jax
    import numpy as np

    from _bench import peak_rss_bytes
    from mojax.models import load_hf
    from mojax.train import (AnchoredPolicy, MeshConfig, OptimizerConfig, create_train_state, dpo_objective,
                             jit_train_step, make_mesh, make_optimizer, make_train_step)

    vocab, _, _, _, t = CONFIGS[args.config]
    total = args.warmup + args.steps * STEP_FACTOR[args.config]
    batches = list(mojax_batches(make_examples(vocab, t, PAIRS * total), t, pad=vocab - 1))
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    model = AnchoredPolicy(load_hf(args.model_dir), load_hf(args.model_dir))
    tx = make_optimizer(OptimizerConfig(learning_rate=args.lr, max_grad_norm=1.0, weight_decay=0.0))
    graphdef, state, shardings = create_train_state(model, tx, mesh=mesh, wrt=AnchoredPolicy.trainable)
    del model  # the state holds the only copy the step uses
    # "library": the default step (loss positions packed into chunks); "dense": every position chunked (compact=False)
    objective = dpo_objective(beta=BETA, ref_mode="model", chunk_size=args.chunk_size,
                              compact=args.variant == "library")
    step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batches[0], mesh)
    key = jax.random.PRNGKey(0)

    start = time.perf_counter()
    compiled = step.lower(state, batches[0], key).compile()
    compile_s = time.perf_counter() - start

    losses, chosen, step_s = [], [], []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        loss = float(metrics["loss"])  # blocks until the step is done
        step_s.append(time.perf_counter() - start)
        losses.append(loss)
        chosen.append(float(metrics["chosen_logps"]))
    temp = compiled.memory_analysis()
    return {"side": "mojax", "step_s": step_s[args.warmup:], "first_step_s": step_s[0], "compile_s": compile_s,
            "loss": losses, "chosen_logps": chosen, "peak_rss_self": peak_rss_bytes(),
            "xla_temp_bytes": int(getattr(temp, "temp_size_in_bytes", -1)) if temp is not None else -1,
            "chunk_size": args.chunk_size, "devices": str(jax.devices()[0].device_kind)}


# ------------------------------------------------------------------------------------------------------------------
# Driver (imports neither JAX nor torch: it stays small, so it neither competes with nor inflates the children).


def child(role: str, args, config: str, model_dir: str) -> list[str]:
    variant = "library"
    if role == "mojax-dense":
        role, variant = "mojax", "dense"
    return [sys.executable, __file__, "--role", role, "--config", config, "--model-dir", model_dir,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--lr", str(args.lr),
            "--chunk-size", str(args.chunk_size), "--variant", variant]


def child_env(args) -> dict[str, str]:
    # OpenMP threads (torch's) spin-wait between parallel regions by default. On a machine whose cores are shared
    # with other jobs that spinning steals the cores the work needs: measured here at load ~20 on 2 cores, TRL's tiny
    # step took 6-9 s with the default policy and 0.1 s with PASSIVE. Both children get the same setting.
    return {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else {}


def run_config(args, config: str, tmp: str) -> dict:
    model_dir = os.path.join(tmp, config)
    prep = run_measured(child("prepare", args, config, model_dir), timeout=args.timeout).json_result()
    sides = ["mojax", "trl"] + ["mojax-dense"] * args.dense
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        k = r % len(sides)
        for side in sides[k:] + sides[:k]:  # rotate who goes first
            m = run_measured(child(side, args, config, model_dir), timeout=args.timeout, env=child_env(args))
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
    # pairs/s ratio = TRL step time / mojax step time, per round, then the median over rounds
    speedup = median_ratio(med["trl"], med["mojax"])
    dense = median_ratio(med["trl"], med["mojax-dense"]) if "mojax-dense" in med else float("nan")
    rss = {side: max(r["peak_rss"] for r in runs[side]) for side in runs}
    mj, tr = runs["mojax"][0], runs["trl"][0]
    n = min(len(mj["loss"]), len(tr["loss"]))
    parity = {"max_abs_loss_diff": max(abs(a - b) for a, b in zip(mj["loss"][:n], tr["loss"][:n])),
              "first_chosen_logps": (mj["chosen_logps"][0], tr["chosen_logps"][0]),
              "last_loss": (mj["loss"][n - 1], tr["loss"][n - 1])}
    rows = []
    for side in runs:
        step = median(med[side])
        compile_s = median([r["compile_s"] for r in runs[side]]) if side != "trl" else float("nan")
        temp = median([r["xla_temp_bytes"] / MIB for r in runs[side]]) if side != "trl" else float("nan")
        rows.append([config, f"{result['params'] / 1e6:.2f}M", side, PAIRS / step, step,
                     median([r["first_step_s"] for r in runs[side]]), compile_s, temp, rss[side] / MIB])
    if "mojax-dense" in runs:
        pd = runs["mojax-dense"][0]
        parity["dense_max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(pd["loss"][:n], tr["loss"][:n]))
    return rows, speedup, {"rss_ratio": rss["mojax"] / rss["trl"], "dense_speedup": dense, **parity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per process (after mojax's compile)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="mojax log-prob chunk, positions per sequence (32 = the library's CHUNK_SIZE)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    parser.add_argument("--omp-wait-policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY for both children ('' leaves it unset; see child_env)")
    parser.add_argument("--dense", action="store_true",
                        help="also time mojax with compact=False (every position through the LM head, chunked)")
    parser.add_argument("--role", choices=["prepare", "mojax", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["library", "dense"], default="library", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        result = {"prepare": role_prepare, "mojax": role_mojax, "trl": role_trl}[args.role](args)
        print(json.dumps(result))
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    print(f"DPO step, batch {PAIRS} pairs, CPU float32; {args.rounds} alternating rounds of {args.warmup} warm-up + "
          f"{args.steps} timed steps; mojax chunk {args.chunk_size}; OMP_WAIT_POLICY={args.omp_wait_policy!r}; "
          f"{load_average()} at start", flush=True)
    rows, speedups, notes = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            r, speedups[config], notes[config] = summarise(config, run_config(args, config, tmp))
            rows += r
    print(format_table(["config", "params", "side", "pairs/s", "step s", "first step s", "compile s",
                        "XLA temp MiB", "peak RSS MiB"], rows))
    for config in configs:
        n = notes[config]
        print(f"{config}: speedup {speedups[config]:.2f}x (median of per-round ratios), peak RSS mojax/TRL "
              f"{n['rss_ratio']:.2f}; parity: max |loss diff| over steps {n['max_abs_loss_diff']:.2e}, "
              f"first-step mean chosen logp mojax {n['first_chosen_logps'][0]:.4f} vs TRL "
              f"{n['first_chosen_logps'][1]:.4f}, last loss {n['last_loss'][0]:.5f} vs {n['last_loss'][1]:.5f}")
        if "dense_max_abs_loss_diff" in n:
            print(f"{config}: mojax-dense (compact=False) speedup {n['dense_speedup']:.2f}x; max |loss diff| vs "
                  f"TRL {n['dense_max_abs_loss_diff']:.2e}")
        if abs(n["first_chosen_logps"][0] - n["first_chosen_logps"][1]) > 1e-3 * abs(n["first_chosen_logps"][1]):
            print(f"WARNING: {config}: the two sides' log-probs differ: they are not running the same model/data")
    print(f"{load_average()} at end")
    print(headline("speedup_vs_trl", min(speedups.values())))


if __name__ == "__main__":
    main()
