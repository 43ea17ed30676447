"""Ahead-of-time memory plans of the DPO train step for 0.5-8B models on 8 and 16 devices (issue 13 §5).

    nice -n 10 .venv/bin/python benchmarks/memory_plan.py                        # every model, 8 and 16 devices
    nice -n 10 .venv/bin/python benchmarks/memory_plan.py --models llama-3.1-8b --devices 16 --finetune full
    nice -n 10 .venv/bin/python benchmarks/memory_plan.py --models tiny --devices 8 --seq 128   # seconds (CI)

Nothing is materialised: each model is built with ``nnx.eval_shape`` from its Hugging Face ``config.json`` values
(written below; no weights, no hub), its train state becomes ``ShapeDtypeStruct``s carrying the ``NamedSharding``s
the library's logical-axis rules give (:func:`mojax.sharding.state_shardings`; the optimizer state's through
:func:`mojax.train.state.optimizer_shardings`), and the library's DPO step (``dpo_objective``,
``make_train_step``, ``jit_train_step``: AdamW with global-norm clipping, state donated) is lowered and compiled
for ``--xla_force_host_platform_device_count=N`` simulated CPU devices — one child process per device count,
since the flag is read once when JAX starts. ``compiled.memory_analysis()`` then gives XLA's per-device buffer
assignment: arguments, outputs, temporaries, the bytes of outputs aliased to (donated) arguments, and generated
code. The per-device peak reported is ``argument + output - alias + temp``: live inputs, the outputs not written
in place, and the largest set of simultaneously live temporaries (XLA's buffer assignment, the same accounting
``jax.stages.Compiled.memory_analysis`` documents).

Step: bfloat16 compute, parameters stored in float32 (``--param-dtype`` once the library has a parameter-dtype
policy), packed rows of ``--seq`` tokens (default 2,048) with segment ids (``mojax.data.packing``'s layout:
``--rows`` rows, ``--pairs-per-row`` pairs per row, at most 16 segments per row), scanned layers
(``scan_layers=True``) with ``remat_policy`` (default ``nothing_saveable``). Full fine-tuning trains every weight
against cached reference log-probs (``--reference cached``, the cheaper CLI choice) or a frozen copy
(``--reference frozen``: an ``AnchoredPolicy``); LoRA trains rank-16 adapters on all seven projections against
the adapters' base model (``ref_mode="lora"``). Meshes: ``fsdp`` (every device on the ``fsdp`` axis) and
``fsdp_tensor`` (``fsdp = N / --tensor``, ``tensor = --tensor``).

Next to each compiled figure, an analytic estimate per device (:func:`analytic`): parameters, gradients and AdamW
moments from the exact shard shapes of every leaf; the batch; activations saved under the remat policy; one
layer's recomputed working set (attention scores, MLP intermediates, gathered weights); the LM-head chunk; and the
copy of the block parameters (and its gradient) that the scan stacks inside the step. The docs page
(``docs/benchmarks-memory-plan.md``) explains where the two differ.

Last line: ``max_gib_per_device_8b_full_ft_16=<x>`` — the largest per-device peak of the Llama-3.1-8B full
fine-tuning step over the 16-device meshes measured (target <= 80; an 80 GB accelerator).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 2 ** 30

# Hugging Face config.json values (the fields the decoder reads), as published with each checkpoint.
MODELS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(  # Qwen/Qwen2.5-0.5B
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768, max_window_layers=24,
        bos_token_id=151643, eos_token_id=151643, initializer_range=0.02),
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        attention_bias=False, mlp_bias=False, tie_word_embeddings=True, bos_token_id=128000,
        eos_token_id=128001, initializer_range=0.02),
    "llama-3.1-8b": dict(  # meta-llama/Llama-3.1-8B
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128001, initializer_range=0.02),
    # Not real models: Llama-shaped configs small enough to compile in seconds (tests; checking the estimate).
    "small": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=2048, hidden_size=256,
        intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02),
    "tiny": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=256, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02),
}
# Published parameter counts (for the check in measure(): the configs above must reproduce them).
PUBLISHED_PARAMS = {"qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248}
LORA_RANK = 16
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEGMENTS = 16  # segments per packed row at most (the packer's max_segments)
# Bytes per attention score [rows, H/tp, T, T] live in one layer's backward on the XLA attention path: float32
# scores (4), float32 softmax (4), bfloat16 probabilities (2), float32 score gradient (4).
ATTN_BYTES = 14
# LLVM code generation at -O0: the memory figures come from XLA's buffer assignment, which runs on the optimised
# HLO before code generation, so they do not change (checked on the tiny config: every memory_analysis field
# equal), while the compile takes about a third less CPU time. --slow-compile turns it off.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """One configuration to lower and compile.

    Attributes:
      model: a key of :data:`MODELS`.
      finetune: ``full`` (every weight) or ``lora`` (rank-16 adapters on every projection).
      devices: simulated device count.
      mesh: ``fsdp`` (all devices on ``fsdp``) or ``fsdp_tensor`` (``fsdp = devices / tensor``).
      tensor: the tensor-axis size of ``fsdp_tensor``.
      seq: tokens per packed row.
      rows: packed rows in the global batch.
      pairs_per_row: preference pairs per row (two sequences each), so ``rows * pairs_per_row`` pairs per step.
      remat: ``DecoderConfig.remat_policy``.
      scan: ``DecoderConfig.scan_layers``.
      reference: full fine-tuning's reference: ``cached`` log-probs or a ``frozen`` copy (LoRA: the base model).
      param_dtype: parameter storage dtype (``float32``; ``bfloat16`` stores parameters in bfloat16 and keeps float32
        master weights in the optimizer state, :mod:`mojax.train.precision`).
      aot: lower and compile (``False``: the analytic estimate only, e.g. for meshes too small to be worth compiling).
    """

    model: str
    finetune: str
    devices: int
    mesh: str
    tensor: int = 2
    seq: int = 2048
    rows: int = 16
    pairs_per_row: int = 4
    remat: str = "nothing_saveable"
    scan: bool = True
    reference: str = "cached"
    param_dtype: str = "float32"
    aot: bool = True

    @property
    def mesh_shape(self) -> dict[str, int]:
        """``{"data", "fsdp", "tensor"}`` sizes."""
        t = self.tensor if self.mesh == "fsdp_tensor" else 1
        if self.devices % t:
            raise ValueError(f"{self.devices} devices do not split into tensor={t}")
        return {"data": 1, "fsdp": self.devices // t, "tensor": t}

    @property
    def label(self) -> str:
        """A short name for tables and progress lines."""
        m = self.mesh_shape
        ft = self.finetune if self.finetune == "lora" else f"full/{self.reference}"
        return f"{self.model} {ft} {self.param_dtype} N={self.devices} fsdp{m['fsdp']}xtp{m['tensor']}"


def decoder_config(plan: Plan):
    """The ``DecoderConfig`` of a plan: the HF config values, bfloat16 compute, scan and remat as planned."""
    import jax.numpy as jnp

    from mojax.models import DecoderConfig
    from mojax.models.hf import config_from_hf

    base = config_from_hf(MODELS[plan.model], dtype=jnp.bfloat16)
    extra = {}
    if plan.param_dtype != "float32":
        if "param_dtype" not in {f.name for f in dataclasses.fields(DecoderConfig)}:
            raise ValueError(f"param_dtype={plan.param_dtype!r} needs DecoderConfig.param_dtype (not in this mojax)")
        extra["param_dtype"] = jnp.dtype(plan.param_dtype)
    return base.replace(scan_layers=plan.scan, remat_policy=plan.remat,
                        max_positions=max(base.max_positions, plan.seq), **extra)


def batch_specs(plan: Plan, vocab: int) -> dict:
    """``ShapeDtypeStruct``s of one packed DPO batch (:mod:`mojax.data.packing`'s layout, global shapes)."""
    import jax
    import jax.numpy as jnp

    r, t, b = plan.rows, plan.seq, plan.rows * plan.pairs_per_row
    spec = {"input_ids": ((r, t), jnp.int32), "attention_mask": ((r, t), jnp.int32), "loss_mask": ((r, t), bool),
            "segment_ids": ((r, t), jnp.int32), "positions": ((r, t), jnp.int32),
            "segment_index": ((b, 2), jnp.int32), "segment_lengths": ((r, SEGMENTS), jnp.int32),
            "example_mask": ((b,), bool)}
    if plan.finetune == "full" and plan.reference == "cached":
        spec["ref_logps"] = ((b, 2), jnp.float32)
    del vocab
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in spec.items()}


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ``ShapeDtypeStruct`` with shardings (the largest shard per leaf)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def analytic(plan: Plan, config, inputs: dict[str, int]) -> dict[str, int]:
    """Per-device analytic estimate of the step's memory, in bytes, by component (see the module docstring).

    ``inputs`` (from :func:`measure`, exact shard shapes of every leaf): ``params`` (every parameter's shard,
    storage dtype), ``opt`` (the optimizer state's shards), ``batch`` (the batch's shards), ``grads`` (the trainable
    parameters' shards in float32: the step casts gradients to float32), ``block`` (the block parameters' shards in
    storage dtype: what the scan stacks), ``block_grads`` (the same for trainable blocks: the stacked gradient has
    the stacked parameters' dtype; 0 under LoRA) and ``layer_params`` (one block's parameter count, unsharded).

    The step's arguments are ``params + opt + batch``. Its temporaries are the larger of two phases:

    - **backward** (the scan over layers in reverse): the stacked block parameters (the scan stacks the per-layer
      leaves inside the step: one copy, ``scan_stack``) and the stacked gradient being filled (float32, trainable
      blocks only), the other parameters' gradients, the activations saved under the remat policy
      (``saved_acts``: under ``nothing_saveable`` each layer's input ``[rows, T, D]`` in the compute dtype; under
      ``dots_saveable`` also every matmul output; under ``none`` also the attention probabilities and the MLP
      intermediates), one layer's recomputed working set (``layer_work``: :data:`ATTN_BYTES` per attention score
      ``[rows, H/tp, T, T]`` — the XLA attention path materialises them, cuDNN flash attention would not — the
      MLP's ``[rows, T, F/tp]`` intermediates and gradients, and the layer's weights gathered over ``fsdp`` in the
      compute dtype, forward and backward) — or, if larger, one LM-head chunk of float32 logits and their gradient
      (``head``; it runs before the layers' backward, so the two never coexist; once the head runs in several
      chunks, the compact head sorts positions globally and every device holds a whole chunk);
    - **update**: the per-layer gradients sliced out of the stacked one while it is alive, then AdamW.
    """
    import jax.numpy as jnp

    m = plan.mesh_shape
    shards = m["data"] * m["fsdp"]
    tp = m["tensor"]
    rows = plan.rows / shards  # rows per device (the batch splits over data x fsdp)
    t, d, f, v = plan.seq, config.d_model, config.mlp_dim, config.vocab_size
    split = lambda n: n / tp if n % tp == 0 else n  # noqa: E731 - a dimension the tensor axis shards, if it divides
    h_loc, kv_loc, f_loc, v_loc = split(config.num_heads), split(config.kv_heads), split(f), split(v)
    hs = config.head_size
    c = jnp.dtype(config.dtype).itemsize
    c_param = jnp.dtype(getattr(config, "param_dtype", jnp.float32)).itemsize
    tok = rows * t
    dots = tok * (2 * h_loc * hs + 2 * kv_loc * hs + 2 * d + 2 * f_loc) * c  # q k v attn o gate up down outputs
    layers = config.num_layers
    if plan.remat == "nothing_saveable":
        saved = layers * tok * d * c
    elif plan.remat in ("dots_saveable", "checkpoint_dots", "dots_with_no_batch_dims_saveable"):
        saved = layers * (tok * d * c + dots)
    else:  # "none" and the rest: everything, approximated
        saved = layers * (tok * d * c + dots + rows * h_loc * t * t * c + 2 * tok * f_loc * c)
    attn = rows * h_loc * t * t * ATTN_BYTES
    mlp = tok * f_loc * (3 * c + 3 * 4)
    gathered = 2 * inputs["layer_params"] / tp * c
    positions = plan.rows * t
    chunk = min(positions, max(plan.rows * 32, -(-2 ** 24 // v)))  # packed_sequence_logps's head chunk rows
    head = chunk * v_loc * 4 * 2 / (shards if chunk == positions else 1)
    stack = inputs["block"] if plan.scan else 0
    stack_grads = inputs["block_grads"] if plan.scan else 0
    # The head's chunks run (forward and backward) before the layers' backward starts: the two transients do not
    # overlap, and XLA's buffer assignment reuses the same slots for both (the small config's memory report).
    other_grads = inputs["grads"] - (inputs["block_grads"] * 4 // c_param if inputs["block_grads"] else 0)
    backward = stack + stack_grads + other_grads + saved + max(attn + mlp + gathered, head)
    update = inputs["grads"] + stack_grads
    out = {"params": inputs["params"], "opt": inputs["opt"], "batch": inputs["batch"], "grads": inputs["grads"],
           "saved_acts": int(saved), "layer_work": int(attn + mlp + gathered), "head": int(head),
           "scan_stack": int(stack + stack_grads), "backward": int(backward), "update": int(update)}
    out["temp"] = max(out["backward"], out["update"])
    out["total"] = out["params"] + out["opt"] + out["batch"] + out["temp"]
    return out


def largest_shapes(hlo_text: str, top: int = 8) -> list[str]:
    """The largest array shapes produced by instructions of an optimised HLO module, with how often each occurs
    (a view of what dominates the temporaries; it says nothing about liveness)."""
    import re

    import numpy as np

    sizes = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8,
             "s64": 8}
    counts: dict[str, int] = {}
    for dt, dims in re.findall(r"= (pred|[sufb]f?\d+)\[([\d,]+)\]", hlo_text):
        if dt in sizes:
            counts[f"{dt}[{dims}]"] = counts.get(f"{dt}[{dims}]", 0) + 1
    nbytes = lambda s: sizes[s.split("[")[0]] * int(np.prod([int(x) for x in s[s.index("[") + 1:-1].split(",")]))  # noqa: E731
    best = sorted(counts, key=nbytes, reverse=True)[:top]
    return [f"{s} {nbytes(s) / 2 ** 20:.0f} MiB x{counts[s]}" for s in best]


def measure(plan: Plan) -> dict:
    """Lower and compile one plan's DPO step in this process (needs ``plan.devices`` JAX devices)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from mojax.models import Decoder, LoRAConfig, add_lora
    from mojax.sharding import state_shardings
    from mojax.train import (MeshConfig, OptimizerConfig, dpo_objective, jit_train_step, make_mesh, make_optimizer,
                             make_train_step)
    from mojax.train.objectives import AnchoredPolicy
    from mojax.train.state import TrainState, batch_shardings, optimizer_shardings, replicated

    if jax.device_count() < plan.devices:
        raise RuntimeError(f"{plan.label}: needs {plan.devices} devices, JAX has {jax.device_count()}")
    config = decoder_config(plan)
    mesh = make_mesh(MeshConfig(**plan.mesh_shape), devices=jax.devices()[:plan.devices])

    if plan.finetune == "lora":
        def build():
            return add_lora(Decoder(config, rngs=nnx.Rngs(0)), LoRAConfig(rank=LORA_RANK, targets=LORA_TARGETS),
                            rngs=nnx.Rngs(1))
        wrt, ref_mode = nnx.LoRAParam, "lora"
    elif plan.reference == "frozen":
        def build():
            return AnchoredPolicy(Decoder(config, rngs=nnx.Rngs(0)), Decoder(config, rngs=nnx.Rngs(0)))
        wrt, ref_mode = AnchoredPolicy.trainable, "model"
    else:
        def build():
            return Decoder(config, rngs=nnx.Rngs(0))
        wrt, ref_mode = nnx.Param, "cached"

    t0 = time.perf_counter()
    abstract = nnx.eval_shape(build)
    graphdef, params, rest = nnx.split(abstract, wrt, ...)
    param_sh, rest_sh = state_shardings(params, mesh), state_shardings(rest, mesh)

    def structs(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5))
    if plan.param_dtype != "float32":  # bfloat16 storage trains through float32 master weights (what fit does)
        from mojax.train.precision import master_weights, needs_master
        if needs_master(params):
            tx = master_weights(tx)
    opt_sh = optimizer_shardings(tx, params, param_sh, mesh)
    rep = replicated(mesh)
    objective = dpo_objective(ref_mode=ref_mode)
    hparams = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep)
               for k, v in objective.initial_hparams().items()}
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=rep)  # noqa: E731
    state = TrainState(step=scalar(jnp.int32), params=structs(params, param_sh), rest=structs(rest, rest_sh),
                       opt_state=structs(jax.eval_shape(tx.init, params), opt_sh),
                       rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep), skipped=scalar(jnp.int32),
                       extras={}, hparams=hparams)
    shardings = TrainState(step=rep, params=param_sh, rest=rest_sh, opt_state=opt_sh, rng=rep, skipped=rep,
                           extras={}, hparams={k: rep for k in hparams})
    batch = batch_specs(plan, config.vocab_size)
    step = jit_train_step(make_train_step(graphdef, objective, tx), shardings, batch, mesh)
    bsh = batch_shardings(batch, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k]) for k, v in batch.items()}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    build_s = time.perf_counter() - t0

    mem, shapes, c0 = None, [], time.process_time()
    t1 = t2 = t3 = c3 = c0
    if plan.aot:
        with jax.set_mesh(mesh):
            c0, t1 = time.process_time(), time.perf_counter()
            lowered = step.lower(state, batch, key)
            t2 = time.perf_counter()
            compiled = lowered.compile()
            c3, t3 = time.process_time(), time.perf_counter()
        ma = compiled.memory_analysis()
        mem = {"argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
               "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes,
               "generated_code": ma.generated_code_size_in_bytes}
        mem["peak"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
        shapes = largest_shapes(compiled.as_text())

    # Analytic inputs, from the exact shard shapes of every leaf.
    decoder = abstract.policy if isinstance(abstract, AnchoredPolicy) else abstract
    base_filter = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))

    def sharded(tree):  # abstract state -> ShapeDtypeStructs on the shardings the rules give
        return structs(tree, state_shardings(tree, mesh))

    def count(tree):
        return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))

    all_params = nnx.state(abstract, nnx.Param)
    trainable = structs(params, param_sh)
    f32 = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding), tree)
    blocks = sharded(nnx.state(decoder.blocks, base_filter))
    inputs = {"params": _shard_bytes(sharded(all_params)), "opt": _shard_bytes(state.opt_state),
              "batch": _shard_bytes(batch), "grads": _shard_bytes(f32(trainable)), "block": _shard_bytes(blocks),
              "block_grads": _shard_bytes(blocks) if plan.finetune == "full" else 0,
              "layer_params": count(nnx.state(decoder.blocks[0], base_filter))}
    if inputs["layer_params"] != layer_params(config):  # the formula recompute() uses for older results
        raise ValueError(f"layer_params formula {layer_params(config)} != {inputs['layer_params']}")
    est = analytic(plan, config, inputs)
    n_base = count(nnx.state(decoder, base_filter))
    if plan.model in PUBLISHED_PARAMS and n_base != PUBLISHED_PARAMS[plan.model]:
        raise ValueError(f"{plan.model}: {n_base} parameters, published {PUBLISHED_PARAMS[plan.model]}")
    return {"plan": dataclasses.asdict(plan), "label": plan.label, "mesh": plan.mesh_shape,
            "base_params": n_base, "trainable_params": count(params), "compiled": mem, "analytic": est,
            "analytic_inputs": inputs, "largest_shapes": shapes,
            "state_bytes": _shard_bytes(state), "batch_bytes": _shard_bytes(batch),
            "build_s": build_s, "lower_s": t2 - t1, "compile_s": t3 - t2, "compile_cpu_s": c3 - c0,
            "host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}


def _child(devices: int, plans: list[dict]) -> None:
    """Child process: measure each plan (``devices`` simulated devices), one JSON line per plan on stdout."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for p in plans:
        plan = Plan(**p)
        try:
            out = measure(plan)
        except Exception as e:  # noqa: BLE001 - reported in the table, the other plans still run
            out = {"plan": p, "label": plan.label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(json.dumps(out), flush=True)


def layer_params(config) -> int:
    """Parameters of one Llama/Qwen2-style block (attention, gated MLP, two norms, optional q/k/v biases)."""
    d, h, k, hs, f = config.d_model, config.num_heads, config.kv_heads, config.head_size, config.mlp_dim
    return 2 * d * h * hs + 2 * d * k * hs + 3 * d * f + 2 * d + ((h + 2 * k) * hs if config.qkv_bias else 0)


def recompute(result: dict) -> dict:
    """A saved result with its analytic estimate recomputed by this version of :func:`analytic` (results saved
    before ``analytic_inputs`` existed get them back from their stored components)."""
    if "error" in result:
        return result
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    plan = Plan(**result["plan"])
    config = decoder_config(plan)
    inputs = result.get("analytic_inputs")
    if inputs is None:
        a = result["analytic"]
        full = plan.finetune == "full"
        block = a["scan_stack"] // 2 if full else a["scan_stack"]
        inputs = {"params": a["params"], "opt": a["opt"], "batch": a["batch"], "grads": a["grads"], "block": block,
                  "block_grads": block if full else 0, "layer_params": layer_params(config)}
    elif plan.finetune == "full":  # results saved before block_grads meant the storage dtype
        inputs = {**inputs, "block_grads": inputs["block"]}
    return {**result, "analytic_inputs": inputs, "analytic": analytic(plan, config, inputs)}


def run_children(plans: list[Plan], *, log=sys.stderr, save: Path | None = None,
                 fast_compile: bool = True) -> list[dict]:
    """One child process per device count (the device count is fixed when JAX starts); results in plan order.

    With ``save``, the results so far are rewritten there after every configuration (long runs keep what they got).
    ``fast_compile`` adds :data:`FAST_COMPILE` to the children's ``XLA_FLAGS``.
    """
    results: dict[str, dict] = {}
    for devices in sorted({p.devices for p in plans}):
        group = [dataclasses.asdict(p) for p in plans if p.devices == devices]
        flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE if fast_compile else ''}"
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(devices), json.dumps(group)], env=env,
                                stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            out = json.loads(line)
            results[out["label"]] = out
            if "error" in out:
                brief = out["error"]
            elif out["compiled"] is None:
                brief = f"analytic {out['analytic']['total'] / GIB:.2f} GiB (not compiled)"
            else:
                brief = (f"peak {out['compiled']['peak'] / GIB:.2f} GiB, analytic {out['analytic']['total'] / GIB:.2f} "
                         f"GiB, compile {out['compile_s']:.1f} s")
            print(f"  {out['label']}: {brief}", file=log, flush=True)
            if save is not None:
                save.write_text(json.dumps(list(results.values()), indent=1))
        if proc.wait():
            raise SystemExit(f"memory_plan: the {devices}-device child failed (exit {proc.returncode})")
    return [results[p.label] for p in plans if p.label in results]


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def table(results: list[dict]) -> str:
    """The per-device table (GiB): compiled figures next to the analytic estimate and its components."""
    head = ["config", "params", "trainable", "argument", "output", "alias", "temp", "code MiB", "peak",
            "analytic", "an. temp", "an. grads", "an. saved acts", "an. layer|head", "an. scan stack", "fits 80 GB",
            "compile s"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["label"], "error: " + r["error"]] + [""] * (len(head) - 2))
            continue
        c, a = r["compiled"], r["analytic"]
        if c is None:  # analytic only: no compiled figures; the fit verdict is the estimate's
            compiled = ["-"] * 6
            fits = ("yes" if a["total"] <= 80e9 else "NO") + " (analytic)"
        else:
            compiled = [_gib(c["argument"]), _gib(c["output"]), _gib(c["alias"]), _gib(c["temp"]),
                        f"{c['generated_code'] / 2 ** 20:.1f}", _gib(c["peak"])]
            fits = "yes" if c["peak"] <= 80e9 else "NO"
        rows.append([r["label"], f"{r['base_params'] / 1e9:.3f}B", f"{r['trainable_params'] / 1e6:.1f}M", *compiled,
                     _gib(a["total"]), _gib(a["temp"]), _gib(a["grads"]), _gib(a["saved_acts"]),
                     _gib(max(a["layer_work"], a["head"])), _gib(a["scan_stack"]), fits,
                     f"{r['compile_s']:.1f}" if c is not None else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda xs: "| " + " | ".join(str(x).ljust(w) for x, w in zip(xs, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "llama-3.2-1b", "llama-3.1-8b"],
                    choices=sorted(MODELS))
    ap.add_argument("--devices", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--meshes", nargs="+", default=["fsdp", "fsdp_tensor"], choices=["fsdp", "fsdp_tensor"])
    ap.add_argument("--finetune", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    ap.add_argument("--reference", nargs="+", default=["cached"], choices=["cached", "frozen"],
                    help="full fine-tuning's reference(s)")
    ap.add_argument("--param-dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--tensor", type=int, default=2, help="tensor-axis size of the fsdp_tensor mesh")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=16, help="packed rows per global batch")
    ap.add_argument("--pairs-per-row", type=int, default=4)
    ap.add_argument("--remat", default="nothing_saveable")
    ap.add_argument("--no-scan", action="store_true", help="unrolled layers (slow to compile for deep models)")
    ap.add_argument("--json", help="also write every result to this JSON file")
    ap.add_argument("--analytic-only", action="store_true", help="no lowering/compiling: the estimate only (fast)")
    ap.add_argument("--slow-compile", action="store_true", help="compile with LLVM optimisations (see FAST_COMPILE)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="print the table of earlier --json files and exit")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(int(args.child[0]), json.loads(args.child[1]))
        return
    if args.merge:
        results = [recompute(r) for path in args.merge for r in json.loads(Path(path).read_text())]
        order = {m: i for i, m in enumerate(MODELS)}
        results.sort(key=lambda r: (order[r["plan"]["model"]], r["plan"]["finetune"], r["plan"]["param_dtype"],
                                    r["plan"]["devices"], r["plan"]["mesh"]))
        report(results)
        headline_8b(results)
        return
    plans = [Plan(model=m, finetune=ft, devices=n, mesh=mesh, tensor=args.tensor, seq=args.seq, rows=args.rows,
                  pairs_per_row=args.pairs_per_row, remat=args.remat, scan=not args.no_scan, reference=ref,
                  param_dtype=pd, aot=not args.analytic_only)
             for n in args.devices for m in args.models for ft in args.finetune
             for ref in (args.reference if ft == "full" else ["cached"]) for pd in args.param_dtype
             for mesh in args.meshes]
    print(f"memory_plan: DPO step, bf16 compute, {args.rows} packed rows x {args.seq} tokens "
          f"({args.rows * args.pairs_per_row} pairs), remat {args.remat}, scan {not args.no_scan}; "
          f"{len(plans)} configurations; per-device GiB")
    t0 = time.perf_counter()
    results = run_children(plans, save=Path(args.json) if args.json else None, fast_compile=not args.slow_compile)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report(results)
    print(f"total {time.perf_counter() - t0:.0f} s")
    headline_8b(results)


def report(results: list[dict]) -> None:
    """Print the table and the configurations that would not fit an 80 GB device."""
    print(table(results))
    ok = [r for r in results if "error" not in r]
    over = [r["label"] for r in ok if r["compiled"] is not None and r["compiled"]["peak"] > 80e9]
    print(f"would not fit an 80 GB device (compiled peak > 80e9 bytes): {', '.join(over) if over else 'none'}")
    over = [r["label"] for r in ok if r["compiled"] is None and r["analytic"]["total"] > 80e9]
    if over:
        print(f"would not fit an 80 GB device (analytic estimate, not compiled): {', '.join(over)}")


def headline_8b(results: list[dict]) -> None:
    """The last line: the largest per-device peak of the 8B full fine-tuning step on 16 devices (if measured)."""
    full8 = [r["compiled"]["peak"] for r in results if "error" not in r and r["plan"]["model"] == "llama-3.1-8b"
             and r["plan"]["finetune"] == "full" and r["plan"]["devices"] == 16 and r["compiled"] is not None]
    if full8:
        print(f"max_gib_per_device_8b_full_ft_16={max(full8) / GIB:.3f}")

if __name__ == "__main__":
    main()
