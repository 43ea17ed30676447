"""Hugging Face checkpoints in and out, the llama2.c checkpoint format, and tokenizers.

The per-family knowledge (config mapping, weight names and layouts) lives in :mod:`mojax.models.families`, one
module per family; this module reads and writes files and places weights. Import and export both go through the
family's one weight table.

* llama2.c (Karpathy) rotates *interleaved* pairs ``(2i, 2i+1)`` of each head; Hugging Face and mojax rotate halves
  ``(i, i + h/2)``. Permuting each head's output rows of ``wq``/``wk`` from ``[pair, 2]`` to ``[2, pair]`` order
  maps one onto the other (the permutation in HF's ``convert_llama_weights_to_hf.py``); q·k is invariant because
  q and k are permuted alike.

Safetensors files are read with a small memory-mapped reader (no torch; bf16 via ``ml_dtypes``), so a weight is
read from disk only when placed, straight onto its sharding. Export writes the checkpoint's own dtype (bf16 stays
bf16) and splits large models into ``model-0000k-of-0000n.safetensors`` files plus
``model.safetensors.index.json``, as ``transformers`` does.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from mojax.models import families
from mojax.models.config import DecoderConfig
from mojax.models.decoder import Decoder
from mojax.models.families import get_family
from mojax.sharding import state_shardings

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}



# ----------------------------------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only memory-mapped NumPy arrays (nothing is copied)."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buf = raw[8 + n + start: 8 + n + end]
        out[name] = buf.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights: dict[str, np.ndarray] = {}
        for name in files:
            weights.update(read_safetensors(path / name))
        return weights
    single = path / "model.safetensors"
    if single.exists():
        return read_safetensors(single)
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
                            "checkpoints are supported; convert .bin files with transformers first)")


# ----------------------------------------------------------------------------------------------------------------
# safetensors out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors (float32/float16/bfloat16/int arrays) as one ``.safetensors`` file, atomically (a temporary
    file renamed into place, so an interrupted write never leaves a truncated file under the final name)."""
    path = Path(path)
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    arrays = []
    for name, value in tensors.items():
        a = np.ascontiguousarray(value)
        if a.dtype not in names:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)


def parse_size(size: int | str) -> int:
    """Bytes of a size given as an int or a string like ``"5GB"`` (powers of 1000) or ``"500MiB"`` (of 1024),
    as ``transformers``' ``max_shard_size``."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not m or (not m.group(2) and m.group(3)):
        raise ValueError(f"cannot read size {size!r} (e.g. 5GB, 500MB, 2GiB or a number of bytes)")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def _shard(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    """Consecutive groups of tensors of at most ``max_bytes`` each (a larger tensor gets a file of its own), in the
    order given: ``transformers``' (``huggingface_hub``'s) rule."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, a in tensors.items():
        if shards[-1] and size + a.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += a.nbytes
    return shards


# ----------------------------------------------------------------------------------------------------------------
# config.json <-> DecoderConfig, HF names <-> mojax paths: the family modules (mojax.models.families) hold both


def config_from_hf(cfg: dict, *, dtype=jnp.float32) -> DecoderConfig:
    """A :class:`DecoderConfig` from a Hugging Face ``config.json`` dict; raises ``ValueError`` on an unknown
    ``model_type`` or a feature its family module does not implement."""
    return families.config_from_hf(get_family(cfg.get("model_type")), cfg, dtype=dtype)


