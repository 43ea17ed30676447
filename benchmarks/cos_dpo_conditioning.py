"""Which conditioning makes one COS-DPO model trace a front? Every :mod:`mojax.models.conditioning` kind against
DPO-LS on the tiny synthetic default of ``experiments/cos_dpo_llm.py`` (issue 11 §1/§3).

Run::

    python -m benchmarks.cos_dpo_conditioning                      # the default task, all conditionings, ~30 min
    python -m benchmarks.cos_dpo_conditioning --kinds mixed_lora --ls-weights ends --eval-prompts 128

Protocol: the experiment's defaults (π_0 = its cached SFT decoder, 2048 training pairs labelled on class_a and
class_b, LoRA rank 4 on every projection, β = 0.1, AdamW lr 3e-3, batch 32). One W-COS-DPO run per conditioning
(``--steps``, w ~ Dir(1) per example, reference log-probs cached from π_0); DPO-LS = one LoRA run per weight
(``--ls-steps``). Each model is sampled at the 11 sweep weights w = (i/10, 1 − i/10) on held-out prompts (the same
random numbers for every method and weight) and scored with the true rewards. Reported per method: the front's
spread per objective (max − min over the 11 points), the spread as a fraction of the DPO-LS endpoints' spread
(|f(1,0) − f(0,1)| per objective), hypervolume w.r.t. (0, 0), train seconds (compilation included).
Writes ``--out`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from experiments import cos_dpo_llm as exp
from mojax.models import merge_lora
from mojax.models.conditioning import ConditionedPolicy, ConditioningConfig, build_conditioned
from mojax.train.objectives import COSDPOSampling, cos_dpo_objective
from mojax.train.objectives.preference import scalarized_dpo_objective

# name -> ConditioningConfig overrides (lora None = the prefix alone)
KINDS = {
    "hpt": dict(kind="hpt", lora=None),
    "hpt+lora": dict(kind="hpt"),
    "deep_hpt": dict(kind="deep_hpt", lora=None),
    "mixed_lora": dict(kind="mixed_lora"),
    "hyper_lora": dict(kind="hyper_lora"),
}


def setup(config: exp.Config, *, eval_prompts: int):
    """π_0 (cached SFT), training pairs and held-out prompts with π_0's reference log-probs."""
    pi0, _ = lm.sft_policy(config.task, config.model, config.sft, cache_dir=config.cache_dir, progress=False)
    train = exp.synthetic_data(config.task, config.objectives, num_pairs=config.num_train_pairs, seed=config.seed)
    held = exp.synthetic_data(config.task, config.objectives, num_pairs=eval_prompts, seed=config.seed + 1)
    return pi0, lm.with_ref_logps(train, [pi0]), held


def conditioning_config(name: str, config: exp.Config) -> ConditioningConfig:
    """The conditioning ``name`` sized like the experiment's HPT (4 prefix tokens, rank 4, hidden 32) and LoRA."""
    return ConditioningConfig(num_objectives=2, num_prefix_tokens=config.hpt.num_prefix_tokens, rank=config.hpt.rank,
                              hidden_dim=config.hpt.hidden_dim, **{"lora": config.lora, **KINDS[name]})


def train_conditioned(name: str, config: exp.Config, pi0, train, *, steps: int):
    """One W-COS-DPO run of conditioning ``name``; returns (policy, seconds)."""
    policy = build_conditioned(lm.copy_model(pi0), conditioning_config(name, config), rngs=config.seed + 1)
    objective = cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2, concentration=config.concentration,
                                                          per_example=config.per_example),
                                  beta=config.beta, penalty=config.penalty, label_norm="l1", ref_mode="cached")
    model, hist = lm.train(policy, objective, train, dataclasses.replace(config.train, steps=steps), config.optimizer,
                           wrt=ConditionedPolicy.trainable, desc=name, progress=False)
    return model, hist.seconds


def train_dpo_ls(config: exp.Config, pi0, train, weights: np.ndarray, *, steps: int):
    """One LoRA run per weight; returns ({index: model}, seconds)."""
    objective = scalarized_dpo_objective(beta=config.beta, weights=(0.5, 0.5), ref_mode="cached")
    start = exp.lora_policy(pi0, config.lora, seed=config.seed)
    models, seconds = {}, 0.0
    for i, w in weights.items():
        models[i], hist = lm.train(start, objective, train, dataclasses.replace(config.train, steps=steps),
                                   config.optimizer, hparams={"weights": w}, wrt=nnx.LoRAParam,
                                   desc=f"DPO-LS {w[0]:.1f}", progress=False)
        seconds += hist.seconds
    return models, seconds


def point(model, w, held, config: exp.Config) -> np.ndarray:
    """Mean true rewards (objectives of the experiment) of one sampled response per held-out prompt."""
    plain = model.at(w) if isinstance(model, ConditionedPolicy) else model
    return exp.sample_and_score(plain, held.prompts, config.task, weights=None, seed=config.seed + 7,
                                temperature=config.sample_temperature)[list(config.objectives)]


