"""Model families as data: one module per Hugging Face family, found by the registry.

Each public module of this package defines ``FAMILY``, a :class:`Family` (its HF config mapping and one weight
table used by both :func:`mojax.models.load_hf` and :func:`mojax.models.save_hf`); the registry maps its
``model_type`` to it. Adding a family is adding one file here (see ``docs/extending-model-family.md``).
"""

from __future__ import annotations

import importlib
import pkgutil

from mojax.models.families._base import (SAME, VECTOR, Family, Transform, config_from_hf, config_to_hf, linear,
                                         reshape, split, weights_from_hf, weights_to_hf)

_REGISTRY: dict[str, Family] = {}


def _discover() -> dict[str, Family]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            fam = importlib.import_module(f"{__name__}.{info.name}").FAMILY
            if fam.model_type in _REGISTRY:
                raise RuntimeError(f"two family modules define model_type {fam.model_type!r}")
            _REGISTRY[fam.model_type] = fam
    return _REGISTRY


def model_types() -> tuple[str, ...]:
    """The supported HF ``model_type`` values, sorted."""
    return tuple(sorted(_discover()))


def get_family(model_type: str) -> Family:
    """The :class:`Family` of a ``model_type``; ``ValueError`` naming the supported ones otherwise."""
    fams = _discover()
    if model_type not in fams:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(model_types())})")
    return fams[model_type]


__all__ = ["Family", "Transform", "SAME", "VECTOR", "linear", "reshape", "split", "get_family", "model_types",
           "config_from_hf", "config_to_hf", "weights_from_hf", "weights_to_hf"]
