"""Evaluation of language-model policies: log-probs of fixed pairs, sampling scored by true rewards, win rates,
fronts.

:func:`pair_logps` (every response's summed log-prob, one compiled forward per model graph and width),
:func:`with_ref_logps` (cache earlier models' log-probs in the data: π_0 for DPO, π_0..π_{n−1} for SPO),
:func:`token_nll`, :func:`sample_and_score` (sample with :func:`mojax.models.generate` and score exactly with the
synthetic task's true rewards → ``[N, K]``), :func:`win_rates` (ties ½) and :func:`front_hypervolume`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments._lm_data import PairData
from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig
from mojax.losses import next_token_targets, sequence_logps_from_hidden
from mojax.metrics import hypervolume, pareto_front, win_rate
from mojax.models import ConditionedLM, generate

__all__ = [
    "at_weight",
    "front_hypervolume",
    "left_pad",
    "make_logps_fn",
    "pair_logps",
    "sample_and_score",
    "token_nll",
    "win_rates",
    "with_ref_logps",
]


@functools.partial(jax.jit, static_argnames=("graphdef", "use_lora"))
def _logps_jit(graphdef, state, input_ids, attention_mask, loss_mask, *, use_lora: bool):
    model = nnx.merge(graphdef, state)
    hidden = model(input_ids, attention_mask=attention_mask, return_hidden=True, use_lora=use_lora)
    targets, where = next_token_targets(input_ids, loss_mask)
    return sequence_logps_from_hidden(hidden, model.unembedding(), targets, where=where)


def make_logps_fn(model: nnx.Module, *, use_lora: bool = True) -> Callable[[Mapping[str, Any]], jax.Array]:
    """``batch -> logps [B, N]``: summed response log-probs of every response of a batch under ``model`` (jitted
    once per model graph and shape; the parameters are a traced argument, not constants)."""
    graphdef, state = nnx.split(model)

    def fn(batch: Mapping[str, Any]) -> jax.Array:
        return _logps_jit(graphdef, state, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                          jnp.asarray(batch["loss_mask"]), use_lora=use_lora)

    return fn


def pair_logps(model: nnx.Module, data: PairData, *, batch_size: int = 256, use_lora: bool = True) -> np.ndarray:
    """Log-probs ``[E, N]`` (float32 NumPy) of every response of ``data`` under ``model``, in data order.

    Chunks of exactly ``batch_size`` rows (a short last chunk is filled by repeating rows and the extra outputs
    dropped), so every call with the same row width reuses one compiled forward.
    """
    fn = make_logps_fn(model, use_lora=use_lora)
    n = len(data)
    bs = batch_size  # always full chunks (small sets repeat rows): one compiled shape per width for every caller
    out = []
    for start in range(0, n, bs):
        index = np.arange(start, start + bs) % n
        out.append(np.asarray(fn(data.batch(index)))[: min(bs, n - start)])
    return np.concatenate(out, axis=0)


def with_ref_logps(data: PairData, models: Sequence[nnx.Module], *, batch_size: int = 256,
                   use_lora: bool = True) -> PairData:
    """``data`` with ``ref_logps [E, R, N]``: log-probs of every response under each of the R ``models``.

    Computed once, in one pass per model, and reused by every step (the reference never changes during a run):
    π_0 for DPO/Stable PO, π_0..π_{n−1} for SPO's round n (row r = π_r).
    """
    if not models:
        raise ValueError("with_ref_logps needs at least one model")
    ref = np.stack([pair_logps(m, data, batch_size=batch_size, use_lora=use_lora) for m in models], axis=1)
    return dataclasses.replace(data, arrays={**data.arrays, "ref_logps": ref.astype(np.float32)})


def token_nll(model: nnx.Module, data: PairData, *, batch_size: int = 256) -> float:
    """Mean response-token NLL of ``data`` under ``model`` (nats/token; all responses of every example)."""
    logps = pair_logps(model, data, batch_size=batch_size)
    tokens = data.arrays["loss_mask"][..., 1:].sum(-1)  # a response token t is scored from position t−1
    return float(-logps.sum() / max(tokens.sum(), 1))


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = 0, *, width: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts into ``(ids [N, Tp] int32, mask [N, Tp] bool)`` for :func:`mojax.models.generate`;
    ``Tp`` = ``width`` (default: the longest prompt)."""
    longest = max(len(p) for p in prompts)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"a prompt has {longest} tokens, more than the width {width}")
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = True
    return ids, mask


