"""CI guard (issue 11 §4): on the tiny default task of ``experiments/cos_dpo_llm.py`` one w-conditioned COS-DPO
model must trace a front, not collapse to a point — its 11-point spread in each objective is at least half the
spread between the DPO-LS endpoints trained from the same π_0 (shortened runs; the full comparison is
``python -m benchmarks.cos_dpo_conditioning``, docs/methods/cos-dpo-conditioning.md)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import cos_dpo_conditioning as bench


@pytest.mark.slow
def test_the_best_conditioning_spans_half_the_dpo_ls_endpoints(tmp_path):
    result = bench.guard("mixed_lora", cache_dir=str(tmp_path))
    span = np.asarray(result["dpo_ls_endpoint_spread"])
    assert (span > 0.02).all(), f"DPO-LS endpoints barely differ ({span}): the guard would measure noise"
    fraction = np.asarray(result["spread_fraction_of_dpo_ls"])
    print("guard:", {k: v for k, v in result.items() if k != "front"})
    assert (fraction >= 0.5).all(), (f"conditioned front collapsed: spread {result['spread']} is "
                                     f"{fraction} of DPO-LS's endpoint spread {span}")
    assert np.isfinite(result["hypervolume"]) and result["hypervolume"] > 0