def config_to_hf(c: DecoderConfig, *, dtype: str = "float32") -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a :class:`DecoderConfig` whose tensors are stored in ``dtype``."""
    return families.config_to_hf(get_family(c.model_type), c, dtype=dtype)


@functools.lru_cache(maxsize=32)
def param_shapes(config: DecoderConfig) -> dict[tuple, tuple[int, ...]]:
    """``{path: shape}`` of every parameter of ``Decoder(config)``, computed abstractly (nothing allocated)."""
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract)))
    return {k: tuple(v.shape) for k, v in flat.items()}


def _weights_from_hf(c: DecoderConfig, hf: Mapping[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    return families.weights_from_hf(get_family(c.model_type), c, hf, param_shapes(c))


def _weights_to_hf(c: DecoderConfig, flat: Mapping[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    return families.weights_to_hf(get_family(c.model_type), c, flat)


def _checkpoint_dtype(tensors: Mapping[str, np.ndarray]) -> str | None:
    """The floating dtype most of a checkpoint's tensors are stored in (``None`` if it is not one mojax writes)."""
    counts: dict[str, int] = {}
    for a in tensors.values():
        name = np.dtype(a.dtype).name
        if name in ("float32", "bfloat16", "float16"):
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.get) if counts else None


# ----------------------------------------------------------------------------------------------------------------
# building a model from a flat weight dict


