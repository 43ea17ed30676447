"""Which conditioning makes one COS-DPO model trace a front? A thin command over the experiment's comparison
(:mod:`experiments._cos_llm_compare`; the same run as ``python -m experiments.cos_dpo_llm --compare-conditionings``).

Run::

    python -m benchmarks.cos_dpo_conditioning                      # the tiny default, all conditionings, one seed
    python -m benchmarks.cos_dpo_conditioning --kinds mixed_lora --eval-prompts 128 --seeds 2

Protocol and verdict: see :mod:`experiments._cos_llm_compare`. Writes ``--out`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from experiments import _lm_common as lm
from experiments._cos_llm_compare import KINDS, compare, guard, markdown_rows
from experiments._report import to_jsonable

__all__ = ["KINDS", "guard", "main"]


def main(argv=None) -> dict:
    """Run the comparison; returns (and writes) the results."""
    from experiments import cos_dpo_llm as exp

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=["hpt", "deep_hpt", "mixed_lora", "hyper_lora"], choices=list(KINDS))
    p.add_argument("--steps", type=int, default=None, help="W-COS-DPO steps (default: the experiment's cos_steps)")
    p.add_argument("--ls-steps", type=int, default=None, help="DPO-LS steps per weight (default: the experiment's)")
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--out", default="runs/cos_dpo_conditioning.json")
    args = p.parse_args(argv)
    config = exp.Config(progress=False)
    config = dataclasses.replace(config, cos_steps=args.steps or config.cos_steps,
                                 train=dataclasses.replace(config.train, steps=args.ls_steps or config.train.steps))
    lm.enable_compilation_cache()
    results = compare(config, names=args.kinds, num_seeds=args.seeds, eval_prompts=args.eval_prompts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(results), indent=1))
    print(markdown_rows(results))
    return results


if __name__ == "__main__":
    main()
