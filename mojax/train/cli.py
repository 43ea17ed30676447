"""``python -m mojax.train``: train a decoder (LoRA or full fine-tuning) with any LM objective, on synthetic pairs or
your own data. The flag reference with examples is ``docs/cli.md``.

Every option comes from the frozen configs through ``tyro`` (``--help`` lists them), e.g.::

    python -m mojax.train --method dpo --train.steps 50
    python -m mojax.train --method cos-dpo --train.steps 100 --mesh.data 2 --mesh.fsdp 2
    python -m mojax.train --method bilevel-stable-po --stable-penalty 1.0 --train.run-dir runs/spo

Your own data and checkpoint (any format of ``mojax.data.read_preferences``: pairs, chat, HH, PKU-SafeRLHF,
listwise, tokenized; JSONL, ``.gz``, JSON or Parquet)::

    python -m mojax.train --method dpo --data.data-paths prefs.jsonl --data.model-path ./gpt2 \\
        --data.max-length 512 --data.max-prompt-length 256 --train.run-dir runs/dpo   # tokenizer from ./gpt2
    python -m mojax.train --method dpo --data.data-paths pku.jsonl --objective-index 1 --data.model-path ./gpt2
    python -m mojax.train --method cos-dpo --data.data-paths pku.jsonl --data.model-path ./gpt2   # all K objectives
    python -m mojax.train --method cos-dpo --data.data-paths helpful.jsonl harmless.jsonl --data.model-path ./gpt2
    python -m mojax.train --method dpo --finetune full --dtype bfloat16 --param-dtype bfloat16 --mesh.fsdp 2 \
        --data.data-paths prefs.jsonl
    python -m mojax.train --method sft --data.data-paths prefs.jsonl --data.tokenizer-path ./tok   # tiny decoder
    python -m mojax.train --method dpo --data.data-paths ids.jsonl --data.model-path stories15M.bin  # llama2.c

The ``--data.*`` flags are the shared :class:`mojax.train.DataConfig` block (the same names in every experiment).
With ``--data.data-paths`` the files are read and tokenised once and mixed (``--data.data-format`` names the
schema, default ``auto``); one ``DataReport`` per file (kept / skipped / truncated records by reason) is printed at the
start and their sum saved as ``<run_dir>/data_report.json``; ``--data.eval-fraction`` holds out a share of the
distinct prompts (``--data.eval-data-path``: a separate file), whose mean objective loss is logged as ``eval/loss``
every ``--train.eval-every`` steps and at the end. Multi-objective files (labels ``[K, N]``, e.g. PKU-SafeRLHF's
("better", "safer")) train the pairwise methods on dimension ``--objective-index`` (``mojax.data.select_objective``);
``cos-dpo`` conditions on all K — or, given several single-objective files, on one objective per file (K = 1 is
refused). SFT also takes single-response records. ``--data.model-path`` is a local Hugging Face directory
(``mojax.models.load_hf``, placed on the mesh) or a llama2.c ``.bin`` file (``load_llama2c``); LoRA is added to it
and the frozen base is the reference (``--finetune full``: every weight trains against a frozen copy). At the end the
model is written to ``<run_dir>/hf`` (``--no-save-hf`` to skip), LoRA merged, which
``transformers.AutoModelForCausalLM.from_pretrained`` loads (for ``cos-dpo``: see :func:`export_hf`). Without a
model path a tiny random Llama-style decoder is trained (sized to the tokenizer's vocabulary when one is given).
Training goes through :func:`mojax.train.fit`.

The laptop default (a tiny Llama-style decoder, LoRA rank 4, 256 synthetic pairs) runs in well under a minute on
one CPU core. Multi-host: start the same command on every host with ``--distributed.coordinator-address``,
``--distributed.num-processes`` and ``--distributed.process-id`` (or ``MOJAX_*`` environment variables); each process
then loads its share of every global batch. Resuming is automatic: rerun the same command with the same run directory.

A run directory belongs to one run (:mod:`mojax.train.run_dir`): without ``--train.run-dir`` each run gets a new
``runs/<method>-<UTC time>``; rerunning in an existing directory resumes it ("resumed from step N of M") only if the
fingerprint recorded there matches — method, every option that changes the math, the data files' content and seed,
the model path, the shapes — else the run is refused in one line naming the differing fields, before anything is
written. ``--train.steps`` may grow (and ``--allow-changes FIELD ...`` lets named fields differ: only for changes
known to be safe); ``--train.steps`` below the checkpoint's step is an error. A corrupt newest checkpoint is reported
in one line and the newest good one is restored. A run whose recent steps are mostly skipped (non-finite loss or
gradients) stops with exit status 3. User errors exit with status 2 and one line (``--debug``: the traceback).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from mojax.train.checkpoint import CheckpointConfig
from mojax.train.data_config import DataConfig
from mojax.train.distributed import DistributedConfig
from mojax.train.loop import TrainConfig, TrainResult
from mojax.train.mesh import MeshConfig
from mojax.train.parse import parse_cli
from mojax.train.step import OptimizerConfig

Method = Literal["dpo", "ipo", "sft", "stable-po", "bilevel-stable-po", "cos-dpo"]

# Files whose presence makes a model directory also a tokenizer directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A command-line training run (data → decoder + LoRA → one objective).

    Attributes:
      method: the objective (``mojax.train.objectives``).
      beta: preference temperature β.
      stable_penalty: Stable PO's hinge weight λ.
      inner_lr: the bilevel form's inner SFT step size η.
      cos_penalty: COS-DPO's cosine penalty μ.
      lora_rank: LoRA rank on the attention projections (the reference is the LoRA base model); 0 = full
        fine-tuning (same as ``finetune="full"``).
      conditioning: how cos-dpo's policy reads the objective weights w (``mojax.models.conditioning``): ``hpt``
        (zero-gated hyper-prompt tuning), ``deep_hpt`` (a per-layer key/value prefix), ``mixed_lora`` (K adapters
        mixed by w), ``hyper_lora`` (an MLP of w scales the adapter's ranks); each on LoRA of rank ``lora_rank``.
      finetune: ``lora`` (train adapters; the frozen base is the reference) or ``full`` (train every weight; the
        reference is a frozen copy of the starting model, sharded like it; ``--mesh.fsdp N`` shards parameters and
        optimizer state). Not with ``cos-dpo``, whose conditioning trains adapters.
      reference: full fine-tuning's reference: ``frozen`` (a frozen copy of the starting model, in the train state)
        or ``cached`` (the starting model's log-probs of every training and held-out example, computed once before
        training with ``mojax.train.ref_cache`` and fed with the batches: no second copy of the weights).
      dtype: compute dtype of the decoder (``bfloat16``: matmuls in bfloat16; norms, logits, log-probs and the
        loss stay float32).
      param_dtype: storage dtype of the decoder's parameters (``bfloat16``: half the weight memory, the frozen
        reference's too; trained weights then keep float32 master copies in the optimizer state, whose moments stay
        float32 — ``mojax.train.precision``). LoRA adapters stay float32.
      num_pairs: synthetic preference pairs to generate (only without ``data.data_paths``).
      data_seed: seed of the synthetic data, the held-out split and the shuffle.
      objective_index: the label row (preference dimension) the pairwise methods train on for multi-objective data;
        ``cos-dpo`` uses all of them.
      save_hf: merge LoRA and write the trained model to ``<run_dir>/hf`` at the end (only with a model path).
      allow_changes: fingerprint fields that may differ from the run directory's recorded run besides ``steps``
        (dotted names as printed in the refusal message; ``*`` adopts any directory).
      debug: show the traceback of a user error instead of the one-line message.
      data: the shared real-data block (files, format, model and tokenizer paths, lengths, held-out share).
      train, optimizer, mesh, checkpoint, distributed: the engine's configs (``train.batch_size``: examples per
        step per process).
    """

    method: Method = "dpo"
    beta: float = 0.1
    stable_penalty: float = 1.0
    inner_lr: float = 1e-2
    cos_penalty: float = 0.0
    lora_rank: int = 4
    conditioning: Literal["hpt", "deep_hpt", "mixed_lora", "hyper_lora"] = "hpt"
    finetune: Literal["lora", "full"] = "lora"
    reference: Literal["frozen", "cached"] = "frozen"
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    num_pairs: int = 256
    data_seed: int = 0
    objective_index: int = 0
    save_hf: bool = True
    allow_changes: tuple[str, ...] = ()
    debug: bool = False
    data: DataConfig = DataConfig(max_length=512, max_prompt_length=256)
    train: TrainConfig = TrainConfig(steps=50, batch_size=8)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(every_steps=25)
    distributed: DistributedConfig = DistributedConfig()

    def __post_init__(self):
        if self.objective_index < 0:
            raise ValueError(f"objective_index must be >= 0, got {self.objective_index}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        if self.full_finetune and self.method == "cos-dpo":
            raise ValueError("cos-dpo trains LoRA adapters and its conditioning network: full fine-tuning "
                             "(--finetune full / --lora-rank 0) is not supported for it")
        if self.reference == "cached" and not self.full_finetune:
            raise ValueError("--reference cached is for full fine-tuning (--finetune full); with LoRA the reference "
                             "is the adapters' base model")

    @property
    def full_finetune(self) -> bool:
        """Whether every weight trains (``finetune="full"`` or ``lora_rank=0``) instead of LoRA adapters."""
        return self.finetune == "full" or self.lora_rank == 0


def _check_finite(config: Any, prefix: str) -> None:
    """Refuse a NaN/inf float anywhere in a (nested) config: ``--optimizer.learning-rate nan`` must not train."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be finite, got {value}")


# Config fields that do not change what is computed: left out of the run's fingerprint (everything else is in it,
# so a new field is checked by default). fit adds the objective, optimizer, steps, batch shape and seed itself.
_NOT_IN_FINGERPRINT = ("save_hf", "allow_changes", "debug", "train", "optimizer", "mesh", "checkpoint",
                       "distributed", "data.data_paths", "data.eval_fraction", "data.eval_data_path")


def _fingerprint(config: RunConfig) -> dict[str, Any]:
    """The CLI's fields of the run's identity (see :func:`mojax.train.fit`'s ``fingerprint``)."""
    from mojax.train.run_dir import data_fingerprint, make_fingerprint

    fields = make_fingerprint(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    fields = {k: v for k, v in fields.items() if not any(k == n or k.startswith(n + ".") for n in _NOT_IN_FINGERPRINT)}
    fields["data.files"] = data_fingerprint(config.data.data_paths)["files"]
    fields["data.eval_fraction"] = config.data.eval_fraction  # which examples train
    return fields


def _objective(config: RunConfig, num_objectives: int):
    from mojax.train import objectives as O

    # LoRA: the adapters' base model is the reference; full fine-tuning: a frozen copy (an AnchoredPolicy).
    common = {"ref_mode": ("cached" if config.reference == "cached" else "model") if config.full_finetune else "lora"}
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

    from mojax.train.objectives import AnchoredPolicy

    if config.method == "cos-dpo":
        from mojax.models import ConditionedPolicy

        return ConditionedPolicy.trainable
    if config.full_finetune:
        return nnx.Param if config.method == "sft" or config.reference == "cached" else AnchoredPolicy.trainable
    return nnx.LoRAParam


def _load_tokenizer(config: RunConfig):
    """The tokenizer: ``tokenizer_path``, else the model directory when it holds tokenizer files, else None."""
    from mojax.models import load_tokenizer

    if config.data.tokenizer_path:
        return load_tokenizer(config.data.tokenizer_path)
    model = Path(config.data.model_path) if config.data.model_path else None
    if model is not None and model.is_dir() and any((model / f).exists() for f in _TOKENIZER_FILES):
        return load_tokenizer(model)
    return None


def _adds_bos(tokenizer) -> bool | None:
    """Whether the tokenizer's own encoding prepends BOS (Llama: yes; GPT-2, whose BOS is EOS: no), so the
    training rows match what ``tokenizer(text)`` gives at inference. None without a tokenizer (pre-tokenized data)."""
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None:
        return None if tokenizer is None else False
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Data:
    """The training examples and what the model and objective need to know about them."""

    examples: list
    held_out: list  # the --data.eval-fraction share (empty without one)
    tokenize: Any  # mojax.data.TokenizeConfig, or None for the synthetic default
    num_objectives: int  # K of the examples the objective sees (1 for the pairwise methods and SFT)
    vocab_needed: int  # 1 + the largest token id in the data
    report: Any = None  # mojax.data.DataReport: all files' counts together
    reports: tuple = ()  # one DataReport per file (training files, then the evaluation file)


def _shape_file(config: RunConfig, examples: list, path: str, index: int, num_files: int) -> list:
    """One file's examples in the form ``config.method`` trains on (file ``index`` of ``num_files``).

    Pairwise methods: pairs (N = 2) of label row ``objective_index``, preferred response first. ``sft``: the
    (preferred) first response only, so single-response records (N = 1) and pairs mix. ``cos-dpo``: one file keeps
    its K label rows; with several files, file k is objective k (labels ``[K, N]`` with row k = the file's labels
    and the other rows 0, which the l1-normalised listwise loss counts as no preference).
    """
    import numpy as np

    from mojax.data import TokenizedExample, select_objective

    k, n = examples[0].labels.shape
    if any(ex.labels.shape != (k, n) for ex in examples):
        raise ValueError(f"{path}: records have different label shapes [K, N] "
                         f"{sorted({ex.labels.shape for ex in examples})}")
    if config.method == "cos-dpo":
        if num_files == 1:
            return examples
        if k != 1:
            raise ValueError(f"{path}: with several files cos-dpo trains file k as objective k, but this file has "
                             f"K={k} label rows; give single-objective files (or this file alone)")
        out = []
        for ex in examples:
            labels = np.zeros((num_files, n), np.float32)
            labels[index] = ex.labels[0]
            out.append(TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=ex.response_ids, labels=labels,
                                        dataset_id=index, location=ex.location))
        return out
    if config.method == "sft" and n == 1:
        return [TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=ex.response_ids,
                                 labels=np.ones((1, 1), np.float32), dataset_id=index, location=ex.location)
                for ex in examples]
    if config.method != "sft" and n != 2:
        raise ValueError(f"{path}: method {config.method!r} trains on pairs but the records have {n} "
                         f"response(s); use --method cos-dpo for lists{' or sft' if n == 1 else ''}")
    if not config.objective_index < k:
        raise ValueError(f"{path}: objective_index={config.objective_index} but the data has K={k} objective(s)")
    # Single-dimension pairs, preferred response first under that dimension.
    examples = select_objective(examples, config.objective_index, dataset_id=index)
    if config.method == "sft":  # the preferred response is the SFT target
        return [TokenizedExample(prompt_ids=ex.prompt_ids, response_ids=ex.response_ids[:1],
                                 labels=np.ones((1, 1), np.float32), dataset_id=index, location=ex.location)
                for ex in examples]
    return examples


def _balance_files(examples: list, num_files: int) -> list:
    """Repeat the examples of the smaller files until every file has as many as the largest: a multi-file
    cos-dpo loss averages each objective over the whole batch, so a file's share of the batch would scale its
    objective (and tilt the cosine term); balanced, every objective is its file's mean loss times 1/K."""
    groups = [[ex for ex in examples if ex.dataset_id == i] for i in range(num_files)]
    most = max(len(g) for g in groups)
    return [g[i % len(g)] for g in groups for i in range(most)]


def _user_data(config: RunConfig, tokenizer) -> _Data:
    """Read and tokenise ``config.data.data_paths`` (one report per file), shape each file for the method
    (:func:`_shape_file`) and hold out the evaluation examples: ``data.eval_data_path``'s, else a
    ``data.eval_fraction`` share of the distinct prompts (``mojax.data.holdout_split``: no held-out prompt trains)."""
    import functools

    from mojax.data import ReaderConfig, TokenizeConfig, holdout_split, load_tokenized_files

    data = config.data
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    tok_cfg = TokenizeConfig(max_length=data.max_length, max_prompt_length=data.max_prompt_length,
                             add_bos=_adds_bos(tokenizer), pad_id=0 if pad is None else int(pad))
    reader = ReaderConfig(format=data.data_format)
    paths = data.data_paths
    loaded, reports = load_tokenized_files(paths, tokenizer, tok_cfg, reader)
    examples = []
    for i, path in enumerate(paths):
        part = [ex for ex in loaded if ex.dataset_id == i][:data.max_examples]
        examples += _shape_file(config, part, path, i, len(paths))
    where = ", ".join(paths)
    shapes = {ex.labels.shape for ex in examples}
    if len(shapes) != 1:
        raise ValueError(f"{where}: the files' examples have different label shapes [K, N] {sorted(shapes)}")
    k = shapes.pop()[0]
    if config.method == "cos-dpo" and k < 2:
        raise ValueError(f"{where}: cos-dpo needs K >= 2 objectives but the data has K=1; give one preference file "
                         "per objective (--data.data-paths helpful.jsonl harmless.jsonl) or a multi-objective file "
                         "(e.g. PKU-SafeRLHF)")
    held = []
    if data.eval_data_path:
        part, eval_reports = load_tokenized_files((data.eval_data_path,), tokenizer, tok_cfg, reader)
        reports += eval_reports
        held = _shape_file(config, part[:data.max_examples], data.eval_data_path, 0, 1)
        if {ex.labels.shape for ex in held} != {examples[0].labels.shape}:
            raise ValueError(f"{data.eval_data_path}: evaluation records have label shape "
                             f"{held[0].labels.shape}, the training data {examples[0].labels.shape}")
    elif data.eval_fraction:
        examples, held = holdout_split(examples, data.eval_fraction, seed=config.data_seed)
    if config.method == "cos-dpo" and len(paths) > 1:
        examples = _balance_files(examples, len(paths))
    vocab = 1 + max(int(max(ex.prompt_ids.max(initial=0), *(r.max(initial=0) for r in ex.response_ids)))
                    for ex in examples + held)
    return _Data(examples=examples, held_out=held, tokenize=tok_cfg, num_objectives=k, reports=tuple(reports),
                 report=functools.reduce(lambda a, b: a.merge(b), reports), vocab_needed=max(vocab, tok_cfg.pad_id + 1))


def _synthetic_data(config: RunConfig) -> _Data:
    from mojax.data import SyntheticLMConfig, make_pairs

    data_cfg = SyntheticLMConfig()
    pairs = make_pairs(data_cfg, num_pairs=config.num_pairs, seed=config.data_seed)
    return _Data(examples=pairs.examples, held_out=[], tokenize=None, num_objectives=len(data_cfg.objectives),
                 vocab_needed=data_cfg.vocab_size)


def _check_safetensors(path: Path) -> None:
    """Refuse a truncated or garbage ``.safetensors`` file by name: its 8-byte header length and JSON header must
    describe tensors that fit in the file (read before anything is allocated)."""
    import json
    import struct

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (named by the model directory's checkpoint)")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} does not fit the file's {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        for name, info in header.items():
            if name != "__metadata__" and not (isinstance(info, dict) and 0 <= info["data_offsets"][1] <= size - 8 - n):
                raise ValueError(f"tensor {name!r} lies outside the file")
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None


def _check_model_path(config: RunConfig) -> None:
    """Check ``data.model_path`` before the data is read or tokenised: it exists, a directory has a parseable
    ``config.json`` and safetensors files whose headers are sound (each problem named by its file)."""
    import json

    if not config.data.model_path:
        return
    path = Path(config.data.model_path)
    if not path.exists():
        raise FileNotFoundError(f"data.model_path {config.data.model_path!r}: no such directory")
    if path.is_file():
        if path.suffix == ".bin":
            return
        raise FileNotFoundError(f"data.model_path {config.data.model_path!r}: expected a Hugging Face model "
                                "directory (config.json + safetensors) or a llama2.c .bin file")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"data.model_path {config.data.model_path!r}: no config.json in this directory "
                                "(not a Hugging Face model directory)")
    try:
        parsed = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise ValueError(f"{cfg}: not a Hugging Face model config (no 'model_type')")
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors "
                                "checkpoints are supported)")
    for name in files:
        _check_safetensors(path / name)


def _load_model(config: RunConfig, mesh):
    """The pretrained decoder at ``config.data.model_path`` (HF directory or llama2.c ``.bin``), placed on ``mesh``
    with compute dtype ``config.dtype`` and parameters stored in ``config.param_dtype``."""
    import jax.numpy as jnp

    from mojax.models import load_hf, load_llama2c

    _check_model_path(config)
    path = Path(config.data.model_path)
    kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), mesh=mesh)
    try:
        return load_hf(path, **kw) if path.is_dir() else load_llama2c(path, **kw)
    except MemoryError:
        raise ValueError(f"{path}: the checkpoint does not fit in memory (or is corrupt)") from None


