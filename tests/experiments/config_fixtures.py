"""A small nested frozen config shared by the experiment-harness tests (CLI parsing, JSON round trips)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.1, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cfg:
    steps: int = 100
    name: str = "x"
    inner: Inner = Inner()
    out: str | None = None
