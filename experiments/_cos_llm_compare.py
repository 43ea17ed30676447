"""Which conditioning makes one COS-DPO model trace a front? Every :mod:`mojax.models.conditioning` kind against
DPO-LS at all sweep weights on the tiny synthetic default of ``experiments/cos_dpo_llm.py`` (issue 11 §3).

``python -m experiments.cos_dpo_llm --compare-conditionings [--num-seeds 2]`` (and the thin wrapper
``benchmarks/cos_dpo_conditioning.py``). Per seed (``seed + 1000·i``: training pairs, held-out prompts, adapter
init and sampling; π_0 is the experiment's one cached SFT decoder): DPO-LS = one LoRA run of ``train.steps`` per
sweep weight; one W-COS-DPO run of ``cos_steps`` per conditioning (w ~ Dir(α) per example, cached reference
log-probs); every model sampled at every sweep weight on the held-out prompts (the same random numbers for every
method and weight) and scored with the true rewards. Per method and seed: the front, its range per objective
(max − min over the sweep), that range as a fraction of DPO-LS's, HV w.r.t. the experiment's reference point and its
ratio to DPO-LS's, train seconds (compilation included) and their ratio to the 11 DPO-LS runs' total.

The :class:`~experiments._report.Verdict` tests issue 11's target for the best conditioning (highest mean HV
ratio): range ≥ 70% of DPO-LS's in each objective, HV ≥ 0.95× DPO-LS's, train time ≤ 1/3 of the DPO-LS runs' —
"held" when all three hold in every seed, "did_not_hold" when one fails on the mean over seeds, else
"inconclusive"; a ``--quick`` run is "smoke".
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from experiments._report import Verdict
from mojax.models import merge_lora
from mojax.models.conditioning import ConditionedPolicy, ConditioningConfig, build_conditioned
from mojax.train import scalarized_dpo_objective
from mojax.train.objectives import COSDPOSampling, cos_dpo_objective

__all__ = ["KINDS", "TARGETS", "compare", "conditioning_config", "decide", "guard", "point", "setup", "summary",
           "train_conditioned", "train_dpo_ls"]

# name -> ConditioningConfig overrides on the experiment's conditioning (lora None = the prefix alone).
KINDS = {
    "hpt": dict(kind="hpt"),  # the paper's HPT on top of LoRA (zero-gated)
    "hpt_alone": dict(kind="hpt", lora=None),
    "deep_hpt": dict(kind="deep_hpt", lora=None),
    "mixed_lora": dict(kind="mixed_lora"),
    "hyper_lora": dict(kind="hyper_lora"),
}
# issue 11: range fraction per objective, HV ratio, time ratio (conditioned / all DPO-LS runs)
TARGETS = {"range_fraction": 0.7, "hv_ratio": 0.95, "time_ratio": 1 / 3}


def setup(config: Any, *, eval_prompts: int, seed: int | None = None):
    """π_0 (cached SFT), training pairs with π_0's reference log-probs, and held-out prompts of seed ``seed``."""
    from experiments import cos_dpo_llm as exp

    seed = config.seed if seed is None else seed
    pi0, _ = lm.sft_policy(config.task, config.model, config.sft, cache_dir=config.cache_dir, progress=False)
    train = exp.synthetic_data(config.task, config.objectives, num_pairs=config.num_train_pairs, seed=seed)
    held = exp.synthetic_data(config.task, config.objectives, num_pairs=eval_prompts, seed=seed + 1)
    return pi0, lm.with_ref_logps(train, [pi0]), held


def conditioning_config(name: str, config: Any) -> ConditioningConfig:
    """The conditioning ``name`` of :data:`KINDS`: the experiment's ``conditioning`` sizes with ``name``'s kind."""
    return dataclasses.replace(config.conditioning, **KINDS[name])


def train_conditioned(name: str, config: Any, pi0, train, *, steps: int, seed: int | None = None):
    """One W-COS-DPO run of conditioning ``name`` (a :data:`KINDS` key or a :class:`ConditioningConfig`); returns
    ``(policy, seconds)``."""
    seed = config.seed if seed is None else seed
    cc = name if isinstance(name, ConditioningConfig) else conditioning_config(name, config)
    policy = build_conditioned(lm.copy_model(pi0), cc, rngs=seed + 1)
    objective = cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2, concentration=config.concentration,
                                                          per_example=config.per_example),
                                  beta=config.beta, penalty=config.penalty, label_norm="l1", ref_mode="cached")
    run = dataclasses.replace(config.train, steps=steps, seed=seed)
    model, hist = lm.train(policy, objective, train, run, config.optimizer, wrt=ConditionedPolicy.trainable,
                           desc=str(getattr(cc, "kind", name)), progress=config.progress)
    return model, hist.seconds


