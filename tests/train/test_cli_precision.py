"""The CLI's precision policy and full fine-tuning (issue 13 §4): ``--dtype bfloat16`` computes in bfloat16 with
float32 parameters and loss (agreement with float32 within a stated tolerance), ``--param-dtype bfloat16`` stores
the weights in bfloat16 with float32 master weights, and ``--finetune full`` trains every
weight against a frozen copy, sharded over ``fsdp × data`` with the same losses as on one device."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train_cli import _tokenizer, _write_pairs, gpt2_dir  # noqa: F401  (gpt2_dir: fixture)

# Tiny synthetic runs: the laptop default decoder, a few steps, no checkpoints.
COMMON = ["--num-pairs", "32", "--train.batch-size", "8", "--train.log-every", "1", "--train.no-progress",
          "--checkpoint.every-steps", "0", "--optimizer.learning-rate", "0.01"]

# bf16 vs f32 tolerance on the SFT loss (a mean token NLL ≈ 4.16): bfloat16 keeps 8 mantissa bits, so each matmul
# is good to ~0.4 %, and the token average cancels much of it; logits, norms and the log-softmax stay float32.
# Measured (2 shared CPU cores, 3 steps): max |Δ| = 3.3e-4; the bound is 5e-3 (0.12 % of the loss).
BF16_ATOL = 5e-3


def _losses(run_dir):
    return [json.loads(x)["loss"] for x in open(run_dir / "metrics.jsonl") if '"loss"' in x]


def test_bfloat16_compute_agrees_with_float32(tmp_path):
    import jax
    import jax.numpy as jnp

    from mojax.train.cli import main

    runs = {}
    for dtype in ("float32", "bfloat16"):
        result = main(["--method", "sft", "--dtype", dtype, "--train.steps", "2",
                       "--train.run-dir", str(tmp_path / dtype), *COMMON])
        runs[dtype] = np.asarray(_losses(tmp_path / dtype))
        # Parameters and optimizer state stay float32 (master weights); only the compute dtype changes.
        floats = {x.dtype for x in jax.tree.leaves((result.state.params, result.state.opt_state))
                  if jnp.issubdtype(x.dtype, jnp.floating)}
        assert floats == {jnp.dtype(jnp.float32)}, floats
        assert result.model().config.dtype == jnp.dtype(dtype)
    f32, bf16 = runs["float32"], runs["bfloat16"]
    assert len(f32) == len(bf16) == 2 and np.isfinite(bf16).all()
    assert np.abs(bf16 - f32).max() <= BF16_ATOL, (f32, bf16)
    assert np.abs(bf16 - f32).max() > 1e-6, "bfloat16 compute had no effect"  # the flag reached the model

    # --param-dtype bfloat16: the (frozen) base weights stored in bfloat16 — the float32 model's, rounded — while
    # the LoRA adapters and their optimizer state stay float32; loss within the same tolerance of the float32 run.
    # (Master weights for bfloat16 *trained* weights: tests/train/test_precision.py.)
    result = main(["--method", "sft", "--dtype", "bfloat16", "--param-dtype", "bfloat16", "--train.steps", "2",
                   "--train.run-dir", str(tmp_path / "bf16-params"), *COMMON])
    half = np.asarray(_losses(tmp_path / "bf16-params"))
    floats = lambda tree: {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}  # noqa
    assert floats(result.state.rest) == {jnp.dtype(jnp.bfloat16)}
    assert floats((result.state.params, result.state.opt_state)) == {jnp.dtype(jnp.float32)}
    assert result.model().config.param_dtype == jnp.dtype(jnp.bfloat16)
    assert len(half) == 2 and np.isfinite(half).all() and np.abs(half - f32).max() <= BF16_ATOL, (f32, half)


_MULTI = """
import contextlib, io, json, sys
import jax
from mojax.train.cli import main
args = json.loads(sys.argv[1])
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:  # 6 examples per step cannot split over data x fsdp = 4 devices: mojax's one-line error, exit 2
        main(args + ["--train.batch-size", "6", "--train.run-dir", sys.argv[2] + "/odd"])
    except SystemExit as e:
        print("ODD", e.code, err.getvalue().strip())
r = main(args + ["--train.run-dir", sys.argv[2] + "/grid"])
fsdp = lambda tree: sum("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(tree) if hasattr(x, "sharding"))
print("SHARDED", fsdp(r.state.params), fsdp(r.state.opt_state), fsdp(r.state.rest))
"""


def test_full_finetune_fsdp_mesh_equals_one_device(tmp_path, gpt2_dir):
    """DPO with ``--finetune full`` on a transformers GPT-2 (the reference a frozen copy): on 4 CPU devices as
    fsdp=2 × data=2 the losses equal a 1-device run; parameters, optimizer state and the frozen reference are sharded
    over fsdp; the exported policy loads in transformers. The cached reference (``--reference cached``) gives the
    same losses on one device."""
    torch = pytest.importorskip("torch")
    import jax
    from transformers import AutoModelForCausalLM

    from mojax.train.cli import main

    data = tmp_path / "pairs.jsonl"
    _write_pairs(data)
    args = ["--method", "dpo", "--finetune", "full", "--train.steps", "3", *COMMON, "--data.data-paths", str(data),
            "--data.model-path", str(gpt2_dir), "--data.max-length", "32", "--data.max-prompt-length", "16"]
    one = main(args + ["--train.run-dir", str(tmp_path / "one")])
    # Full fine-tuning trains the base weights (no LoRA adapters), and starts at the reference: DPO = ln 2.
    names = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(one.state.params)[0]}
    assert not any("lora" in n for n in names) and any("embed" in n for n in names), sorted(names)[:5]
    single = _losses(tmp_path / "one")
    assert abs(single[0] - math.log(2)) < 1e-6 and single[-1] < single[0] - 1e-4, single
    ids = np.asarray(_tokenizer()("how do i bake bread mix flour")["input_ids"], np.int32)[None]
    ours = np.asarray(one.model().policy(ids))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "hf").eval()(
            torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)  # the trained policy, not the frozen reference
    assert np.abs(ours - np.asarray(one.model().reference(ids))).max() > 1e-4

    # --reference cached: the starting model's log-probs computed once (mojax.train.ref_cache) instead of a frozen
    # copy in the state — the same losses, without the copy's weights.
    cached = main(args + ["--reference", "cached", "--train.run-dir", str(tmp_path / "cached")])
    np.testing.assert_allclose(_losses(tmp_path / "cached"), single, atol=2e-5)
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(cached.state.params) == size(one.state.params) and size(one.state.rest) >= size(one.state.params)
    assert size(cached.state.rest) < size(one.state.params) / 10

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    grid = args + ["--mesh.data", "2", "--mesh.fsdp", "2"]
    out = subprocess.run([sys.executable, "-c", _MULTI, json.dumps(grid), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.split()[:1] in (["ODD"], ["SHARDED"])}
    odd = lines["ODD"].split(maxsplit=2)
    assert odd[1] == "2" and "does not split over data×fsdp = 4 devices" in odd[2], lines["ODD"]
    params, opt, ref = map(int, lines["SHARDED"].split()[1:])
    assert params > 0 and opt >= params and ref > 0, lines["SHARDED"]
    np.testing.assert_allclose(_losses(tmp_path / "grid"), single, atol=2e-5)