def summary(front: np.ndarray, seconds: float, ls_span: np.ndarray | None, reference=(0.0, 0.0)) -> dict:
    """Spread, its fraction of DPO-LS's endpoint spread, HV, seconds, and the front itself."""
    _, hv = lm.front_hypervolume(front, reference)
    spread = np.ptp(front, axis=0)
    out = {"spread": spread.tolist(), "hypervolume": hv, "seconds": seconds, "front": front.tolist(),
           "ends": [front[-1].tolist(), front[0].tolist()]}
    if ls_span is not None:
        out["spread_fraction_of_dpo_ls"] = (spread / np.maximum(ls_span, 1e-12)).tolist()
    return out


def main(argv=None) -> dict:
    """Run the comparison; returns (and writes) the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--steps", type=int, default=None, help="W-COS-DPO steps (default: the experiment's cos_steps)")
    p.add_argument("--ls-steps", type=int, default=None, help="DPO-LS steps per weight (default: the experiment's)")
    p.add_argument("--ls-weights", choices=("all", "ends"), default="all")
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--out", default="runs/cos_dpo_conditioning.json")
    args = p.parse_args(argv)
    config = exp.Config(progress=False)
    steps = args.steps or config.cos_steps
    ls_steps = args.ls_steps or config.train.steps
    eval_prompts = args.eval_prompts or config.num_eval_prompts
    lm.enable_compilation_cache()
    pi0, train, held = setup(config, eval_prompts=eval_prompts)
    weights = exp.sweep_weights(config.num_weights)
    results: dict = {"steps": steps, "ls_steps": ls_steps, "eval_prompts": eval_prompts, "methods": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = dict(enumerate(weights)) if args.ls_weights == "all" else {0: weights[0], len(weights) - 1: weights[-1]}
    models, seconds = train_dpo_ls(config, pi0, train, todo, steps=ls_steps)
    ls_points = {i: point(m, weights[i], held, config) for i, m in models.items()}
    ls_span = np.abs(ls_points[len(weights) - 1] - ls_points[0])
    results["dpo_ls_endpoint_spread"] = ls_span.tolist()
    if args.ls_weights == "all":
        results["methods"]["dpo_ls"] = summary(np.stack([ls_points[i] for i in range(len(weights))]), seconds, ls_span)
    else:
        results["methods"]["dpo_ls_ends"] = {"ends": [ls_points[len(weights) - 1].tolist(), ls_points[0].tolist()],
                                             "seconds": seconds}
    results["base_point"] = point(pi0, weights[0], held, config).tolist()
    out.write_text(json.dumps(results, indent=1))
    for name in args.kinds:
        t0 = time.time()
        model, secs = train_conditioned(name, config, pi0, train, steps=steps)
        front = np.stack([point(model, w, held, config) for w in weights])
        results["methods"][name] = summary(front, secs, ls_span)
        results["methods"][name]["wall_seconds_with_eval"] = time.time() - t0
        out.write_text(json.dumps(results, indent=1))
        print(name, json.dumps({k: v for k, v in results["methods"][name].items() if k != "front"}), flush=True)
    print(table(results))
    return results


def guard(kind: str = "mixed_lora", *, steps: int = 150, ls_steps: int = 70, eval_prompts: int = 512,
          sft_steps: int = 100, num_weights: int = 3, cache_dir: str | None = None) -> dict:
    """The CI guard's measurement (a shortened tiny default): spread of ``kind``'s front (``num_weights`` points
    ``w = (i/(n−1), 1 − i/(n−1))``) per objective as a fraction of the DPO-LS endpoints' spread (both trained here,
    from the same π_0).

    The task, decoder, LoRA, β, batch and learning rate are the experiment's defaults; SFT, the training runs, the
    held-out prompts and the sweep are shortened. Every model is sampled as a plain merged decoder (one compiled
    sampler for all).
    """
    config = exp.Config(progress=False, sft=dataclasses.replace(exp.Config().sft, steps=sft_steps),
                        cache_dir=cache_dir)
    pi0, train, held = setup(config, eval_prompts=eval_prompts)
    weights = exp.sweep_weights(num_weights)
    ends = {0: weights[0], len(weights) - 1: weights[-1]}
    models, ls_seconds = train_dpo_ls(config, pi0, train, ends, steps=ls_steps)
    ls = {i: point(merge_lora(lm.copy_model(m)), weights[i], held, config) for i, m in models.items()}
    ls_span = np.abs(ls[len(weights) - 1] - ls[0])
    model, seconds = train_conditioned(kind, config, pi0, train, steps=steps)
    front = np.stack([point(model, w, held, config) for w in weights])
    return {**summary(front, seconds, ls_span), "dpo_ls_endpoint_spread": ls_span.tolist(),
            "dpo_ls_seconds": ls_seconds}


def table(results: dict) -> str:
    """The Markdown table of :func:`main`'s results."""
    rows = ["| method | spread (class_a, class_b) | fraction of DPO-LS endpoints' | HV | train s |",
            "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        if "spread" not in m:
            continue
        frac = m.get("spread_fraction_of_dpo_ls", [float("nan")] * 2)
        rows.append(f"| {name} | {m['spread'][0]:.3f}, {m['spread'][1]:.3f} | {frac[0]:.0%}, {frac[1]:.0%} | "
                    f"{m['hypervolume']:.4f} | {m['seconds']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
