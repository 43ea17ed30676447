"""The training engine: mesh, train state, one pure train step, objectives, checkpoints, multi-host, host loop.

The method is an objective plugged into one step (:mod:`mojax.train.objectives`); the one host loop (:func:`fit`)
owns data iteration, compiled-step reuse, checkpoints, metrics, evaluation and progress. See docs/engine.md.
"""

from mojax.train.checkpoint import CheckpointConfig, Checkpointer, StopFlag, install_sigterm_flag
from mojax.train.data_config import DataConfig
from mojax.train.distributed import DistributedConfig, initialize, local_batch, process_batch_slice, shard_batch
from mojax.train.loop import TrainConfig, TrainResult, clear_step_cache, fit, make_eval_fn
from mojax.train.mesh import MeshConfig, check_global_batch, make_mesh
from mojax.train.objectives import (AnchoredPolicy, COSDPOSampling, bilevel_stable_po_objective,
                                    bradley_terry_objective, cos_dpo_objective, dpo_objective,
                                    listwise_dpo_objective, ltr_cos_dpo_objective, ltr_listnet_objective,
                                    ltr_listwise_dpo_objective, ltr_modpo_objective, ltr_scalarized_dpo_objective,
                                    modpo_objective, more_objective, policy_logps, scalarized_dpo_objective,
                                    sft_objective, shared_prompt_logps, split_shared_prompt, spo_objective,
                                    stable_po_objective, value_gap_stable_po_objective)
from mojax.train.parse import parse_cli
from mojax.train.ref_cache import attach_ref_logps, cached_reference_logps, ref_axis_first
from mojax.train.precision import MasterWeightsState, master_weights
from mojax.train.state import TrainState, batch_shardings, create_train_state, step_key
from mojax.train.step import (Objective, OptimizerConfig, StatefulObjective, as_objective, init_extras,
                              initial_hparams, jit_train_step, make_optimizer, make_train_step)

__all__ = [
    "AnchoredPolicy", "as_objective", "attach_ref_logps", "batch_shardings", "bilevel_stable_po_objective",
    "bradley_terry_objective", "cached_reference_logps", "check_global_batch", "CheckpointConfig", "Checkpointer",
    "clear_step_cache", "cos_dpo_objective", "COSDPOSampling", "create_train_state", "DataConfig",
    "DistributedConfig", "dpo_objective", "fit", "init_extras", "initial_hparams", "initialize",
    "install_sigterm_flag", "jit_train_step", "listwise_dpo_objective", "local_batch", "ltr_cos_dpo_objective",
    "ltr_listnet_objective", "ltr_listwise_dpo_objective", "ltr_modpo_objective", "ltr_scalarized_dpo_objective",
    "make_eval_fn", "make_mesh", "make_optimizer", "make_train_step", "master_weights", "MasterWeightsState",
    "MeshConfig", "modpo_objective", "more_objective", "Objective", "OptimizerConfig", "parse_cli", "policy_logps",
    "process_batch_slice", "ref_axis_first", "scalarized_dpo_objective", "sft_objective", "shard_batch",
    "shared_prompt_logps", "split_shared_prompt", "spo_objective", "stable_po_objective", "StatefulObjective",
    "step_key", "StopFlag", "TrainConfig", "TrainResult", "TrainState", "value_gap_stable_po_objective",
]