@dataclasses.dataclass(frozen=True)
class _WithRef:
    """A training record with the reference's log-probs of its responses (``--reference cached``)."""

    example: Any
    logps: Any  # float32 [N]


def _cached_reference(model, examples: list, tokenize, *, batch_size: int, mesh):
    """``(records, batch_fn)``: ``examples`` with ``model``'s sequence log-probs attached (computed once, in jitted
    batches, by ``mojax.train.ref_cache.compute_logps``) and the pipeline's batch function that adds
    ``batch["ref_logps"]`` ``[B, N]``. One row length (the bucket of the longest example) for every batch."""
    import numpy as np

    from mojax.data import TokenizeConfig, collate
    from mojax.data.tokenize import bucket_length
    from mojax.train.ref_cache import compute_logps

    cfg = tokenize if tokenize is not None else TokenizeConfig()
    length = bucket_length(max(ex.length for ex in examples), cfg)
    logps = compute_logps(model, collate(examples, cfg, length=length), batch_size=batch_size, mesh=mesh)

    def batch_fn(records, size):
        batch = collate([r.example for r in records], cfg, batch_size=size, length=length)
        ref = np.stack([r.logps for r in records])
        batch["ref_logps"] = np.concatenate([ref, np.repeat(ref[:1], size - len(ref), axis=0)])  # fillers: masked
        return batch

    return [_WithRef(ex, lp) for ex, lp in zip(examples, logps)], batch_fn


