"""Packed vs padded DPO batches on the real HH-RLHF length distribution (issue 13 §3).

    nice python benchmarks/packing.py [--batch-size 8] [--batches 4] [--rounds 3] [--d-model 64 --layers 2 --mlp-dim 128]

Data: the four HH-RLHF files in ``../shared/data/hh-rlhf``, GPT-2 BPE tokenizer (``../shared/data/gpt2-bpe``),
``max_length`` 512 (``max_prompt_length`` 384). Batches of B pairs in the pipeline's seeded order.

1. Padding: the fraction of token slots that are padding over every batch of the data, padded layout (today's
   collate: ``[B, 2, T]``, T = the power-of-two bucket of the batch's longest sequence) vs packed rows of 512
   (:func:`mojax.data.packing.pack_examples`, first-fit decreasing).
2. Speed: one jitted DPO loss + gradient (cached reference log-probs) of a small Llama-shaped decoder (GPT-2
   vocabulary) on the same ``--batches`` batches, packed vs padded, alternating rounds (each round runs every batch
   once per layout, the first layout rotating), medians of the per-round pairs/second and their per-round ratio.
   Every shape is compiled before timing. The losses of the two layouts are compared batch by batch.

Last line: ``packing_speedup=<median per-round ratio of pairs/s packed over padded>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _bench import alternate, headline, load_average, median, paired_ratios
from flax import nnx

from mojax.data import TokenizeConfig, collate, load_tokenized_files
from mojax.data.packing import PackConfig, pack_examples
from mojax.models import Decoder, DecoderConfig
from mojax.models.hf import load_tokenizer
from mojax.train.objectives import LMOpening, dpo_objective

DATA = Path("..") / "shared" / "data"
MAX_LENGTH = 512


def hh_pair_batches(batch_size: int, seed: int) -> tuple[Any, TokenizeConfig, list[Path], list, list[list]]:
    """The four HH-RLHF files tokenized with GPT-2 BPE (max length 512, prompt 384), pairs only, in batches of
    ``batch_size`` in a seeded order: ``(tokenizer, tokenize config, files, examples, batches)`` (shared with ``shared_prompt.py``)."""
    tok = load_tokenizer(DATA / "gpt2-bpe")
    tcfg = TokenizeConfig(max_length=MAX_LENGTH, max_prompt_length=384, pad_id=0)
    files = sorted((DATA / "hh-rlhf").glob("*.jsonl.gz"))
    examples, _ = load_tokenized_files(files, tok, tcfg)
    examples = [ex for ex in examples if len(ex.response_ids) == 2]
    order = np.random.default_rng(seed).permutation(len(examples))
    batches = [[examples[i] for i in order[s:s + batch_size]]
               for s in range(0, len(order) - batch_size + 1, batch_size)]
    return tok, tcfg, files, examples, batches


def compare_layouts(step, params, layouts: dict[str, list[dict]], *, pairs_per_batch: int, rounds: int,
                    name: str) -> str:
    """Run ``step(params, batch)`` on the same batches in two layouts (``{"padded": [...], other: [...]}``): compile
    every shape, compare the losses batch by batch (≤ 1e-5), then time alternating rounds; prints the tables and
    returns the headline ``name=<median per-round ratio of pairs/s, other over padded>`` (shared with
    ``shared_prompt.py``)."""
    other = next(k for k in layouts if k != "padded")
    layouts = {k: [jax.tree.map(jnp.asarray, x) for x in v] for k, v in layouts.items()}
    t0 = time.perf_counter()
    losses = {k: [float(jax.block_until_ready(step(params, x))[0]) for x in v] for k, v in layouts.items()}
    shapes = {k: sorted({tuple(x["input_ids"].shape) for x in v}) for k, v in layouts.items()}
    print(f"compile + first run of every shape: {time.perf_counter() - t0:.1f} s; input shapes {shapes}")
    diff = max(abs(a - c) for a, c in zip(losses[other], losses["padded"]))
    print(f"DPO loss per batch padded {np.round(losses['padded'], 6).tolist()}; max |{other} - padded| = {diff:.2e}")

    def run(layout):
        def go():
            t = time.perf_counter()
            for x in layouts[layout]:
                jax.block_until_ready(step(params, x))
            return len(layouts[layout]) * pairs_per_batch / (time.perf_counter() - t)
        return go

    pps = alternate({k: run(k) for k in layouts}, rounds)
    ratios = paired_ratios(pps[other], pps["padded"])
    print(f"pairs/s padded {[round(x, 3) for x in pps['padded']]} (median {median(pps['padded']):.3f}), "
          f"{other} {[round(x, 3) for x in pps[other]]} (median {median(pps[other]):.3f}); "
          f"per-round ratios {[round(x, 3) for x in ratios]}; load {load_average()}")
    if diff > 1e-5:
        print(f"WARNING: losses differ by {diff:.2e} > 1e-5")
    return headline(name, median(ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--mlp-dim", type=int, default=128)
    args = ap.parse_args()

    tok, tcfg, files, examples, batches = hh_pair_batches(args.batch_size, args.seed)
    b = args.batch_size
    pcfg = PackConfig(row_length=MAX_LENGTH, max_segments=16)

    lengths = np.array([len(ex.prompt_ids) + len(r) for ex in examples for r in ex.response_ids])
    pad_slots = pad_real = pack_slots = pack_real = 0
    rows = []
    for exs in batches:
        padded, packed = collate(exs, tcfg), pack_examples(exs, pcfg)
        pad_slots += padded["attention_mask"].size
        pad_real += int(padded["attention_mask"].sum())
        pack_slots += packed["attention_mask"].size
        pack_real += int(packed["attention_mask"].sum())
        rows.append(packed["input_ids"].shape[0])
    print(f"HH-RLHF: {len(examples)} pairs from {len(files)} files; sequence length (prompt + response) "
          f"median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, p90 {np.percentile(lengths, 90):.0f}, "
          f"max {lengths.max()}")
    print(f"batches of {b} pairs: {len(batches)}; packed rows per batch: median {np.median(rows):.0f} "
          f"(padded: {2 * b})")
    print(f"padding fraction: padded {1 - pad_real / pad_slots:.4f}, packed {1 - pack_real / pack_slots:.4f}")

    # Timing: a small Llama-shaped decoder with the GPT-2 vocabulary, the DPO loss and its gradient, jitted.
    cfg = DecoderConfig.tiny("llama", vocab_size=len(tok), d_model=args.d_model, num_layers=args.layers, num_heads=4,
                             mlp_dim=args.mlp_dim,
                             max_positions=MAX_LENGTH)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    obj = dpo_objective(beta=0.1, ref_mode="cached")
    hp = obj.initial_hparams()

    @jax.jit
    def step(params, batch):
        def f(p):
            return obj.fn(nnx.merge(graphdef, p), batch, None, hp)[0]
        return jax.value_and_grad(f)(params)

    rng = np.random.default_rng(1)
    timed = batches[:args.batches]
    # Reference log-probs near the policy's own (a DPO loss of order log 2, as at the start of training).
    opening = LMOpening(ref_mode=None)
    ref = [np.asarray(opening(model, collate(e, tcfg)).logps) + rng.normal(0, 1, (b, 2)).astype(np.float32)
           for e in timed]
    layouts = {
        "padded": [{**collate(e, tcfg), "ref_logps": r} for e, r in zip(timed, ref)],
        "packed": [{**pack_examples(e, pcfg), "ref_logps": r} for e, r in zip(timed, ref)],
    }
    print(compare_layouts(step, params, layouts, pairs_per_batch=b, rounds=args.rounds, name="packing_speedup"))


if __name__ == "__main__":
    main()