def param_shardings(model_or_state: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` per leaf of a model's (possibly abstract) state: the logical-axis rules of
    :mod:`mojax.sharding`, with mesh axes that do not divide a dimension dropped. Returns a pure nested dict."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return nnx.to_pure_dict(state_shardings(state, mesh))  # state_shardings already applies sharding.fit_spec


def _numpy_dtype(dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if jnp.dtype(dtype) == jnp.dtype(jnp.bfloat16) else np.dtype(dtype)


def model_from_weights(config: DecoderConfig, weights: dict[tuple, np.ndarray], *, mesh: Mesh | None = None
                       ) -> Decoder:
    """Build a :class:`Decoder` abstractly (``nnx.eval_shape``: nothing allocated) and fill it from ``{path: array}``,
    placing each array directly onto its sharding when ``mesh`` is given (only each device's slice is copied)."""
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    pure = nnx.to_pure_dict(abs_state)
    shardings = traverse_util.flatten_dict(param_shardings(abs_state, mesh)) if mesh is not None else None
    flat = traverse_util.flatten_dict(pure)
    missing = [k for k in flat if k not in weights]
    extra = [k for k in weights if k not in flat]
    if missing or extra:
        raise ValueError(f"weights do not match the {config.model_type} model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    filled = {}
    for key, sds in flat.items():
        arr = weights[key]
        if tuple(arr.shape) != tuple(sds.shape):
            raise ValueError(f"weight {'/'.join(map(str, key))} has shape {arr.shape}, model expects {sds.shape}")
        # The stored dtype is the config's param_dtype (float32 or bfloat16: ml_dtypes' NumPy bfloat16 converts
        # with round-to-nearest-even, as a device cast would).
        target = _numpy_dtype(sds.dtype)
        if shardings is None:
            filled[key] = jnp.asarray(np.asarray(arr, np.float32).astype(target))
        else:
            sh = shardings[key]
            filled[key] = jax.make_array_from_callback(
                tuple(arr.shape), sh, lambda idx, a=arr, t=target: np.asarray(a[idx], np.float32).astype(t))
    nnx.replace_by_pure_dict(abs_state, traverse_util.unflatten_dict(filled))
    return nnx.merge(graphdef, abs_state)


# ----------------------------------------------------------------------------------------------------------------
# public API


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None,
            param_dtype=jnp.float32) -> Decoder:
    """Load a Hugging Face causal LM from a local directory (``config.json`` + ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``), without torch.

    Supported ``model_type``: the family modules of :mod:`mojax.models.families` (gpt2, llama, mistral, qwen2,
    qwen3, gpt_neox, gemma2, gemma3_text; ``mojax.models.families.model_types()``); anything else, or a feature
    a family module does not implement, raises ``ValueError`` naming it.

    Args:
      path: checkpoint directory.
      dtype: compute dtype of the model.
      mesh: place every weight straight onto its ``NamedSharding`` (logical rules of :mod:`mojax.sharding`).
      param_dtype: storage dtype of the parameters (float32, or bfloat16: half the memory; see
        ``DecoderConfig.param_dtype``).
    Returns:
      a :class:`Decoder` whose logits match ``transformers``' to float32 precision.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no config.json")
    return from_hf_state(json.loads(cfg_path.read_text()), _read_checkpoint(path), dtype=dtype, mesh=mesh,
                         param_dtype=param_dtype)


def from_hf_state(hf_config: dict, tensors: Mapping[str, np.ndarray], *, dtype=jnp.float32,
                  mesh: Mesh | None = None, param_dtype=jnp.float32) -> Decoder:
    """A placed :class:`Decoder` from a Hugging Face ``config.json`` dict and its tensors under their Hugging Face
    names (``model.layers.0.self_attn.q_proj.weight``, ...; any float dtype, e.g. memory-mapped bf16).

    The common back end of :func:`load_hf` and of converters from other formats (GGUF): build the HF-style config
    and the HF-named tensors, then call this. ``dtype``, ``mesh`` and ``param_dtype`` are as in :func:`load_hf`.
    """
    config = config_from_hf(dict(hf_config), dtype=dtype).replace(checkpoint_dtype=_checkpoint_dtype(tensors),
                                                                  param_dtype=param_dtype)
    return model_from_weights(config, _weights_from_hf(config, tensors), mesh=mesh)


def flat_weights(model: Decoder, *, merge_lora: bool = True) -> dict[tuple, np.ndarray]:
    """The model's parameters as ``{path: float32 NumPy array}`` (LoRA adapters folded into their kernels unless
    ``merge_lora=False``, in which case adapter parameters are excluded)."""
    from mojax.models.lora import effective_kernels  # lora imports layers only; late import keeps hf→lora one-way

    params = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    if merge_lora:
        flat.update(effective_kernels(model))
    return flat


def save_hf(model: Decoder, path: str | os.PathLike, *, merge_lora: bool = True, dtype: Any = None,
            max_shard_size: int | str = "5GB") -> None:
    """Write ``config.json`` and safetensors weights that ``transformers.AutoModelForCausalLM.from_pretrained``
    loads with the same logits. LoRA adapters are folded into the exported weights (the model is not changed).

    Args:
      model: the :class:`Decoder` to export.
      path: output directory (created; earlier ``model*.safetensors`` files and index there are replaced).
      merge_lora: fold LoRA adapters into the kernels (``False``: export the base weights).
      dtype: the stored dtype (``"bfloat16"``, ``"float16"``, ``"float32"`` or a dtype); default the dtype of the
        checkpoint the model was loaded from (``config.checkpoint_dtype``), float32 for a fresh model.
      max_shard_size: largest file (bytes, or ``"5GB"``, ``"500MB"``, ...); a model above it is split into
        ``model-00001-of-0000n.safetensors`` files with a ``model.safetensors.index.json`` weight map.
    Raises:
      ValueError: a non-finite weight (nothing is written), or a config the family cannot express.
    """
    path = Path(path)
    c = model.config
    name = np.dtype(ml_dtypes.bfloat16 if str(dtype) == "bfloat16" else dtype).name if dtype is not None else (
        c.checkpoint_dtype or "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"save_hf writes float32, bfloat16 or float16, not {name}")
    hf_config = config_to_hf(c, dtype=name)
    flat = flat_weights(model, merge_lora=merge_lora)
    bad = [".".join(map(str, k)) for k, v in flat.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"refusing to export non-finite weights: {bad[:5]}")
    target = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
    tensors = {k: v.astype(target) for k, v in _weights_to_hf(c, flat).items()}
    path.mkdir(parents=True, exist_ok=True)
    for old in [*path.glob("model-*-of-*.safetensors"), path / "model.safetensors",
                path / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)  # a stale index or shard would shadow the new files on load
    shards = _shard(tensors, parse_size(max_shard_size))
    meta = {"format": "pt"}
    if len(shards) == 1:
        write_safetensors(path / "model.safetensors", shards[0], meta)
    else:
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(path / fname, shard, meta)
            weight_map.update(dict.fromkeys(shard, fname))
        index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))


def load_llama2c(path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None,
                 param_dtype=jnp.float32) -> Decoder:
    """Load a llama2.c (Karpathy) "version 0" checkpoint: a 7 × int32 header ``dim, hidden_dim, n_layers,
    n_heads, n_kv_heads, vocab_size, seq_len`` (negative vocab_size = untied classifier appended) followed by float32
    arrays ``token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real,
    freq_cis_imag[, wcls]``. Weights are ``(out, in)``; ``wq``/``wk`` rows are permuted from interleaved to
    rotate-half rotary layout. Rope theta 10000, RMSNorm eps 1e-5 (llama2.c's values)."""
    raw = np.fromfile(path, dtype=np.uint8)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28].tobytes())
    tied = vocab > 0
    vocab = abs(vocab)
    data = raw[28:].view(np.float32)
    h = dim // heads
    offset = 0

    def take(*shape):
        nonlocal offset
        n = int(np.prod(shape))
        if offset + n > data.size:
            raise ValueError(f"{path}: file too short for the header's sizes")
        out = data[offset: offset + n].reshape(shape)
        offset += n
        return out

    emb = take(vocab, dim)
    rms_att = take(layers, dim)
    wq, wk = take(layers, heads * h, dim), take(layers, kv_heads * h, dim)
    wv, wo = take(layers, kv_heads * h, dim), take(layers, dim, heads * h)
    rms_ffn = take(layers, dim)
    w1, w2, w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, h // 2)
    take(seq_len, h // 2)  # freq_cis real/imag: recomputed from theta
    wcls = None if tied else take(vocab, dim)
    if offset != data.size:
        raise ValueError(f"{path}: {data.size - offset} trailing floats; not a llama2.c version-0 checkpoint?")

    def permute(w, n):  # interleaved pairs -> rotate-half, per head, on the output rows
        return w.reshape(n, h // 2, 2, dim).transpose(0, 2, 1, 3).reshape(n * h, dim)

    config = DecoderConfig(model_type="llama", vocab_size=vocab, d_model=dim, num_layers=layers, num_heads=heads,
                           num_kv_heads=kv_heads, mlp_dim=hidden, max_positions=seq_len, norm_eps=1e-5,
                           tie_embeddings=tied, dtype=dtype, param_dtype=param_dtype)
    hf = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = permute(wq[i], heads)
        hf[p + "self_attn.k_proj.weight"] = permute(wk[i], kv_heads)
        hf[p + "self_attn.v_proj.weight"] = wv[i]
        hf[p + "self_attn.o_proj.weight"] = wo[i]
        hf[p + "mlp.gate_proj.weight"] = w1[i]
        hf[p + "mlp.down_proj.weight"] = w2[i]
        hf[p + "mlp.up_proj.weight"] = w3[i]
        hf[p + "input_layernorm.weight"] = rms_att[i]
        hf[p + "post_attention_layernorm.weight"] = rms_ffn[i]
    if wcls is not None:
        hf["lm_head.weight"] = wcls
    return model_from_weights(config, _weights_from_hf(config, hf), mesh=mesh)


def load_tokenizer(path: str | os.PathLike):
    """A ``transformers`` tokenizer from a Hugging Face directory (``tokenizer.json`` / ``vocab.json`` +
    ``merges.txt`` / ``tokenizer_config.json``) or from OpenAI's raw GPT-2 BPE layout (``encoder.json`` +
    ``vocab.bpe``, which are HF's ``vocab.json`` + ``merges.txt`` under other names)."""
    path = Path(path)
    if (path / "encoder.json").exists() and (path / "vocab.bpe").exists() and not (path / "vocab.json").exists():
        from transformers import GPT2TokenizerFast

        with tempfile.TemporaryDirectory() as tmp:  # the fast tokenizer is built in memory; the copies can go
            shutil.copy(path / "encoder.json", Path(tmp) / "vocab.json")
            shutil.copy(path / "vocab.bpe", Path(tmp) / "merges.txt")
            return GPT2TokenizerFast.from_pretrained(tmp)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a tokenizer directory")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