def train_dpo_ls(config: Any, pi0, train, weights: dict[int, np.ndarray], *, steps: int, seed: int | None = None):
    """One LoRA run per weight (w a traced hyper-parameter: one compiled step); returns ``({index: model},
    {index: seconds})``."""
    from experiments import cos_dpo_llm as exp

    seed = config.seed if seed is None else seed
    objective = scalarized_dpo_objective(beta=config.beta, weights=(0.5, 0.5), ref_mode="cached")
    start = exp.lora_policy(pi0, config.lora, seed=seed)
    models, seconds = {}, {}
    run = dataclasses.replace(config.train, steps=steps, seed=seed)
    for i, w in weights.items():
        models[i], hist = lm.train(start, objective, train, run, config.optimizer, hparams={"weights": w},
                                   wrt=nnx.LoRAParam, desc=f"DPO-LS {w[0]:.1f}", progress=config.progress)
        seconds[i] = hist.seconds
    return models, seconds


def point(model, w, held, config: Any, *, seed: int | None = None) -> np.ndarray:
    """Mean true rewards (the experiment's two objectives) of one sampled response per held-out prompt; models are
    sampled as plain decoders (a conditioned policy at ``w``, LoRA merged: one compiled sampler for most)."""
    from experiments import cos_dpo_llm as exp

    seed = config.seed if seed is None else seed
    if isinstance(model, ConditionedPolicy):
        plain = model.at(w)
    elif lm_has_lora(model):
        plain = merge_lora(lm.copy_model(model))
    else:
        plain = model
    return exp.sample_and_score(plain, held.prompts, config.task, weights=None, seed=seed + 7,
                                temperature=config.sample_temperature)[list(config.objectives)]


def lm_has_lora(model) -> bool:
    """Whether ``model`` carries LoRA parameters."""
    return any(True for _ in nnx.state(model, nnx.LoRAParam).flat_state())


def summary(front: np.ndarray, seconds: float, ls_range: np.ndarray | None, reference=(0.0, 0.0), *,
            ls_hv: float | None = None, ls_seconds: float | None = None) -> dict:
    """Range, its fraction of DPO-LS's, HV (and its ratio to DPO-LS's), seconds (and their ratio), the front."""
    _, hv = lm.front_hypervolume(front, reference)
    spread = np.ptp(front, axis=0)
    out = {"spread": spread.tolist(), "hypervolume": hv, "seconds": float(seconds), "front": np.asarray(front).tolist(),
           "ends": [front[-1].tolist(), front[0].tolist()]}
    if ls_range is not None:
        out["spread_fraction_of_dpo_ls"] = (spread / np.maximum(ls_range, 1e-12)).tolist()
    if ls_hv is not None:
        out["hv_ratio"] = hv / max(ls_hv, 1e-12)
    if ls_seconds is not None:
        out["time_ratio"] = float(seconds) / max(ls_seconds, 1e-9)
    return out


def compare_seed(config: Any, names: list[str], *, seed: int, eval_prompts: int, log=print) -> dict:
    """One seed of the comparison: DPO-LS at every sweep weight, then each conditioning of ``names``."""
    from experiments import cos_dpo_llm as exp

    pi0, train, held = setup(config, eval_prompts=eval_prompts, seed=seed)
    weights = exp.sweep_weights(config.num_weights)
    models, secs = train_dpo_ls(config, pi0, train, dict(enumerate(weights)), steps=config.train.steps, seed=seed)
    ls_front = np.stack([point(models[i], weights[i], held, config, seed=seed) for i in range(len(weights))])
    ls_seconds = float(sum(secs.values()))
    ls = summary(ls_front, ls_seconds, None, config.reference_point)
    ls_range = np.asarray(ls["spread"])
    out = {"seed": seed, "dpo_ls": {**ls, "run_seconds": [secs[i] for i in range(len(weights))]},
           "base_point": point(pi0, weights[0], held, config, seed=seed).tolist(), "methods": {}}
    log(f"seed {seed}: DPO-LS HV {ls['hypervolume']:.4f}, range {np.round(ls_range, 3).tolist()}, {ls_seconds:.0f} s")
    for name in names:
        t0 = time.time()
        model, seconds = train_conditioned(name, config, pi0, train, steps=config.cos_steps, seed=seed)
        front = np.stack([point(model, w, held, config, seed=seed) for w in weights])
        out["methods"][name] = summary(front, seconds, ls_range, config.reference_point, ls_hv=ls["hypervolume"],
                                       ls_seconds=ls_seconds)
        out["methods"][name]["wall_seconds_with_eval"] = time.time() - t0
        m = out["methods"][name]
        log(f"seed {seed}: {name}: range fraction {np.round(m['spread_fraction_of_dpo_ls'], 3).tolist()}, "
            f"HV ratio {m['hv_ratio']:.3f}, time ratio {m['time_ratio']:.3f}")
    return out


