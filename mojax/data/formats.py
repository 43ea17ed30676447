"""The record schemas :func:`~mojax.data.readers.read_preferences` understands: detection, parsing, chat rendering.

Every parser maps one JSON object to a :class:`Parsed` (prompt text, response texts, labels ``[K, N]``; or token ids
for ``"tokenized"``) or raises :class:`Skip` with a reason of :data:`~mojax.data.report.SKIP_REASONS`. Formats
whose records are chat messages (``chat``, ``sharegpt``, ``alpaca``, ``ultrafeedback``, ``openai``) are normalised
to ``{"role", "content"}`` messages and rendered by :func:`render_chat`: with the tokenizer's chat template when it
has one, else a plain ``"role: content"`` fallback (a warning says so once per file). The schemas, one example
record each, the detection rule and the bad-record reasons are in ``docs/data-formats.md``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FORMATS", "FORMAT_KEYS", "HH_ASSISTANT", "Parsed", "Skip", "detect_format", "render_chat",
           "split_hh_transcript", "PARSERS", "PLAIN_CHAT_FALLBACK", "labels_array"]

HH_ASSISTANT = "\n\nAssistant:"
PLAIN_CHAT_FALLBACK = "'role: content' turns separated by blank lines, then 'assistant: '"

#: Each format with the keys that identify it (for messages that list what exists).
FORMAT_KEYS = {
    "pairs": "prompt, chosen, rejected (strings)",
    "chat": "chosen, rejected (lists of {role, content} messages) [, prompt]",
    "hh": "chosen, rejected (HH-RLHF transcripts with '\\n\\nAssistant:' turns)",
    "pku": "prompt, response_0, response_1, <name>_response_id",
    "listwise": "prompt, responses, labels",
    "tokenized": "prompt_ids, response_ids [, labels]",
    "sharegpt": "conversations (list of {from, value}) [, chosen, rejected, system]",
    "alpaca": "instruction, input, chosen, rejected (or output) [, system, history]",
    "ultrafeedback": "prompt or instruction with completions (scored), or chosen/rejected messages with "
                     "score_chosen/score_rejected",
    "openai": "messages (SFT), or input.messages with preferred_output / non_preferred_output",
}
FORMATS = tuple(FORMAT_KEYS)


class Skip(Exception):
    """A record that cannot be used: ``reason`` (a report reason) and a short ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Parsed(NamedTuple):
    """One parsed record: text (``prompt``, ``responses``) or token ids (``prompt_ids``, ``response_ids``)."""

    labels: np.ndarray
    prompt: str = ""
    responses: tuple[str, ...] = ()
    prompt_ids: list[int] | None = None
    response_ids: list[list[int]] | None = None