def sample_and_score(model: nnx.Module, prompts: Sequence[np.ndarray], task: SyntheticLMConfig, *, seed: int,
                     temperature: float = 1.0, max_new_tokens: int | None = None, batch_size: int = 256,
                     use_lora: bool = True, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample one response per prompt from ``model`` and score it exactly with the task's true rewards.

    Decoding: :func:`mojax.models.generate` with a KV cache, ``temperature`` (0 = greedy), stopping at EOS, at most
    ``max_new_tokens`` (default: the task's longest response, EOS included). A response that never emits EOS is
    scored on the tokens it has. Prompt ``i`` uses the key ``fold_in(key(seed), chunk)`` of its chunk, so two
    models sampled with the same seed on the same prompts share their random numbers (a paired comparison).
    A :class:`~mojax.models.ConditionedLM` decodes its backbone after the prefix of ``weights`` (``[K]``).

    Returns:
      ``(responses [N, max_new_tokens] int32 (PAD after EOS), rewards [N, K] float32)``.
    """
    if not prompts:
        raise ValueError("sample_and_score needs at least one prompt")
    max_new = task.max_response_length if max_new_tokens is None else max_new_tokens
    ids, mask = left_pad(prompts, synthetic_lm.PAD, width=task.max_prompt_length)
    n = len(prompts)
    bs = batch_size  # full chunks of one shape (see pair_logps): one compiled decoder per model graph
    key = jax.random.key(seed)
    prefix = None
    if isinstance(model, ConditionedLM):
        if weights is None:
            raise ValueError("a ConditionedLM samples at given weights")
        prefix = model.hpt(jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (bs, model.hpt.config.num_objectives)))
        model = model.backbone
    chunks = []
    for c, start in enumerate(range(0, n, bs)):
        index = np.arange(start, start + bs) % n  # the last chunk is padded by repetition: one shape compiles
        out = generate(model, ids[index], attention_mask=mask[index], max_new_tokens=max_new,
                       rng=jax.random.fold_in(key, c), temperature=temperature, eos_id=synthetic_lm.EOS,
                       pad_id=synthetic_lm.PAD, prefix_embeds=prefix, use_lora=use_lora)
        tokens = np.where(np.asarray(out.mask), np.asarray(out.tokens), synthetic_lm.PAD)
        chunks.append(tokens[: min(bs, n - start)])
    responses = np.concatenate(chunks).astype(np.int32)
    rewards = np.asarray(synthetic_lm.true_rewards(ids, responses, task), np.float32)
    return responses, rewards


def win_rates(rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
    """Per-dimension win rate of A over B on the same prompts: ``mean([r_a > r_b] + ½[r_a = r_b])`` → ``[K]``.

    ``rewards_a``, ``rewards_b``: ``[N, K]`` judged scores (true rewards, or a reward model's) of the two policies'
    responses to the same N prompts. Identical policies give 0.5 in expectation.
    """
    a, b = np.asarray(rewards_a, np.float64), np.asarray(rewards_b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"rewards must both be [N, K], got {a.shape} and {b.shape}")
    return np.asarray(win_rate(a, b, ties=0.5), np.float64)


def front_hypervolume(points: np.ndarray, reference: Sequence[float]) -> tuple[np.ndarray, float]:
    """The non-dominated subset (maximisation) of ``points [n, K]`` and its exact hypervolume w.r.t. ``reference``.

    Used for weight sweeps: one point per weight (mean true rewards of the policy's samples).
    """
    pts = np.asarray(points, np.float64)
    front = np.asarray(pareto_front(pts, maximize=True))
    return front, float(hypervolume(pts, np.asarray(reference, np.float64), maximize=True))


class _FixedWeights(nnx.Module):
    """A :class:`ConditionedLM` pinned to one weight vector (for log-prob passes on ``[B, N, T]`` batches)."""

    def __init__(self, model: ConditionedLM, weights: np.ndarray):
        self.model = model
        self.weights = nnx.Variable(jnp.asarray(weights, jnp.float32)[None])

    def __call__(self, input_ids, *, attention_mask=None, return_hidden=False, use_lora=True):
        w = jnp.broadcast_to(self.weights[...], (input_ids.shape[0], self.weights.shape[-1]))
        return self.model(input_ids, weights=w, attention_mask=attention_mask, return_hidden=return_hidden,
                          use_lora=use_lora)

    def unembedding(self):
        return self.model.unembedding()


def at_weight(model: nnx.Module, weights: np.ndarray) -> nnx.Module:
    """``model`` as a plain LM (``[M, T] → hidden``) at weight ``weights`` (a ConditionedLM), else ``model``."""
    return _FixedWeights(model, weights) if isinstance(model, ConditionedLM) else model