def _frozen_copy(model):
    """A copy of ``model`` with its own buffers (same shardings): the train step donates the policy's parameters,
    which a shallow clone would share with the reference."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    copy = nnx.clone(model)
    nnx.update(copy, jax.tree.map(jnp.copy, nnx.state(copy)))
    return copy


def _host_model(model):
    """``model`` with every array fully on this host: multi-process runs all-gather the shards first (every
    process must call this; only process 0 then writes)."""
    import jax
    from flax import nnx

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        nnx.update(model, multihost_utils.process_allgather(nnx.state(model), tiled=True))
    return model


def export_hf(result: TrainResult, path: str | Path, *, tokenizer: Any = None) -> Path:
    """Merge the trained LoRA adapters into the base weights and write a ``transformers`` checkpoint to ``path``
    (with the tokenizer's files when one is given, so ``AutoTokenizer.from_pretrained(path)`` works too).

    For a COS-DPO ``ConditionedPolicy`` the adapter kinds (``mixed_lora``, ``hyper_lora``) are merged at the
    uniform weights w = 1/K; for the prefix kinds (``hpt``, ``deep_hpt``) the LoRA-merged backbone is exported (a
    prefix has no Hugging Face counterpart; the conditioned policy lives in the checkpoints). A full fine-tuning run
    exports its policy.
    """
    import jax
    from flax import nnx

    from mojax.models import merge_lora, save_hf

    # copy=True: a plain merge shares its Variables with result.state, and merge_lora assigns to them in place (it
    # would fold the adapters into result.state's base kernels while the adapters stay there: applied twice after).
    model = nnx.merge(result.graphdef, result.state.params, result.state.rest, copy=True)
    from mojax.train.objectives import AnchoredPolicy

    from mojax.models import ConditionedPolicy
    from mojax.models.conditioning import PREFIX_KINDS

    if isinstance(model, ConditionedPolicy) and model.config.kind not in PREFIX_KINDS:
        k = model.config.num_objectives
        decoder = model.merged([1.0 / k] * k)
    else:
        decoder = model.policy if isinstance(model, AnchoredPolicy) else getattr(model, "backbone", model)
        decoder = merge_lora(decoder)
    decoder = _host_model(decoder)
    path = Path(path)
    if jax.process_index() == 0:
        save_hf(decoder, path)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
    return path


def run(config: RunConfig) -> TrainResult:
    """Build data, model and objective from ``config`` and train with :func:`mojax.train.fit` (see the module
    docstring)."""
    from mojax.train.distributed import initialize

    initialize(config.distributed)  # before anything touches a device

    import jax
    import jax.numpy as jnp

    from mojax.train.mesh import check_global_batch, make_mesh

    mesh = make_mesh(config.mesh)
    # Cheap checks first: a bad batch size or model path must not wait for the data to be tokenised (nor leave a
    # new run directory behind).
    check_global_batch(mesh, config.train.batch_size * jax.process_count(), accum_steps=config.train.accum_steps)
    _check_model_path(config)
    if config.train.run_dir is None:
        if jax.process_count() > 1:
            raise ValueError("a multi-process run needs the same --train.run-dir on every process")
        from mojax.train.run_dir import new_run_dir

        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, run_dir=str(new_run_dir("runs", config.method))))
    if config.method == "sft":  # SFT's count is response tokens: its throughput is tokens/s
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, count_unit="tokens"))
    from flax import nnx

    from mojax.data import PipelineConfig, make_iterator
    from mojax.models import ConditioningConfig, Decoder, DecoderConfig, LoRAConfig, add_lora, build_conditioned
    from mojax.train.checkpoint import install_sigterm_flag
    from mojax.train.loop import fit, make_eval_fn
    from mojax.train.objectives import AnchoredPolicy

    primary = jax.process_index() == 0
    tokenizer = _load_tokenizer(config)
    real = config.data.real
    data = _user_data(config, tokenizer) if real else _synthetic_data(config)
    if primary:
        for report in data.reports:
            print(report.summary())

    base = _load_model(config, mesh) if config.data.model_path else None
    if base is not None:
        dec_cfg = base.config
        if real and config.data.max_length > dec_cfg.max_positions:
            raise ValueError(f"data.max_length={config.data.max_length} exceeds the model's max_positions="
                             f"{dec_cfg.max_positions}")
    else:
        vocab = max(data.vocab_needed, len(tokenizer) if tokenizer is not None else 0)
        # Rounded up (as is common for embedding tables) so the vocabulary splits evenly over the tensor axis.
        multiple = math.lcm(64, mesh.shape["tensor"])
        vocab = -(-vocab // multiple) * multiple
        positions = max(128, config.data.max_length if real else 0)
        dec_cfg = DecoderConfig.tiny(vocab_size=vocab, max_positions=positions, dtype=jnp.dtype(config.dtype),
                                     param_dtype=jnp.dtype(config.param_dtype))
    if data.vocab_needed > dec_cfg.vocab_size:
        raise ValueError(f"the data holds token id {data.vocab_needed - 1} but the model's vocabulary has "
                         f"{dec_cfg.vocab_size} entries: tokenizer and model do not match")

    def attach(decoder):
        if config.full_finetune:  # every weight trains; the reference (not for SFT) is a frozen copy of the start
            if config.method == "sft" or config.reference == "cached":
                return decoder
            return AnchoredPolicy(decoder, _frozen_copy(decoder))
        lora = LoRAConfig(rank=config.lora_rank)
        if config.method != "cos-dpo":
            return add_lora(decoder, lora, rngs=nnx.Rngs(config.train.seed + 1))
        cond = ConditioningConfig(kind=config.conditioning, num_objectives=data.num_objectives, lora=lora)
        return build_conditioned(decoder, cond, rngs=nnx.Rngs(config.train.seed + 1))

    # A loaded model is already on the mesh: pass the module. The tiny one is built inside jit, shard by shard.
    model = attach(base) if base is not None else (lambda: attach(Decoder(dec_cfg, rngs=nnx.Rngs(config.train.seed))))
    batch_size = config.train.batch_size
    train_records, held_records, batch_fns = data.examples, data.held_out, (None, None)
    if config.full_finetune and config.reference == "cached" and config.method != "sft":
        if base is None:  # the cache needs the starting weights now: build the tiny model eagerly (same init)
            model = base = Decoder(dec_cfg, rngs=nnx.Rngs(config.train.seed))
        train_records, train_fn = _cached_reference(base, data.examples, data.tokenize, batch_size=batch_size,
                                                    mesh=mesh)
        held_fn = None
        if data.held_out:
            held_records, held_fn = _cached_reference(base, data.held_out, data.tokenize,
                                                      batch_size=min(batch_size, len(data.held_out)), mesh=mesh)
        batch_fns = (train_fn, held_fn)
    iterator = make_iterator(train_records, PipelineConfig(batch_size=batch_size, seed=config.data_seed,
                                                           num_epochs=None), tokenize_config=data.tokenize,
                             batch_fn=batch_fns[0])
    objective = _objective(config, data.num_objectives)
    eval_fn = None
    if data.held_out:
        held = make_iterator(held_records, PipelineConfig(batch_size=min(batch_size, len(data.held_out)),
                                                          shuffle=False, num_epochs=1),
                             tokenize_config=data.tokenize, batch_fn=batch_fns[1])
        eval_fn = make_eval_fn(objective, list(held), mesh=mesh, seed=config.data_seed)
    if primary:
        print(f"mojax.train: {config.method} on {jax.device_count()} device(s), mesh {dict(mesh.shape)}, "
              f"{len(data.examples)} examples ({len(data.held_out)} held out), model "
              f"{config.data.model_path or 'tiny random decoder'}, run dir {config.train.run_dir}")
    result = fit(model, objective, iterator, config=config.train, optimizer=config.optimizer, mesh=mesh,
                 wrt=_trainable(config), eval_fn=eval_fn, run_config=config, data_report=data.report,
                 checkpoint=config.checkpoint, stop_flag=install_sigterm_flag(), fingerprint=_fingerprint(config),
                 allow_changes=("steps", *config.allow_changes))
    if config.data.model_path and config.save_hf and not result.stopped:
        out = export_hf(result, result.run_dir / "hf", tokenizer=tokenizer)
        if primary:
            print(f"mojax.train: {'model' if config.full_finetune else 'LoRA merged, model'} saved to {out}")
    return result


def main(argv: list[str] | None = None) -> TrainResult:
    """Parse ``argv`` into a :class:`RunConfig` with ``tyro`` and :func:`run` it.

    A user error (a bad option value, a missing file, unusable data) ends the process with one line on stderr and
    exit status 2, without a traceback.
    """
    import sys

    from mojax.data import DataError
    from mojax.train import distributed
    from mojax.train.checkpoint import CheckpointError
    from mojax.train.run_dir import SkippedStepsError

    config = None
    try:
        config = parse_cli(RunConfig, args=argv, prog="mojax.train")
        _check_finite(config, "")
        return run(config)
    except SkippedStepsError as e:  # the run itself failed (not its input): its own status
        distributed.mark_failed()
        if config is not None and config.debug:
            raise
        print(f"mojax.train: {e}".splitlines()[0], file=sys.stderr)
        raise SystemExit(3) from None
    except (ValueError, FileNotFoundError, DataError, CheckpointError, distributed.DistributedInitError) as e:
        distributed.mark_failed()  # peers of a multi-process run stop now instead of waiting in a collective
        if config is not None and config.debug:
            raise
        print(f"mojax.train: error: {e}".splitlines()[0], file=sys.stderr)
        raise SystemExit(2) from None
