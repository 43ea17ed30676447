"""Shared fixture of the LM-experiment tests: the quick presets' SFT policy π_0, fitted once per session and cached
where the quick experiment runs find it."""

from __future__ import annotations

import pytest

import experiments._lm_common as L
from lm_reference import MODEL, SFT, TASK


@pytest.fixture(scope="session")
def lm_sft(tmp_path_factory):
    """``(π_0, info, cache_dir)`` of the quick presets."""
    cache = tmp_path_factory.getbasetemp() / "lm_experiment_cache"  # shared with the quick experiment runs
    model, info = L.sft_policy(TASK, MODEL, SFT, cache_dir=cache, progress=False)
    return model, info, cache
