"""Shared prompt vs the padded pair layout on the real HH-RLHF length distribution (issue 13 §3).

    nice python benchmarks/shared_prompt.py [--batch-size 8] [--batches 4] [--rounds 3] [--d-model 256 --layers 4]

Data as in ``benchmarks/packing.py``: the four HH-RLHF files in ``../shared/data/hh-rlhf``, GPT-2 BPE, ``max_length``
512 (``max_prompt_length`` 384), batches of B pairs in a seeded order.

1. Token slots: the padded layout ``[B, 2, T]`` (T = the power-of-two bucket of the batch's longest row) runs every
   prompt twice; the shared-prompt layout (:func:`mojax.train.objectives.split_shared_prompt`) runs ``[B, Tp]``
   prompts once and ``[B, 2, Tr]`` responses against their keys/values (Tp, Tr: the longest prompt / response
   rounded up to 16). Printed: slots of each over every batch, and the prompt's share of the real tokens.
2. Speed: one jitted DPO loss + gradient (cached reference log-probs) of a Llama-shaped decoder with the GPT-2
   vocabulary on the same ``--batches`` batches in both layouts, alternating rounds, medians of pairs/second and
   per-round ratios; every shape compiled before timing. Losses compared batch by batch (≤ 1e-5).

Last line: ``shared_prompt_speedup=<median per-round ratio of pairs/s shared over padded>``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from packing import MAX_LENGTH, compare_layouts, hh_pair_batches

from mojax.data import collate
from mojax.models import Decoder, DecoderConfig
from mojax.train.objectives import LMOpening, dpo_objective, split_shared_prompt



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mlp-dim", type=int, default=1024)
    ap.add_argument("--multiple", type=int, default=16, help="Tp and Tr are rounded up to this")
    args = ap.parse_args()

    tok, tcfg, files, examples, batches = hh_pair_batches(args.batch_size, args.seed)
    b = args.batch_size

    prompt_tokens = sum(2 * len(ex.prompt_ids) for ex in examples)
    real_tokens = sum(len(ex.prompt_ids) + len(r) for ex in examples for r in ex.response_ids)
    pad_slots = shared_slots = 0
    for exs in batches:
        padded = collate(exs, tcfg)
        shared = split_shared_prompt(padded, multiple=args.multiple)
        pad_slots += padded["input_ids"].size
        shared_slots += shared["prompt_ids"].size + shared["input_ids"].size
    p_len = np.array([len(ex.prompt_ids) for ex in examples])
    r_len = np.array([len(r) for ex in examples for r in ex.response_ids])
    print(f"HH-RLHF: {len(examples)} pairs from {len(files)} files; prompt length median {np.median(p_len):.0f} "
          f"(mean {p_len.mean():.1f}), response length median {np.median(r_len):.0f} (mean {r_len.mean():.1f}); "
          f"prompts are {prompt_tokens / real_tokens:.3f} of the real tokens of the padded layout")
    print(f"token slots over {len(batches)} batches of {b} pairs: padded {pad_slots}, shared prompt {shared_slots} "
          f"({shared_slots / pad_slots:.3f} of padded)")

    cfg = DecoderConfig.tiny("llama", vocab_size=len(tok), d_model=args.d_model, num_layers=args.layers, num_heads=4,
                             mlp_dim=args.mlp_dim, max_positions=MAX_LENGTH)
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
    opening = jax.jit(lambda p, x: LMOpening(ref_mode=None)(nnx.merge(graphdef, p), x).logps)
    padded = [collate(e, tcfg) for e in timed]
    ref = [np.asarray(opening(params, jax.tree.map(jnp.asarray, x))) + rng.normal(0, 1, (b, 2)).astype(np.float32)
           for x in padded]
    layouts = {
        "padded": [{**x, "ref_logps": r} for x, r in zip(padded, ref)],
        "shared": [{**split_shared_prompt(x, multiple=args.multiple), "ref_logps": r} for x, r in zip(padded, ref)],
    }
    print(compare_layouts(step, params, layouts, pairs_per_batch=b, rounds=args.rounds,
                          name="shared_prompt_speedup"))


if __name__ == "__main__":
    main()