def labels_array(labels: Any, num_responses: int) -> np.ndarray:
    """``labels`` as finite float32 ``[K, N]`` (a ``[N]`` vector is one objective); ``ValueError`` otherwise."""
    try:
        arr = np.asarray(labels, dtype=np.float32)
    except (TypeError, OverflowError, RecursionError) as e:  # e.g. strings, dicts, 10**400, deep nesting
        raise ValueError(f"labels are not numbers: {type(e).__name__}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != num_responses:
        raise ValueError(f"labels must have shape [K, N={num_responses}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("labels must be finite")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# detection


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_msgs(x: Any) -> bool:
    return isinstance(x, list)


def detect_format(record: dict) -> str | None:
    """The schema of one record from its keys and value types, or None when none fits.

    Rules, first match wins: ``prompt_ids`` + ``response_ids`` → tokenized; ``response_0`` + ``response_1`` +
    ``*_response_id`` → pku; ``preferred_output`` + ``non_preferred_output`` → openai (preference); ``completions``
    → ultrafeedback; ``conversations`` → sharegpt; ``responses`` → listwise; ``instruction`` + (``chosen`` and
    ``rejected``, or ``output``) → alpaca; ``chosen`` + ``rejected`` with ``score_chosen`` + ``score_rejected`` →
    ultrafeedback; ``chosen`` + ``rejected`` with a message list among prompt / chosen / rejected → chat; strings
    with a ``prompt`` → pairs, without → hh; ``messages`` alone → openai (SFT).
    """
    keys = set(record)
    if {"prompt_ids", "response_ids"} <= keys:
        return "tokenized"
    if {"response_0", "response_1"} <= keys and any(k.endswith("_response_id") for k in keys):
        return "pku"
    if {"preferred_output", "non_preferred_output"} <= keys:
        return "openai"
    if "completions" in keys and ({"prompt", "instruction"} & keys):
        return "ultrafeedback"
    if _is_msgs(record.get("conversations")):
        return "sharegpt"
    if "responses" in keys:
        return "listwise"
    if "instruction" in keys and ({"chosen", "rejected"} <= keys or "output" in keys):
        return "alpaca"
    if {"chosen", "rejected"} <= keys:
        c, r = record["chosen"], record["rejected"]
        if {"score_chosen", "score_rejected"} <= keys and _is_msgs(c) and _is_msgs(r):
            return "ultrafeedback"
        if any(_is_msgs(record.get(k)) for k in ("prompt", "chosen", "rejected")):
            return "chat"
        if _is_str(c) and _is_str(r):
            return "pairs" if "prompt" in keys else "hh"
        return None  # e.g. chosen/rejected as single message dicts without a conversation: no format has that
    if _is_msgs(record.get("messages")):
        return "openai"
    return None


def describe_shape(record: dict) -> str:
    """``key: type`` for the first keys of ``record`` (for 'fits no format' messages)."""
    parts = [f"{k!r}: {type(v).__name__}" for k, v in list(record.items())[:8]]
    return "{" + ", ".join(parts) + (", ..." if len(record) > 8 else "") + "}"


# ---------------------------------------------------------------------------------------------------------------
# fields and messages


def _get(record: dict, key: str) -> Any:
    value = record.get(key)
    if value is None:
        raise Skip("missing_field", f"missing {key!r}")
    return value


def _text(record: dict, key: str) -> str:
    value = _get(record, key)
    if not isinstance(value, str):
        raise Skip("bad_type", f"{key!r} is a {type(value).__name__}, expected a string")
    return value


def _check_responses(responses: Sequence[str], skip_identical: bool) -> None:
    for n, r in enumerate(responses):
        if not r.strip():
            raise Skip("empty_response", f"response {n} is empty")
    if skip_identical and len(set(responses)) < len(responses):
        raise Skip("identical_responses", "two responses are identical")


# ShareGPT / LLaMA-Factory speaker tags -> chat-template roles ("function_call" is the assistant calling a tool,
# "observation" the tool's answer).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "bot": "assistant", "chatgpt": "assistant", "system": "system", "function_call": "assistant",
                  "observation": "tool", "tool": "tool", "function": "tool"}


def _content(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI content parts: [{"type": "text", "text": ...}, ...]; only text parts can become tokens here.
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"),
                                                                                                     str)
                                       for p in value):
        return "".join(p["text"] for p in value)
    raise Skip("bad_type", f"a message of {key!r} has {type(value).__name__} content, expected text")


def _message(m: Any, key: str) -> dict:
    if isinstance(m, dict) and "role" in m and "content" in m:
        if not isinstance(m["role"], str):
            raise Skip("bad_type", f"a message of {key!r} has a non-string role")
        return {"role": m["role"], "content": _content(m["content"], key)}
    if isinstance(m, dict) and "from" in m and "value" in m:
        role = SHAREGPT_ROLES.get(m["from"]) if isinstance(m["from"], str) else None
        if role is None:
            raise Skip("bad_type", f"a message of {key!r} is from {m['from']!r}, not one of {sorted(SHAREGPT_ROLES)}")
        return {"role": role, "content": _content(m["value"], key)}
    raise Skip("bad_type", f"{key!r} must hold {{role, content}} or {{from, value}} messages")


def _messages(value: Any, key: str, default_role: str = "assistant") -> list[dict]:
    """A string (one message of ``default_role``), one message dict, or a list of messages → messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [_message(value, key)]
    if not isinstance(value, list):
        raise Skip("bad_type", f"{key!r} is a {type(value).__name__}, expected messages")
    return [_message(m, key) for m in value]


def _plain(messages: Sequence[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages)


def render_chat(prompt: Sequence[dict], response: Sequence[dict], tokenizer: Any = None) -> tuple[str, str]:
    """Render a prompt (messages) and a response (messages) to ``(prompt_text, response_text)``.

    With a tokenizer that has a ``chat_template``: ``prompt_text`` is the template applied to the prompt with
    ``add_generation_prompt=True`` and ``response_text`` the rest of the template applied to prompt + response
    (falls back to the response content if the template does not extend the prompt rendering). Without one: the
    plain rendering ``"role: content\\n\\n"`` per prompt message + ``"assistant: "``, and the response messages'
    contents (later messages rendered as ``"\\n\\nrole: content"``).
    """
    if has_chat_template(tokenizer):
        p = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(prompt) + list(response), tokenize=False)
        if full.startswith(p):
            return p, full[len(p):]
        return p, "".join(m["content"] for m in response)
    text = response[0]["content"] + "".join(f"\n\n{m['role']}: {m['content']}" for m in response[1:])
    return _plain(prompt) + "assistant: ", text


def has_chat_template(tokenizer: Any) -> bool:
    """Whether chat records are rendered with ``tokenizer``'s own template (else the plain fallback)."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _chat(prompt: list[dict], responses: Sequence[list[dict]], labels: Any, cfg: Any, tokenizer: Any) -> Parsed:
    """Render a prompt and N responses (message lists) into a :class:`Parsed` example."""
    if any(not r for r in responses):
        raise Skip("empty_response", "a response has no messages")
    if any(not m["content"].strip() for r in responses for m in r):
        raise Skip("empty_response", "a response message is empty")
    texts = []
    try:
        for r in responses:
            p, t = render_chat(prompt, r, tokenizer)
            texts.append(t)
    except Skip:
        raise
    except Exception as e:  # a template's own check (jinja raises its own types), e.g. "roles must alternate"
        raise Skip("tokenizer_error", f"the chat template failed: {type(e).__name__}: {e}") from None
    _check_responses(texts, cfg.skip_identical)
    return Parsed(prompt=p, responses=tuple(texts), labels=labels_array(labels, len(texts)))


