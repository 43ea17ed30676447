"""GGUF (llama.cpp) checkpoints in: Llama-family weights dequantised on the host, the tokenizer and chat template
from the file's metadata.

A GGUF file is read with the ``gguf`` package (``pip install gguf``; the ``test`` extra has it), every tensor is
dequantised to float32 on the host with ``gguf.quants.dequantize`` (any type it implements: F32, F16, BF16, Q8_0,
Q4_0/Q4_1, the K-quants, ...), renamed to its Hugging Face name and handed, with an HF-style ``config.json`` dict
built from the metadata, to :func:`mojax.models.hf.from_hf_state` — so a GGUF model is placed on a mesh and
exported (:func:`~mojax.models.save_hf`) exactly like a Hugging Face one.

Two things differ from an HF checkpoint:

* llama.cpp's converter stores ``attn_q``/``attn_k`` (weights and biases) with each head's output rows permuted
  from rotate-half order ``[2, h/2]`` to interleaved pairs ``[h/2, 2]`` (``LlamaModel.permute`` in
  ``convert_hf_to_gguf.py``; ``attn_k`` with the KV-head count). :func:`gguf_to_hf` undoes it, as
  transformers' ``LlamaTensorProcessor._reverse_permute_weights`` does.
* A file without ``output.weight`` ties the output matrix to ``token_embd``.

Usage::

    from mojax.models import load_gguf, load_gguf_tokenizer, save_hf
    model = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")           # a Decoder, float32 parameters
    tok = load_gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")   # PreTrainedTokenizerFast + chat template
    save_hf(model, "out"); tok.save_pretrained("out")               # a plain HF checkpoint directory
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mojax.models.decoder import Decoder
from mojax.models.hf import from_hf_state

_MAGIC = b"GGUF"

# GGUF tensor name (after ``blk.N.``) -> Hugging Face name (after ``model.layers.N.``), for llama-architecture files.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")

# llama.cpp's pre-tokenizer regexes for byte-level BPE vocabularies (``llama-vocab.cpp``), by ``tokenizer.ggml.pre``.
# Each is a list of splits applied in order (every piece of one split is split again by the next).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    "default": [_GPT2_SPLIT], "gpt-2": [_GPT2_SPLIT], "gpt2": [_GPT2_SPLIT],
    # digits one at a time, then GPT-2's rule (SmolLM, StarCoder, Refact, Command-R, CodeShell, EXAONE)
    **{name: [r"\p{N}", _GPT2_SPLIT] for name in ("smollm", "starcoder", "refact", "command-r", "codeshell",
                                                   "exaone")},
    **{name: [_LLAMA3_SPLIT] for name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe")},
}


# ----------------------------------------------------------------------------------------------------------------
# reading


def _open(path: str | os.PathLike):
    """A ``gguf.GGUFReader`` on ``path``; a missing file raises ``FileNotFoundError``, anything that is not a
    readable GGUF file one ``ValueError`` naming the file (not a traceback from inside the reader)."""
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise ValueError(f"{path}: not a GGUF file (starts with {magic!r}, expected {_MAGIC!r})")
    try:
        reader = GGUFReader(path)
        for t in reader.tensors:  # the reader maps tensors lazily; touch each one's extent to catch truncation
            if t.data.size and t.data_offset + t.n_bytes > reader.data.size:
                raise ValueError(f"tensor {t.name!r} runs past the end of the file")
    except Exception as e:  # the reader raises IndexError/KeyError/struct errors/... on corrupt input
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    return reader


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _arch_key(reader, arch: str, key: str, default: Any = None) -> Any:
    return _field(reader, f"{arch}.{key}", default)


def hf_config_from_gguf(reader) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of an open llama-architecture GGUF file (``general.architecture ==
    "llama"``, which llama.cpp also uses for Mistral and Llama 2/3). Raises ``ValueError`` on anything
    :func:`mojax.models.hf.config_from_hf` could not represent (partial rotary, rope scaling other than linear,
    Llama-3 ``rope_freqs``)."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: llama)")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError("GGUF files with a rope_freqs tensor (Llama-3.1 rope scaling) are not supported")
    d = int(_arch_key(reader, arch, "embedding_length"))
    heads = int(_arch_key(reader, arch, "attention.head_count"))
    kv_heads = int(_arch_key(reader, arch, "attention.head_count_kv", heads))
    head_dim = int(_arch_key(reader, arch, "attention.key_length", d // heads))
    rot = int(_arch_key(reader, arch, "rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ValueError(f"rope.dimension_count {rot} != head size {head_dim} (partial rotary) is not supported")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight") if "token_embd.weight" in names else None
    vocab = _arch_key(reader, arch, "vocab_size") or (len(tokens.data) if tokens is not None else None)
    if vocab is None and embd is not None:
        vocab = int(embd.shape[-1])  # GGUF shapes are innermost-first: [D, V]
    rope: dict[str, Any] = {"rope_type": "default",
                            "rope_theta": float(_arch_key(reader, arch, "rope.freq_base", 10000.0))}
    scaling = _arch_key(reader, arch, "rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ValueError(f"GGUF rope scaling {scaling!r} is not supported (supported: none, linear)")
        rope.update(rope_type="linear", factor=float(_arch_key(reader, arch, "rope.scaling.factor")))
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(vocab), "hidden_size": d, "intermediate_size": int(_arch_key(reader, arch,
                                                                                        "feed_forward_length")),
        "num_hidden_layers": int(_arch_key(reader, arch, "block_count")), "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": int(_arch_key(reader, arch, "context_length", 2048)),
        "rms_norm_eps": float(_arch_key(reader, arch, "attention.layer_norm_rms_epsilon", 1e-5)),
        "hidden_act": "silu", "rope_parameters": rope,
        "attention_bias": any(n.endswith("attn_q.bias") for n in names),
        "mlp_bias": any(n.endswith("ffn_up.bias") for n in names),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of one q/k weight ``[n·h, in]`` (or bias ``[n·h]``): per head, rows
    from interleaved ``[h/2, 2]`` back to rotate-half ``[2, h/2]`` order."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The Hugging Face ``config.json`` dict and float32 tensors under their HF names (``model.layers.0.self_attn
    .q_proj.weight``, ``(out, in)`` layout, q/k un-permuted) of a llama-architecture GGUF file. Every tensor is
    dequantised on the host; an unknown tensor name or an unsupported quantisation raises ``ValueError``."""
    from gguf.quants import dequantize

    reader = _open(path)
    cfg = hf_config_from_gguf(reader)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        m = _BLOCK_RE.match(t.name)
        if m is not None and m.group(2) in _BLOCK_NAMES:
            layer, kind, suffix = int(m.group(1)), m.group(2), m.group(3)
            name = f"model.layers.{layer}.{_BLOCK_NAMES[kind]}.{suffix}"
        else:
            top = _TOP_RE.match(t.name)
            if top is None or top.group(1) not in _TOP_NAMES:
                raise ValueError(f"{path}: tensor {t.name!r} has no Hugging Face llama counterpart")
            kind, name = top.group(1), f"{_TOP_NAMES[top.group(1)]}.{top.group(2)}"
        try:
            arr = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        except NotImplementedError as e:
            raise ValueError(f"{path}: tensor {t.name!r}: {e}") from None
        if not np.isfinite(arr).all():  # a corrupt block scale decodes to inf/nan: refuse rather than load it
            raise ValueError(f"{path}: tensor {t.name!r} has non-finite values after dequantisation")
        # GGUF shapes list the innermost dimension first; dequantize returns the row-major (out, in) array.
        want = tuple(int(s) for s in reversed(t.shape))
        if arr.shape != want:
            arr = arr.reshape(want)
        if kind == "attn_q":
            arr = _unpermute(arr, heads)
        elif kind == "attn_k":
            arr = _unpermute(arr, kv_heads)
        out[name] = arr
    return cfg, out


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None) -> Decoder:
    """Load a llama-architecture GGUF checkpoint as a :class:`~mojax.models.Decoder` (float32 parameters,
    dequantised on the host), placed on ``mesh`` like :func:`~mojax.models.load_hf`.

    Args:
      path: the ``.gguf`` file.
      dtype: compute dtype of the model.
      mesh: place every weight straight onto its ``NamedSharding``.
    Returns:
      the model; its logits equal ``transformers``' ``from_pretrained(dir, gguf_file=name)`` to float32 precision.
      The tokenizer is :func:`load_gguf_tokenizer`; :func:`~mojax.models.save_hf` exports the model as safetensors.
    Raises:
      FileNotFoundError: no such file. ValueError: not a readable GGUF file, or an unsupported architecture,
      tensor or quantisation (the message names the file).
    """
    cfg, tensors = gguf_to_hf(path)
    try:
        return from_hf_state(cfg, tensors, dtype=dtype, mesh=mesh)
    except ValueError as e:  # config/shape mismatches: say which file
        raise ValueError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# tokenizer


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str):
    """A ``tokenizers.Tokenizer`` for llama.cpp's ``gpt2`` (byte-level BPE) vocabularies, with the pre-tokenizer
    llama.cpp uses for ``tokenizer.ggml.pre``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    splits = _PRE_SPLITS.get(pre)
    if splits is None:
        raise ValueError(f"GGUF byte-level tokenizer with pre-tokenizer {pre!r} is not supported "
                         f"(supported: {sorted(_PRE_SPLITS)})")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False,
                     ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def load_gguf_tokenizer(path: str | os.PathLike):
    """The tokenizer of a GGUF file as a ``transformers.PreTrainedTokenizerFast`` (no torch): vocabulary, merges,
    special tokens (bos/eos/unk/pad, control tokens kept whole) and ``chat_template`` from the metadata.

    Byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``: SmolLM, Llama 3, GPT-2, ...) are rebuilt with
    the pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre`` (for ``smollm``: digits one at a time, then
    GPT-2's split — as SmolLM's own ``tokenizer.json``). Other tokenizer models fall back to ``transformers``'
    ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``.
    """
    from transformers import PreTrainedTokenizerFast

    reader = _open(path)
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ValueError(f"{path}: GGUF file has no tokenizer (no tokenizer.ggml.model)")
    if model != "gpt2":
        from transformers import AutoTokenizer

        path = Path(path)
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges", [])
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    backend = _byte_level_bpe(tokens, merges, _field(reader, "tokenizer.ggml.pre", "default"))

    def token(key):
        i = _field(reader, f"tokenizer.ggml.{key}")
        return None if i is None or not 0 <= i < len(tokens) else tokens[i]

    # CONTROL (3) tokens are special and matched whole; USER_DEFINED (4) are matched whole but not special.
    special = [t for t, kind in zip(tokens, types) if kind == 3]
    user = [t for t, kind in zip(tokens, types) if kind == 4]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"), pad_token=token("padding_token_id"),
        additional_special_tokens=special, chat_template=_field(reader, "tokenizer.chat_template"),
        clean_up_tokenization_spaces=False)
    if user:
        tok.add_tokens(user)
    # llama.cpp's add_bos/add_eos flags: a post-processor adds them when set (SmolLM sets neither).
    add_bos, add_eos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False)), bool(
        _field(reader, "tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        from tokenizers import processors

        b = [(tok.bos_token, tok.bos_token_id)] if add_bos else []
        e = [(tok.eos_token, tok.eos_token_id)] if add_eos else []
        single = " ".join(([tok.bos_token] if add_bos else []) + ["$A"] + ([tok.eos_token] if add_eos else []))
        pair = single + " " + " ".join(["$B:1"] + ([tok.eos_token + ":1"] if add_eos else []))
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                             special_tokens=b + e)
    return tok
