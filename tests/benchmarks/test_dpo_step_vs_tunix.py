"""Fast checks of benchmarks/dpo_step_vs_tunix.py: the two batch layouts hold the same tokens, the mojax worker
trains the saved Hugging Face Llama for a few steps, and — only where Tunix is importable (this interpreter, or the
one named by ``MOJAX_TUNIX_PYTHON``) — the Tunix worker computes the same first-batch log-probs and losses."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import dpo_step_vs_tunix as bench  # noqa: E402


def test_layouts_hold_the_same_tokens():
    vocab, prompt, response = 50, 8, 12
    groups = [bench.make_examples(vocab, prompt, response, bench.PAIRS, seed=3)]
    mj = bench.mojax_batch(groups[0], prompt, response, pad=vocab - 1)
    tx = bench.tunix_batch(groups[0], prompt, response, pad=vocab - 1)
    assert mj["input_ids"].shape == (bench.PAIRS, 2, prompt + response)
    for b, e in enumerate(groups[0]):
        assert len(e["chosen"]) == response and response // 2 <= len(e["rejected"]) <= response
        assert prompt // 2 <= len(e["prompt"]) <= prompt
        for n, name in enumerate(("chosen", "rejected")):
            # Tunix's row = left-padded prompt + right-padded response: its real tokens, in order, are mojax's row
            row = np.concatenate([tx["prompt_ids"][b], tx[f"{name}_ids"][b]])
            keep = np.concatenate([tx["prompt_mask"][b], tx[f"{name}_mask"][b]]).astype(bool)
            assert row[keep].tolist() == mj["input_ids"][b, n][mj["attention_mask"][b, n].astype(bool)].tolist()
            # the loss positions are the response tokens on both sides
            assert mj["input_ids"][b, n][mj["loss_mask"][b, n]].tolist() == e[name]
            assert tx[f"{name}_ids"][b][tx[f"{name}_mask"][b].astype(bool)].tolist() == e[name]


def _args(tmp_path, role):
    return argparse.Namespace(role=role, config="tiny", model_dir=str(tmp_path / "model"), steps=1, warmup=1,
                              lr=1e-3)


def _tunix_python() -> str | None:
    if importlib.util.find_spec("tunix") is not None:
        return sys.executable
    peer = os.environ.get("MOJAX_TUNIX_PYTHON")
    return peer if peer and os.access(peer, os.X_OK) else None


@pytest.mark.slow
def test_mojax_worker_trains_and_tunix_agrees_where_installed(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.setitem(bench.STEP_FACTOR, "tiny", 2)  # 1 warm-up + 2 timed steps: fast
    prep = bench.role_prepare(_args(tmp_path, "prepare"))
    assert prep["params"] > 0
    out = bench.role_mojax(_args(tmp_path, "mojax"))
    assert len(out["step_s"]) == 2 and all(s > 0 for s in out["step_s"]) and out["compile_s"] > 0
    assert len(out["loss"]) == 3 and all(math.isfinite(v) for v in out["loss"])
    assert abs(out["loss"][0] - math.log(2)) < 1e-6  # policy == reference before the first update
    assert out["loss"][2] != out["loss"][0]  # it trained
    # The first chosen log-prob is the mean over pairs of the summed response log-probs of the HF model: check it
    # against transformers (PyTorch) on the same batch.
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    vocab, *_, prompt, response = bench.CONFIGS["tiny"]
    batch = bench.mojax_batch(bench.batches_for("tiny", 1)[0], prompt, response, pad=vocab - 1)
    ids = torch.as_tensor(batch["input_ids"][:, 0].astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"][:, 0])).logits
    logp = torch.log_softmax(logits.double()[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    ref = float((logp * torch.as_tensor(batch["loss_mask"][:, 0, 1:])).sum(-1).mean())
    assert abs(out["chosen_logps"][0] - ref) <= 1e-4 * abs(ref)

    peer = _tunix_python()
    if peer is None:
        pytest.skip("google-tunix is not importable here (set MOJAX_TUNIX_PYTHON to a Python that has it)")
    cmd = [peer, str(BENCH / "dpo_step_vs_tunix.py"), "--role", "tunix", "--config", "tiny", "--model-dir",
           str(tmp_path / "model"), "--steps", "1", "--warmup", "1", "--lr", "1e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    peer_out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(peer_out["chosen_logps"][0] - out["chosen_logps"][0]) <= 1e-4 * abs(ref)
    n = min(len(peer_out["loss"]), 2)  # Tunix's STEP_FACTOR is the script's own (10): compare the common steps
    assert n >= 2
    np.testing.assert_allclose(peer_out["loss"][:n], out["loss"][:n], atol=1e-4)
