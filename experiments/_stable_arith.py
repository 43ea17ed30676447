"""A synthetic reasoning task with verifiable answers for the Stable PO experiment: column addition with a worked
answer, character-level.

Prompt ``"237+348="`` (operands zero-padded to ``digits`` digits); the chosen (correct) response is the column sums
from the right, each as two digits (incoming carry included), then ``>`` and the answer::

    237+348=  →  15,08,05>585

(7+8 = 15, carry 1; 3+4+1 = 08; 2+3 = 05; answer 585; a final carry adds a leading 1). The rejected response is a
*near miss*: one column's sum is off by one — either a random ±1 slip or, when the column receives a carry, the
carry dropped (−1) — reflected in that column's answer digit and nowhere else, so the two responses differ in
exactly two characters and the rejected final answer is wrong. This is the regime of the Stable PO paper: the chosen
answer is the correct one, so probability mass that DPO moves off it goes to wrong answers.

Vocabulary: PAD, BOS, EOS, ``0``–``9``, ``+``, ``=``, ``,``, ``>`` (17 ids). Pure NumPy; the greedy exact-match
scorer decodes with :func:`mojax.models.generate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from experiments._lm_data import PairData

__all__ = ["ArithmeticTask", "CHARS", "PAD", "BOS", "EOS", "VOCAB_SIZE", "Problems", "decode", "encode",
           "exact_match", "greedy_answers", "make_problems", "near_miss", "pair_data", "sft_data", "worked_answer"]

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+=,>"
VOCAB_SIZE = 3 + len(CHARS)
_ID = {c: i + 3 for i, c in enumerate(CHARS)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArithmeticTask:
    """Column addition of two ``digits``-digit numbers with a worked answer."""

    digits: int = 3
    """Digits per operand (1–6)."""

    def __post_init__(self):
        if not 1 <= self.digits <= 6:
            raise ValueError(f"digits must be in [1, 6], got {self.digits}")

    @property
    def prompt_length(self) -> int:
        """BOS + ``a+b=``."""
        return 2 * self.digits + 3

    @property
    def response_length(self) -> int:
        """Longest response in tokens: column sums (3 chars each, the last without a comma), ``>``, the answer
        (up to digits + 1), EOS."""
        return 3 * self.digits - 1 + 1 + self.digits + 1 + 1

    @property
    def width(self) -> int:
        """Row width: the power of two ≥ prompt + longest response."""
        need = self.prompt_length + self.response_length
        return 1 << (need - 1).bit_length()


def encode(text: str) -> list[int]:
    """Character ids of ``text`` (no BOS/EOS)."""
    return [_ID[c] for c in text]


def decode(ids: Sequence[int]) -> str:
    """Text of ``ids`` up to the first EOS (PAD/BOS dropped); an id outside the vocabulary becomes ``?``."""
    out = []
    for t in ids:
        t = int(t)
        if t == EOS:
            break
        if t in (PAD, BOS):
            continue
        out.append(CHARS[t - 3] if 3 <= t < VOCAB_SIZE else "?")
    return "".join(out)


def _columns(a: int, b: int, digits: int) -> tuple[list[int], int]:
    """Column sums from the right (incoming carry included) and the final carry."""
    sums, carry = [], 0
    for j in range(digits):
        s = (a // 10 ** j) % 10 + (b // 10 ** j) % 10 + carry
        sums.append(s)
        carry = s // 10
    return sums, carry


def _render(sums: Sequence[int], carry: int) -> str:
    digits = "".join(str(s % 10) for s in reversed(sums))
    return ",".join(f"{s:02d}" for s in sums) + ">" + ("1" if carry else "") + digits


def worked_answer(a: int, b: int, digits: int) -> str:
    """The correct response text, e.g. ``worked_answer(237, 348, 3) == "15,08,05>585"``."""
    sums, carry = _columns(a, b, digits)
    return _render(sums, carry)


def answer_of(text: str) -> str | None:
    """The final answer of a response (the part after the last ``>``), or None when there is none."""
    return text.rsplit(">", 1)[1] if ">" in text else None


def near_miss(a: int, b: int, digits: int, rng: np.random.Generator) -> str:
    """A minimally wrong response: one column sum off by one (a ±1 slip, or a dropped incoming carry), its answer
    digit changed to match, nothing else (two characters differ from :func:`worked_answer`)."""
    sums, carry = _columns(a, b, digits)
    carried = [j for j in range(1, digits) if sums[j - 1] >= 10 and sums[j] % 10 >= 1]
    if carried and rng.random() < 0.5:
        j, delta = int(rng.choice(carried)), -1  # the carry into column j dropped
    else:
        j = int(rng.integers(digits))
        ones = sums[j] % 10
        options = [d for d in (-1, 1) if 0 <= ones + d <= 9]  # stay within the ones digit: no new carry
        delta = int(rng.choice(options))
    wrong = list(sums)
    wrong[j] += delta
    return _render(wrong, carry)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Problems:
    """Operand pairs ``a``, ``b`` ``[P]`` (int64)."""

    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def make_problems(task: ArithmeticTask, *, num_train: int, num_eval: int, seed: int = 0) -> tuple[Problems, Problems]:
    """Disjoint train and held-out problem sets, drawn without replacement from all ``10^(2·digits)`` pairs."""
    space = 10 ** (2 * task.digits)
    if num_train + num_eval > space:
        raise ValueError(f"{num_train} + {num_eval} problems exceed the {space} distinct {task.digits}-digit sums")
    rng = np.random.default_rng(seed)
    idx = rng.choice(space, size=num_train + num_eval, replace=False).astype(np.int64)
    base = 10 ** task.digits
    a, b = idx // base, idx % base
    return Problems(a=a[:num_train], b=b[:num_train]), Problems(a=a[num_train:], b=b[num_train:])


def prompt_text(a: int, b: int, digits: int) -> str:
    """``"037+048="``."""
    return f"{a:0{digits}d}+{b:0{digits}d}="


def prompt_ids(task: ArithmeticTask, problems: Problems) -> list[np.ndarray]:
    """BOS + prompt ids of each problem."""
    return [np.array([BOS] + encode(prompt_text(int(a), int(b), task.digits)), np.int32)
            for a, b in zip(problems.a, problems.b)]


def _rows(task: ArithmeticTask, problems: Problems, responses: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    n = len(responses[0]) if responses else 1
    e, t = len(problems), task.width
    ids = np.full((e, n, t), PAD, np.int32)
    attn = np.zeros((e, n, t), np.int32)
    mask = np.zeros((e, n, t), bool)
    for i, (p, rs) in enumerate(zip(prompt_ids(task, problems), responses)):
        for j, r in enumerate(rs):
            row = list(p) + encode(r) + [EOS]
            ids[i, j, :len(row)] = row
            attn[i, j, :len(row)] = 1
            mask[i, j, len(p):len(row)] = True  # the response and its EOS are scored
    labels = np.zeros((e, 1, n), np.float32)
    labels[:, 0, 0] = 1.0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "labels": labels,
            "dataset_id": np.zeros(e, np.int32), "example_mask": np.ones(e, bool)}


def pair_data(task: ArithmeticTask, problems: Problems, *, seed: int) -> PairData:
    """Preference pairs: response 0 the correct worked answer (chosen), response 1 a :func:`near_miss` (rejected)."""
    rng = np.random.default_rng(seed)
    responses = [(worked_answer(int(a), int(b), task.digits), near_miss(int(a), int(b), task.digits, rng))
                 for a, b in zip(problems.a, problems.b)]
    return PairData(arrays=_rows(task, problems, responses), prompts=prompt_ids(task, problems))


def sft_data(task: ArithmeticTask, problems: Problems) -> PairData:
    """SFT rows (N = 1): the correct worked answer of each problem."""
    responses = [(worked_answer(int(a), int(b), task.digits),) for a, b in zip(problems.a, problems.b)]
    return PairData(arrays=_rows(task, problems, responses), prompts=prompt_ids(task, problems))


def exact_match(responses: Sequence[str], problems: Problems, task: ArithmeticTask) -> np.ndarray:
    """``[P]`` bool: the response's final answer equals the correct one (the worked steps are not graded)."""
    want = [answer_of(worked_answer(int(a), int(b), task.digits)) for a, b in zip(problems.a, problems.b)]
    return np.array([answer_of(r) == w for r, w in zip(responses, want)], bool)


def greedy_answers(model, task: ArithmeticTask, problems: Problems, *, batch_size: int = 256) -> list[str]:
    """Greedy (argmax) decoding of every problem's response text, stopping at EOS."""
    import jax

    from experiments._lm_eval import left_pad
    from mojax.models import generate

    prompts = prompt_ids(task, problems)
    ids, mask = left_pad(prompts, PAD, width=task.prompt_length)
    out: list[str] = []
    n = len(prompts)
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size) % n  # full chunks: one compiled decoder per model graph
        gen = generate(model, ids[index], attention_mask=mask[index], max_new_tokens=task.response_length,
                       rng=jax.random.key(0), temperature=0.0, eos_id=EOS, pad_id=PAD)
        tokens = np.where(np.asarray(gen.mask), np.asarray(gen.tokens), PAD)
        out.extend(decode(row) for row in tokens[: min(batch_size, n - start)])
    return out