def meets(m: dict) -> bool:
    """Whether one seed's (or the mean's) numbers meet every :data:`TARGETS` threshold."""
    return bool(min(m["spread_fraction_of_dpo_ls"]) >= TARGETS["range_fraction"]
                and m["hv_ratio"] >= TARGETS["hv_ratio"] and m["time_ratio"] <= TARGETS["time_ratio"])


def decide(per_seed: list[dict], names: list[str], *, smoke: bool = False) -> tuple[dict, str, Verdict]:
    """Seed summaries per conditioning (mean, min, max of each target quantity), the best conditioning (highest mean
    HV ratio) and the verdict on it."""
    summ: dict[str, Any] = {}
    for name in names:
        rows = [s["methods"][name] for s in per_seed]
        frac = np.asarray([r["spread_fraction_of_dpo_ls"] for r in rows])
        hv = np.asarray([r["hv_ratio"] for r in rows])
        tr = np.asarray([r["time_ratio"] for r in rows])
        mean = {"spread_fraction_of_dpo_ls": frac.mean(0).tolist(), "hv_ratio": float(hv.mean()),
                "time_ratio": float(tr.mean())}
        summ[name] = {"mean": mean, "min_range_fraction": frac.min(0).tolist(), "max_range_fraction":
                      frac.max(0).tolist(), "hv_ratio_range": [float(hv.min()), float(hv.max())],
                      "time_ratio_range": [float(tr.min()), float(tr.max())],
                      "meets_in_every_seed": all(meets(r) for r in rows), "meets_on_mean": meets(mean)}
    best = max(names, key=lambda n: summ[n]["mean"]["hv_ratio"])
    claim = (f"The best conditioning of the tiny default ({best}) spans >= 70% of DPO-LS's range in each "
             "objective, reaches HV >= 0.95x DPO-LS's, in <= 1/3 of the time of the 11 DPO-LS runs.")
    if smoke:
        return summ, best, dataclasses.replace(Verdict.smoke(claim), seeds=len(per_seed))
    b = summ[best]
    result = ("held" if b["meets_in_every_seed"] else "did_not_hold" if not b["meets_on_mean"] else "inconclusive")
    test = (f"all three thresholds in every seed (held) / failed on the seed mean (did not hold); mean range "
            f"fraction {np.round(b['mean']['spread_fraction_of_dpo_ls'], 3).tolist()} (min over seeds "
            f"{np.round(b['min_range_fraction'], 3).tolist()}), HV ratio {b['mean']['hv_ratio']:.3f} "
            f"(seeds {b['hv_ratio_range'][0]:.3f}-{b['hv_ratio_range'][1]:.3f}), time ratio "
            f"{b['mean']['time_ratio']:.3f} (seeds {b['time_ratio_range'][0]:.3f}-{b['time_ratio_range'][1]:.3f})")
    return summ, best, Verdict(claim=claim, result=result, test=test, seeds=len(per_seed),
                               ci=tuple(b["hv_ratio_range"]))


def compare(config: Any, *, names: list[str] | None = None, num_seeds: int = 1, eval_prompts: int | None = None,
            smoke: bool = False, log=print) -> dict:
    """The whole comparison: :func:`compare_seed` at seeds ``config.seed + 1000·i``, then :func:`decide`."""
    names = list(names or config.conditionings)
    eval_prompts = eval_prompts or config.num_eval_prompts
    per_seed = [compare_seed(config, names, seed=config.seed + 1000 * i, eval_prompts=eval_prompts, log=log)
                for i in range(num_seeds)]
    summ, best, verdict = decide(per_seed, names, smoke=smoke)
    return {"seeds": per_seed, "summary": summ, "best": best, "verdict": dataclasses.asdict(verdict),
            "targets": TARGETS, "eval_prompts": eval_prompts, "conditionings": names}


