"""What the LM-experiment tests share: the quick presets' task, model and SFT, and an independent NumPy
re-derivation of the synthetic task's true rewards."""

from __future__ import annotations

import math

import numpy as np

import experiments._lm_common as L
from mojax.data import synthetic_lm
from mojax.data.synthetic_lm import SyntheticLMConfig

TASK = SyntheticLMConfig()
# The quick presets' model and SFT of the synthetic-task LM experiments (spo.py, cos_dpo_llm.py, more_rm.py;
# stable_po.py shares only the model: its task is arithmetic), so one SFT fit serves the whole session.
MODEL = L.QUICK_MODEL
SFT = L.QUICK_SFT


def numpy_rewards(prompt: np.ndarray, response: np.ndarray, task: SyntheticLMConfig) -> np.ndarray:
    """Independent re-derivation of the synthetic rewards from the task's definitions (float64)."""
    markers = [t for t in prompt if 4 <= t < 4 + task.num_topics]
    topic = markers[0] - 4 if markers else -1
    toks = []
    for t in response:
        if t == synthetic_lm.EOS:
            break
        if t != synthetic_lm.PAD:
            toks.append(int(t))
    n = max(len(toks), 1)
    c, c0 = task.tokens_per_class, task.content_start
    content = [t - c0 for t in toks if t >= c0]
    out = {"class_a": sum((o // c) % 3 == 0 for o in content) / n,
           "class_b": sum((o // c) % 3 == 1 for o in content) / n,
           "topic": sum(o // (3 * c) == topic for o in content) / n,
           "brevity": -len(toks) / task.response_max_len}
    return np.array([out[k] for k in task.objectives])


def finite(x) -> bool:
    """Every number in ``x`` (a number or nested lists) is finite."""
    return all(finite(v) for v in x) if isinstance(x, list) else isinstance(x, (int, float)) and math.isfinite(x)