def _split_last_turn(conv: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    """A conversation ending in an assistant message → (everything before it, [that message])."""
    if not conv or conv[-1]["role"] != "assistant":
        raise Skip("missing_field", f"{key!r} does not end with an assistant message to train on")
    return conv[:-1], conv[-1:]


# ---------------------------------------------------------------------------------------------------------------
# parsers: (record, ReaderConfig, tokenizer, location) -> Parsed


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """Split an HH-RLHF transcript at its last ``"\\n\\nAssistant:"``: ``(prompt incl. the marker, final turn)``."""
    i = transcript.rfind(HH_ASSISTANT)
    if i < 0:
        raise Skip("malformed_transcript", "no '\\n\\nAssistant:' turn")
    cut = i + len(HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]


def _parse_pairs(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    prompt, chosen, rejected = _text(rec, "prompt"), _text(rec, "chosen"), _text(rec, "rejected")
    _check_responses((chosen, rejected), cfg.skip_identical)
    return Parsed(prompt=prompt, responses=(chosen, rejected), labels=labels_array([[1.0, 0.0]], 2))


def _strip_shared_prompt(prompt: list[dict], chosen: list[dict], rejected: list[dict]):
    # UltraFeedback-binarized style: chosen/rejected repeat the prompt's messages before the answer.
    n = len(prompt)
    if n and chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
        return chosen[n:], rejected[n:]
    return chosen, rejected


def _parse_chat(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    chosen = _messages(_get(rec, "chosen"), "chosen")
    rejected = _messages(_get(rec, "rejected"), "rejected")
    if rec.get("prompt") is not None:
        prompt = _messages(rec["prompt"], "prompt", default_role="user")
        chosen, rejected = _strip_shared_prompt(prompt, chosen, rejected)
    else:  # implicit prompt: whole conversations that differ only in the last message
        if not chosen or not rejected or chosen[:-1] != rejected[:-1]:
            raise Skip("prompt_mismatch", "chosen and rejected conversations differ before their last message")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    return _chat(prompt, (chosen, rejected), [[1.0, 0.0]], cfg, tokenizer)


def _parse_hh(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    # Split at the last marker inside the shared prefix: some HH responses themselves contain invented
    # "\n\nHuman: ... \n\nAssistant:" turns, which a plain rfind on one transcript would take as the prompt.
    shared = os.path.commonprefix([chosen, rejected])
    i = shared.rfind(HH_ASSISTANT)
    if i < 0:
        split_hh_transcript(chosen)  # raises malformed_transcript when a transcript has no assistant turn at all
        split_hh_transcript(rejected)
        raise Skip("prompt_mismatch", "chosen and rejected transcripts share no prompt ending in an Assistant turn")
    cut = i + len(HH_ASSISTANT)
    c, r = chosen[cut:], rejected[cut:]
    _check_responses((c, r), cfg.skip_identical)
    return Parsed(prompt=chosen[:cut], responses=(c, r), labels=labels_array([[1.0, 0.0]], 2))


def _parse_pku(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    prompt = _text(rec, "prompt")
    responses = (_text(rec, "response_0"), _text(rec, "response_1"))
    prefs = []
    for name in cfg.pku_objectives:
        v = _get(rec, f"{name}_response_id")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (0, 1):
            raise Skip("bad_label", f"{name}_response_id must be 0 or 1, got {v!r}"[:120])
        prefs.append(int(v))
    _check_responses(responses, cfg.skip_identical)
    first = prefs[0]  # the response preferred under objective 0 goes first
    order = (first, 1 - first)
    labels = [[1.0 if order[n] == p else 0.0 for n in range(2)] for p in prefs]
    return Parsed(prompt=prompt, responses=(responses[order[0]], responses[order[1]]), labels=labels_array(labels, 2))


def _parse_listwise(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    prompt = _text(rec, "prompt")
    responses = _get(rec, "responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses) or len(responses) < 2:
        raise Skip("bad_type", "'responses' must be a list of at least two strings")
    _check_responses(responses, cfg.skip_identical)
    try:
        labels = labels_array(_get(rec, "labels"), len(responses))
    except ValueError as e:
        raise Skip("bad_label", str(e)) from None
    return Parsed(prompt=prompt, responses=tuple(responses), labels=labels)


INT32_MAX = 2**31 - 1


def _ids(value: Any, key: str) -> list[int]:
    if not isinstance(value, list):
        raise Skip("bad_type", f"{key!r} must be a list of token ids")
    for t in value:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= INT32_MAX:
            shown = repr(t) if isinstance(t, (int, float, bool)) else type(t).__name__
            raise Skip("bad_token_id", f"{key!r} holds {shown[:40]}, not a token id in [0, 2**31 - 1]")
    return value


def _parse_tokenized(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    prompt = _ids(_get(rec, "prompt_ids"), "prompt_ids")
    responses = _get(rec, "response_ids")
    if not isinstance(responses, list) or len(responses) < 1:
        raise Skip("bad_type", "'response_ids' must be a list of token-id lists")
    responses = [_ids(r, "response_ids") for r in responses]
    if any(len(r) == 0 for r in responses):
        raise Skip("empty_response", "a response has no tokens")
    if cfg.skip_identical and len({tuple(r) for r in responses}) < len(responses):
        raise Skip("identical_responses", "two responses have identical token ids")
    default = [[1.0, 0.0]] if len(responses) == 2 else [[1.0] * len(responses)]
    try:
        labels = labels_array(rec["labels"] if rec.get("labels") is not None else default, len(responses))
    except ValueError as e:
        raise Skip("bad_label", str(e)) from None
    return Parsed(prompt_ids=prompt, response_ids=responses, labels=labels)


def _parse_sharegpt(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    conv = _messages(_get(rec, "conversations"), "conversations", default_role="user")
    system = rec.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise Skip("bad_type", f"'system' is a {type(system).__name__}, expected a string")
        if system.strip():
            conv = [{"role": "system", "content": system}] + conv
    if rec.get("chosen") is None and rec.get("rejected") is None:  # SFT: train on the last assistant turn
        prompt, response = _split_last_turn(conv, "conversations")
        return _chat(prompt, (response,), [[1.0]], cfg, tokenizer)
    chosen = _messages(_get(rec, "chosen"), "chosen")
    rejected = _messages(_get(rec, "rejected"), "rejected")
    return _chat(conv, (chosen, rejected), [[1.0, 0.0]], cfg, tokenizer)


def _parse_alpaca(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    instruction = _text(rec, "instruction")
    extra = rec.get("input")
    if extra is not None and not isinstance(extra, str):
        raise Skip("bad_type", f"'input' is a {type(extra).__name__}, expected a string")
    # LLaMA-Factory joins instruction and input with one newline.
    query = instruction + ("\n" + extra if extra and extra.strip() else "")
    prompt: list[dict] = []
    system = rec.get("system")
    if isinstance(system, str) and system.strip():
        prompt.append({"role": "system", "content": system})
    history = rec.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str)
                                                                                             for x in t)
                                                for t in history):
        raise Skip("bad_type", "'history' must be a list of [query, answer] string pairs")
    for q, a in history:
        prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    prompt.append({"role": "user", "content": query})
    if rec.get("chosen") is None and rec.get("rejected") is None:
        return _chat(prompt, ([{"role": "assistant", "content": _text(rec, "output")}],), [[1.0]], cfg, tokenizer)
    chosen, rejected = _messages(_get(rec, "chosen"), "chosen"), _messages(_get(rec, "rejected"), "rejected")
    return _chat(prompt, (chosen, rejected), [[1.0, 0.0]], cfg, tokenizer)


def _score(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Skip("bad_label", f"{what} is not a number")
    try:
        s = float(value)  # raw UltraFeedback stores some ratings as strings ("4")
    except (ValueError, OverflowError):
        raise Skip("bad_label", f"{what} is not a number: {str(value)[:40]!r}") from None
    if not np.isfinite(s):
        raise Skip("bad_label", f"{what} is not finite")
    return s


# UltraFeedback completion fields, in order of preference: the mean of the four aspect ratings (used by
# HuggingFaceH4/ultrafeedback_binarized after overall_score was found to be unreliable), then the critique's overall
# score, then a plain score.
_SCORE_KEYS = ("fine-grained_score", "overall_score", "score", "rating")
_TEXT_KEYS = ("response", "text", "content", "output")


def _completion(c: Any, i: int) -> tuple[list[dict], float]:
    if not isinstance(c, dict):
        raise Skip("bad_type", f"completion {i} is a {type(c).__name__}, expected an object")
    text_key = next((k for k in _TEXT_KEYS if c.get(k) is not None), None)
    if text_key is not None:
        msgs = _messages(c[text_key], f"completions[{i}]")
    elif c.get("messages") is not None:
        msgs = _messages(c["messages"], f"completions[{i}]")
    else:
        raise Skip("missing_field", f"completion {i} has no {' / '.join(_TEXT_KEYS)} / messages")
    score_key = next((k for k in _SCORE_KEYS if c.get(k) is not None), None)
    if score_key is None:
        raise Skip("missing_field", f"completion {i} has no score ({' / '.join(_SCORE_KEYS)})")
    return msgs, _score(c[score_key], f"completions[{i}].{score_key}")


def _parse_ultrafeedback(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    if rec.get("completions") is None:  # binarized: chosen / rejected message lists with their scores
        sc, sr = _score(_get(rec, "score_chosen"), "score_chosen"), _score(_get(rec, "score_rejected"),
                                                                           "score_rejected")
        if sc == sr:
            raise Skip("tied_scores", f"score_chosen == score_rejected == {sc}: no preference")
        if sc < sr:
            raise Skip("bad_label", f"score_chosen {sc} < score_rejected {sr}")
        return _parse_chat(rec, cfg, tokenizer, loc)
    key = "prompt" if rec.get("prompt") is not None else "instruction"
    prompt = _messages(_get(rec, key), key, default_role="user")
    comps = _get(rec, "completions")
    if not isinstance(comps, list):
        raise Skip("bad_type", f"'completions' is a {type(comps).__name__}, expected a list")
    scored = [_completion(c, i) for i, c in enumerate(comps)]
    if len(scored) < 2:
        raise Skip("missing_field", f"{len(scored)} completion(s): a pair needs two")
    best = max(range(len(scored)), key=lambda i: scored[i][1])  # first of the best on ties
    worse = [i for i in range(len(scored)) if scored[i][1] < scored[best][1]]
    if not worse:
        raise Skip("tied_scores", f"all {len(scored)} completions score {scored[best][1]}: no preference")
    # A random worse completion (as HuggingFaceH4's binarisation), seeded by the record's location: the same
    # file gives the same pairs in every run and on every host.
    rejected = random.Random(cfg.seed * 1_000_003 + loc).choice(worse)
    return _chat(prompt, (scored[best][0], scored[rejected][0]), [[1.0, 0.0]], cfg, tokenizer)


def _parse_openai(rec: dict, cfg: Any, tokenizer: Any, loc: int) -> Parsed:
    if rec.get("preferred_output") is None and rec.get("non_preferred_output") is None:  # chat SFT
        prompt, response = _split_last_turn(_messages(_get(rec, "messages"), "messages", "user"), "messages")
        return _chat(prompt, (response,), [[1.0]], cfg, tokenizer)
    inp = _get(rec, "input")
    if not isinstance(inp, dict):
        raise Skip("bad_type", f"'input' is a {type(inp).__name__}, expected an object with 'messages'")
    prompt = _messages(_get(inp, "messages"), "input.messages", default_role="user")
    chosen = _messages(_get(rec, "preferred_output"), "preferred_output")
    rejected = _messages(_get(rec, "non_preferred_output"), "non_preferred_output")
    return _chat(prompt, (chosen, rejected), [[1.0, 0.0]], cfg, tokenizer)


PARSERS: dict[str, Callable[[dict, Any, Any, int], Parsed]] = {
    "pairs": _parse_pairs, "chat": _parse_chat, "hh": _parse_hh, "pku": _parse_pku, "listwise": _parse_listwise,
    "tokenized": _parse_tokenized, "sharegpt": _parse_sharegpt, "alpaca": _parse_alpaca,
    "ultrafeedback": _parse_ultrafeedback, "openai": _parse_openai,
}

#: Formats whose records are chat messages (rendered with the tokenizer's chat template when it has one).
CHAT_FORMATS = frozenset({"chat", "sharegpt", "alpaca", "ultrafeedback", "openai"})