def guard(kind: str = "mixed_lora", *, steps: int = 150, ls_steps: int = 70, eval_prompts: int = 512,
          sft_steps: int = 100, num_weights: int = 3, cache_dir: str | None = None) -> dict:
    """The CI guard's measurement (a shortened tiny default): spread of ``kind``'s front (``num_weights`` points
    ``w = (i/(n−1), 1 − i/(n−1))``) per objective as a fraction of the DPO-LS endpoints' spread (both trained here,
    from the same π_0).

    The task, decoder, LoRA, β, batch and learning rate are the experiment's defaults; SFT, the training runs, the
    held-out prompts and the sweep are shortened.
    """
    from experiments import cos_dpo_llm as exp

    config = exp.Config(progress=False, sft=dataclasses.replace(exp.Config().sft, steps=sft_steps),
                        cache_dir=cache_dir)
    pi0, train, held = setup(config, eval_prompts=eval_prompts)
    weights = exp.sweep_weights(num_weights)
    ends = {0: weights[0], len(weights) - 1: weights[-1]}
    models, ls_seconds = train_dpo_ls(config, pi0, train, ends, steps=ls_steps)
    ls = {i: point(m, weights[i], held, config) for i, m in models.items()}
    ls_span = np.abs(ls[len(weights) - 1] - ls[0])
    model, seconds = train_conditioned(kind, config, pi0, train, steps=steps)
    front = np.stack([point(model, w, held, config) for w in weights])
    return {**summary(front, seconds, ls_span), "dpo_ls_endpoint_spread": ls_span.tolist(),
            "dpo_ls_seconds": float(sum(ls_seconds.values()))}


def table(results: dict) -> list[dict]:
    """Rows (one per method, means over seeds with the seed range) for the report."""
    rows = []
    seeds = results["seeds"]
    ls_hv = [s["dpo_ls"]["hypervolume"] for s in seeds]
    ls_sec = [s["dpo_ls"]["seconds"] for s in seeds]
    rows.append({"method": f"DPO-LS ({len(seeds[0]['dpo_ls']['run_seconds'])} runs)", "range fraction": "1, 1",
                 "HV": _mr(ls_hv), "HV ratio": "1",
                 "train s": _mr(ls_sec), "time ratio": "1"})
    for name in results["conditionings"]:
        ms = [s["methods"][name] for s in seeds]
        frac = np.asarray([m["spread_fraction_of_dpo_ls"] for m in ms])
        rows.append({"method": name, "range fraction": ", ".join(_mr(frac[:, k], pct=True) for k in range(2)),
                     "HV": _mr([m["hypervolume"] for m in ms]), "HV ratio": _mr([m["hv_ratio"] for m in ms]),
                     "train s": _mr([m["seconds"] for m in ms]), "time ratio": _mr([m["time_ratio"] for m in ms])})
    return rows


def _mr(values, pct: bool = False) -> str:
    v = np.asarray(values, np.float64)
    f = (lambda x: f"{x:.0%}") if pct else (lambda x: f"{x:.4g}")
    return f(v.mean()) if len(v) == 1 else f"{f(v.mean())} ({f(v.min())}–{f(v.max())})"


def run_comparison(config: Any, run_dir) -> Any:
    """``--compare-conditionings``: run :func:`compare`, write ``metrics.json`` (with the verdict), ``fronts.png``
    (the first seed's fronts) and ``report.md``; returns ``run_dir``."""
    from experiments import cos_dpo_llm as exp
    from experiments._common import command_line, plot_pareto_fronts, save_metrics, write_report

    results = compare(config, num_seeds=config.num_seeds, smoke=config.smoke,
                      log=(lambda *a: print(*a, flush=True)) if config.progress else (lambda *a: None))
    names = [config.task.objectives[k] for k in config.objectives]
    weights = exp.sweep_weights(config.num_weights)
    results.update(objectives=names, reference_point=list(config.reference_point), weights=weights)
    save_metrics(run_dir, results)
    first = results["seeds"][0]
    fronts = {"DPO-LS": np.asarray(first["dpo_ls"]["front"]),
              **{n: np.asarray(first["methods"][n]["front"]) for n in results["conditionings"]},
              "π_0 (SFT)": np.asarray(first["base_point"])[None]}
    plot_pareto_fronts(run_dir / "fronts.png", fronts, objective_names=names, reference=None,
                       title=f"conditionings vs DPO-LS, seed {first['seed']}")
    verdict = Verdict(**results["verdict"])
    what = (f"Tiny synthetic default: objectives {names}; per seed {config.num_train_pairs} training pairs, "
            f"{results['eval_prompts']} held-out prompts; DPO-LS {config.num_weights} runs x {config.train.steps} "
            f"steps; one W-COS-DPO run of {config.cos_steps} steps per conditioning; {config.num_seeds} seed(s). "
            f"Range = max - min over the {config.num_weights} sweep points per objective; HV reference "
            f"{list(config.reference_point)}; seconds include compilation.")
    claim = (f"Best conditioning: {results['best']}. " + verdict.test + ".")
    write_report(run_dir, title="COS-DPO conditionings vs DPO-LS (tiny default)", what_ran=what,
                 command=command_line(), tables={"Conditionings (mean over seeds, seed range)": table(results)},
                 plots=[("fronts.png", "fronts of the first seed")], claim=claim, verdict=verdict)
    return run_dir


def markdown_rows(results: dict) -> str:
    """:func:`table` as Markdown."""
    from experiments._report import markdown_table

    return markdown_table(table(results))
