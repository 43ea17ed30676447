"""Shared fixtures of the LM-experiment tests: the quick presets' SFT policy π_0, fitted once per session and cached
where the quick experiment runs find it, and a runner of an experiment's --quick preset."""

from __future__ import annotations

import dataclasses
import json

import pytest

import experiments._lm_common as L
from lm_reference import MODEL, SFT, TASK


@pytest.fixture(scope="session")
def lm_sft(tmp_path_factory):
    """``(π_0, info, cache_dir)`` of the quick presets."""
    cache = tmp_path_factory.getbasetemp() / "lm_experiment_cache"  # shared with the quick experiment runs
    model, info = L.sft_policy(TASK, MODEL, SFT, cache_dir=cache, progress=False)
    return model, info, cache


@pytest.fixture(scope="session")
def run_quick(tmp_path_factory):
    """``run_quick(module) -> (config, run_dir, metrics)``: the experiment's ``--quick`` preset run into a fresh
    directory, sharing the session's SFT cache (same π_0 as :func:`lm_sft`)."""

    def run(module):
        name = module.__name__.rsplit(".", 1)[-1]
        cache = tmp_path_factory.getbasetemp() / "lm_experiment_cache"
        config = dataclasses.replace(module.get_config(quick=True), out=str(tmp_path_factory.mktemp(name)),
                                     cache_dir=str(cache))
        run_dir = module.main(config)
        return config, run_dir, json.loads((run_dir / "metrics.json").read_text())

    return run

