"""What a model family is: a Hugging Face config mapping and one weight table serving import and export.

A weight table is a tuple of rows ``(hf_name, mojax_path, transform)``:

* ``hf_name``: the tensor's full Hugging Face name, ``{i}`` standing for the layer index
  (``"model.layers.{i}.self_attn.q_proj.weight"``);
* ``mojax_path``: the parameter's dotted path in :class:`mojax.models.Decoder` (``"blocks.{i}.attn.q_proj.kernel"``),
  or a tuple of paths when one HF tensor holds several mojax parameters (GPT-2's fused ``c_attn``);
* ``transform``: a :class:`Transform`, the pair of functions between the two layouts.

A row applies when the model built from the config has its mojax parameter(s): biases, the untied ``lm_head``,
q/k norms and the like come and go with the config, so one table covers every variant of a family. Import
(:func:`weights_from_hf`) and export (:func:`weights_to_hf`) both walk the same rows, and both refuse a tensor or
parameter no row accounts for, so a table that forgets a weight fails loudly in both directions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mojax.models.config import DecoderConfig, RopeScaling

Path = tuple  # a flat mojax parameter path, e.g. ("blocks", 0, "attn", "q_proj", "kernel")


@dataclasses.dataclass(frozen=True)
class Transform:
    """Hugging Face layout ↔ mojax layout of one table row.

    Attributes:
      to_mojax: ``(hf_tensor, [mojax shapes]) -> [mojax arrays]`` (views of the input where possible, so a
        memory-mapped checkpoint is read only when each weight is placed).
      to_hf: ``[mojax arrays] -> hf_tensor``.
    """

    to_mojax: Callable[[np.ndarray, list[tuple[int, ...]]], list[np.ndarray]]
    to_hf: Callable[[list[np.ndarray]], np.ndarray]


def _flat2(a: np.ndarray, n_in: int) -> np.ndarray:
    return a.reshape(-1) if n_in == 0 else a.reshape(math.prod(a.shape[:n_in]), -1)


def reshape(n_in: int = 1) -> Transform:
    """Same element order: HF ``[in, out]`` (embeddings, GPT-2 ``Conv1D``) ↔ mojax ``[*in_shape, *out_shape]``
    (``n_in`` leading mojax dims make HF's first dim; ``n_in=0`` for vectors: biases, norm gains)."""
    return Transform(lambda a, shapes: [a.reshape(shapes[0])], lambda arrays: _flat2(arrays[0], n_in))


def linear(n_in: int = 1) -> Transform:
    """``nn.Linear`` weight ``[out, in]`` ↔ mojax kernel ``[*in_shape, *out_shape]``: a transpose (``n_in`` = the
    number of mojax input dims, 2 for ``o_proj [H, h, D]``)."""
    return Transform(lambda a, shapes: [a.T.reshape(shapes[0])], lambda arrays: _flat2(arrays[0], n_in).T)


def split(n_in: int = 1) -> Transform:
    """One HF tensor whose last axis concatenates several mojax parameters (GPT-2 ``c_attn``: q | k | v)."""

    def to_mojax(a, shapes):
        sizes = np.cumsum([math.prod(s[n_in:]) for s in shapes])[:-1]
        return [part.reshape(s) for part, s in zip(np.split(a, sizes, axis=-1), shapes)]

    return Transform(to_mojax, lambda arrays: np.concatenate([_flat2(x, n_in) for x in arrays], axis=-1))


SAME = reshape(1)  # 2-D tensors stored alike (embeddings)
VECTOR = reshape(0)  # biases and norm gains: [out] <-> [*out_shape]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """One Hugging Face model family.

    Attributes:
      model_type: HF ``model_type`` (the registry key).
      architecture: HF ``architectures[0]`` written on export (``"LlamaForCausalLM"``).
      weights: the weight table (see the module docstring).
      from_hf: HF ``config.json`` dict → the family's :class:`DecoderConfig` fields (sizes and switches; the special
        tokens, initializer range, tying and dtype are read by :func:`config_from_hf`). Raises ``ValueError`` on
        features mojax does not implement.
      to_hf: :class:`DecoderConfig` → the family's HF config fields; raises ``ValueError`` for a config the HF
        family cannot express (use :func:`require`).
      defaults: the family's fixed :class:`DecoderConfig` switches (used by ``DecoderConfig.tiny`` and presets).
      tiny: extra fields of ``DecoderConfig.tiny`` (e.g. GQA ``num_kv_heads=2``).
      sliding_pattern: every ``n``-th layer is global, the others slide (Gemma); ``None`` for no pattern.
      prefix: the base-model prefix of HF names (``"model."``): checkpoints of the bare base model omit it.
      tied_head: the HF name of the output matrix, dropped on import when embeddings are tied.
    """

    model_type: str
    architecture: str
    weights: tuple[tuple[str, str | tuple[str, ...], Transform], ...]
    from_hf: Callable[[dict], dict[str, Any]]
    to_hf: Callable[[DecoderConfig], dict[str, Any]]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tiny: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sliding_pattern: int | None = None
    prefix: str = "model."
    tied_head: str = "lm_head.weight"

    def layer_types(self, num_layers: int) -> tuple[str, ...]:
        """``sliding_pattern`` expanded: layer ``i`` is global when ``(i + 1) % n == 0`` (HF's rule)."""
        n = self.sliding_pattern
        return tuple("full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(num_layers))


# ---------------------------------------------------------------------------------------------------- config


def first_id(value):
    """A special-token id from a config value that may be a list (several EOS ids): its first entry."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def rope_from_hf(cfg: dict, params: dict | None = None) -> tuple[float, RopeScaling | None, dict]:
    """``(rope_theta, rope_scaling, merged params)`` from v5 ``rope_parameters`` or v4 ``rope_theta``/
    ``rope_scaling`` fields (``params`` overrides the config's own parameters, e.g. one layer type's)."""
    if params is None:
        params = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0))))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None, params
    if kind not in ("linear", "llama3", "yarn"):
        raise ValueError(f"rope type {kind!r} is not supported (supported: default, linear, llama3, yarn)")
    scaling = RopeScaling(
        type=kind, factor=params.get("factor"), low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        original_max_positions=params.get("original_max_position_embeddings"),
        beta_fast=params.get("beta_fast"), beta_slow=params.get("beta_slow"),
        attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"), truncate=params.get("truncate", True))
    return theta, scaling, params


def rope_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """HF v5 ``rope_parameters`` of a config's (global) rotary embedding."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    rs = c.rope_scaling
    if rs is not None:
        rope["rope_type"] = rs.type
        for key, value in (("factor", rs.factor), ("low_freq_factor", rs.low_freq_factor),
                           ("high_freq_factor", rs.high_freq_factor),
                           ("original_max_position_embeddings", rs.original_max_positions),
                           ("beta_fast", rs.beta_fast), ("beta_slow", rs.beta_slow),
                           ("attention_factor", rs.attention_factor), ("mscale", rs.mscale),
                           ("mscale_all_dim", rs.mscale_all_dim)):
            if value is not None:
                rope[key] = value
        if rs.type == "yarn":
            rope["truncate"] = rs.truncate
    return rope


def require(c: DecoderConfig, **expected) -> None:
    """Raise ``ValueError`` unless each named config field has the expected value (a tuple: one of them)."""
    for key, want in expected.items():
        got = getattr(c, key)
        ok = got in want if isinstance(want, tuple) else got == want
        if not ok:
            raise ValueError(f"cannot export a {c.model_type} config with {key}={got!r} (Hugging Face's "
                             f"{c.model_type} needs {want!r})")


def config_from_hf(fam: Family, cfg: dict, *, dtype) -> DecoderConfig:
    """A :class:`DecoderConfig` from an HF config dict: the family's fields plus the fields every family shares."""
    fields = dict(bos_token_id=first_id(cfg.get("bos_token_id")), eos_token_id=first_id(cfg.get("eos_token_id")),
                  pad_token_id=first_id(cfg.get("pad_token_id")),
                  initializer_range=cfg.get("initializer_range", 0.02),
                  tie_embeddings=cfg.get("tie_word_embeddings", fam.defaults.get("tie_embeddings", False)))
    fields.update(fam.from_hf(cfg))
    return DecoderConfig(model_type=fam.model_type, dtype=dtype, **fields)


def config_to_hf(fam: Family, c: DecoderConfig, *, dtype: str) -> dict[str, Any]:
    """The HF ``config.json`` dict of a :class:`DecoderConfig` (``dtype``: the tensors' dtype name)."""
    return dict(architectures=[fam.architecture], model_type=fam.model_type, bos_token_id=c.bos_token_id,
                eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, initializer_range=c.initializer_range,
                tie_word_embeddings=c.tie_embeddings, dtype=dtype, **fam.to_hf(c))


# ---------------------------------------------------------------------------------------------------- weights

# Buffers some checkpoints carry that are not weights (causal-mask tables, cached rotary frequencies).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")


def _path(dotted: str, i: int | None) -> Path:
    parts = dotted.format(i=i).split(".")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def expand(fam: Family, num_layers: int) -> list[tuple[str, tuple[Path, ...], Transform]]:
    """The table's rows for concrete layers: ``(hf_name, (mojax paths), transform)``."""
    rows = []
    for hf_name, paths, tf in fam.weights:
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        layers = range(num_layers) if "{i}" in hf_name else (None,)
        for i in layers:
            rows.append((hf_name.format(i=i), tuple(_path(p, i) for p in paths), tf))
    return rows


def weights_from_hf(fam: Family, c: DecoderConfig, tensors: Mapping[str, np.ndarray],
                    shapes: Mapping[Path, tuple[int, ...]]) -> dict[Path, np.ndarray]:
    """mojax ``{path: array}`` from HF-named tensors, by the family's table.

    Args:
      tensors: HF tensors (with or without the base-model ``prefix``); any dtype.
      shapes: every parameter path of the model built from ``c`` and its shape (decides which rows apply).
    Raises:
      ValueError: a tensor the model needs is missing, or the checkpoint holds a tensor no row uses.
    """
    rows = expand(fam, c.num_layers)
    known = {name for name, _, _ in rows}
    w = {}
    for key, value in tensors.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in known and fam.prefix + key in known:  # a bare base-model checkpoint
            key = fam.prefix + key
        w[key] = value
    if c.tie_embeddings:
        w.pop(fam.tied_head, None)  # a tied checkpoint may still store the (identical) output matrix
    out = {}
    for hf_name, paths, tf in rows:
        present = [p in shapes for p in paths]
        if not any(present):
            continue  # the row does not apply to this config (a bias that is off, the tied head, ...)
        if not all(present):
            raise ValueError(f"{fam.model_type} weight table row {hf_name!r}: only some of {paths} exist")
        if hf_name not in w:
            raise ValueError(f"the {fam.model_type} checkpoint has no {hf_name!r}")
        out.update(zip(paths, tf.to_mojax(w.pop(hf_name), [tuple(shapes[p]) for p in paths])))
    if w:
        raise ValueError(f"unexpected tensors in the {fam.model_type} checkpoint: {sorted(w)[:10]}")
    return out


def weights_to_hf(fam: Family, c: DecoderConfig, flat: Mapping[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-named tensors from a mojax flat ``{path: array}``, by the same table (in its row order)."""
    out = {}
    used = set()
    for hf_name, paths, tf in expand(fam, c.num_layers):
        present = [p in flat for p in paths]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"{fam.model_type} weight table row {hf_name!r}: only some of {paths} exist")
        out[hf_name] = np.ascontiguousarray(tf.to_hf([np.asarray(flat[p]) for p in paths]))
        used.update(paths)
    left = [".".join(map(str, p)) for p in flat if p not in used]
    if left:
        raise ValueError(f"the {fam.model_type} weight table has no row for {left[:5]}")
    return out
