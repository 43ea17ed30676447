"""``python -m mojax.train``: train a LoRA-adapted decoder on synthetic preference pairs with any LM objective.

Every option comes from the frozen configs through ``tyro`` (``--help`` lists them), e.g.::

    python -m mojax.train --method dpo --train.steps 50
    python -m mojax.train --method cos-dpo --train.steps 100 --mesh.data 2 --mesh.fsdp 2
    python -m mojax.train --method bilevel-stable-po --stable-penalty 1.0 --train.run-dir runs/spo

The laptop default (a tiny Llama-style decoder, LoRA rank 4, 256 synthetic pairs) runs in well under a minute on
one CPU core. Multi-host: start the same command on every host with ``--distributed.coordinator-address``,
``--distributed.num-processes`` and ``--distributed.process-id`` (or ``MOJAX_*`` environment variables); each process
then loads its share of every global batch. Resuming is automatic: rerun the same command with the same run directory.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from mojax.train.checkpoint import CheckpointConfig
from mojax.train.distributed import DistributedConfig
from mojax.train.loop import TrainConfig, TrainResult
from mojax.train.mesh import MeshConfig
from mojax.train.step import OptimizerConfig

Method = Literal["dpo", "ipo", "sft", "stable-po", "bilevel-stable-po", "cos-dpo"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A command-line training run (synthetic pairs → tiny decoder + LoRA → one objective).

    Attributes:
      method: the objective (``mojax.train.objectives``).
      beta: preference temperature β.
      stable_penalty: Stable PO's hinge weight λ.
      inner_lr: the bilevel form's inner SFT step size η.
      cos_penalty: COS-DPO's cosine penalty μ.
      lora_rank: LoRA rank on the attention projections (the reference is the LoRA base model).
      num_pairs: synthetic preference pairs to generate.
      batch_size: examples per step per process.
      data_seed: seed of the synthetic data and the shuffle.
      train, optimizer, mesh, checkpoint, distributed: the engine's configs.
    """

    method: Method = "dpo"
    beta: float = 0.1
    stable_penalty: float = 1.0
    inner_lr: float = 1e-2
    cos_penalty: float = 0.0
    lora_rank: int = 4
    num_pairs: int = 256
    batch_size: int = 8
    data_seed: int = 0
    train: TrainConfig = TrainConfig(steps=50, run_dir="runs/train")
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=25)
    distributed: DistributedConfig = DistributedConfig()


def _objective(config: RunConfig, num_objectives: int):
    from mojax.train import objectives as O

    common = {"ref_mode": "lora"}
    if config.method in ("dpo", "ipo"):
        return O.dpo_objective(beta=config.beta, loss_type="sigmoid" if config.method == "dpo" else "ipo", **common)
    if config.method == "sft":
        return O.sft_objective()
    if config.method == "stable-po":
        return O.stable_po_objective(beta=config.beta, penalty=config.stable_penalty, **common)
    if config.method == "bilevel-stable-po":
        return O.bilevel_stable_po_objective(beta=config.beta, penalty=config.stable_penalty,
                                             inner_lr=config.inner_lr, wrt=_trainable(config), **common)
    sampling = O.COSDPOSampling(num_objectives=num_objectives)
    return O.cos_dpo_objective(sampling=sampling, beta=config.beta, penalty=config.cos_penalty, **common)


def _trainable(config: RunConfig):
    from flax import nnx

    if config.method == "cos-dpo":
        return nnx.Any(nnx.PathContains("hpt"), nnx.LoRAParam)
    return nnx.LoRAParam


def run(config: RunConfig) -> TrainResult:
    """Build data, model and objective from ``config`` and train (see the module docstring)."""
    from mojax.train.distributed import initialize

    initialize(config.distributed)  # before anything touches a device

    import jax
    from flax import nnx

    from mojax.data import PipelineConfig, SyntheticLMConfig, make_iterator, make_pairs
    from mojax.models import (ConditionedLM, Decoder, DecoderConfig, HPTConfig, HyperPromptTuning, LoRAConfig,
                              add_lora)
    from mojax.train.checkpoint import install_sigterm_flag
    from mojax.train.loop import train
    from mojax.train.mesh import make_mesh
    from mojax.train.step import make_optimizer

    data_cfg = SyntheticLMConfig()
    pairs = make_pairs(data_cfg, num_pairs=config.num_pairs, seed=config.data_seed)
    num_objectives = len(data_cfg.objectives)
    data = make_iterator(pairs.examples, PipelineConfig(batch_size=config.batch_size, seed=config.data_seed,
                                                        num_epochs=None))
    dec_cfg = DecoderConfig.tiny(vocab_size=data_cfg.vocab_size)

    def build():
        decoder = add_lora(Decoder(dec_cfg, rngs=nnx.Rngs(config.train.seed)), LoRAConfig(rank=config.lora_rank),
                           rngs=nnx.Rngs(config.train.seed + 1))
        if config.method != "cos-dpo":
            return decoder
        hpt = HyperPromptTuning(HPTConfig(num_objectives=num_objectives), d_model=dec_cfg.d_model,
                                rngs=nnx.Rngs(config.train.seed + 2))
        return ConditionedLM(decoder, hpt)

    mesh = make_mesh(config.mesh)
    if jax.process_index() == 0:
        print(f"mojax.train: {config.method} on {jax.device_count()} device(s), mesh {dict(mesh.shape)}, "
              f"run dir {config.train.run_dir}")
    return train(model=build, objective=_objective(config, num_objectives), tx=make_optimizer(config.optimizer),
                 data=data, mesh=mesh, config=config.train, checkpoint=config.checkpoint, wrt=_trainable(config),
                 run_config=config, stop_flag=install_sigterm_flag())


def main(argv: list[str] | None = None) -> TrainResult:
    """Parse ``argv`` into a :class:`RunConfig` with ``tyro`` and :func:`run` it."""
    import tyro

    return run(tyro.cli(RunConfig, args=argv))
