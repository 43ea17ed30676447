"""MORE on real data: HH-RLHF pairs and frozen SmolLM2-135M features, computed once and cached.

The four HH-RLHF files in ``../shared/data/hh-rlhf`` are the K = 4 datasets. Per file: records whose chosen and
rejected transcripts (plain HH text, ``"\\n\\nHuman: … \\n\\nAssistant: …"``, no chat template) both fit in
``max_length`` tokens and differ are kept, shuffled with ``seed`` and the first ``pairs_per_dataset`` taken; the
prompt is the shared prefix up to its last ``"\\n\\nAssistant:"`` (as ``mojax.data``'s ``hh`` parser). Features are the
backbone's final hidden state at the last token of each transcript (what a sequence-classification reward head —
MORE's ``score`` head — reads) and, as an ablation, the mean over tokens; both come from one forward pass.

Build the cache in the background (progress lines in the log)::

    nice -n 10 python -m experiments._more_hh --pairs 400 > more_hh_features.log 2>&1 &
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

HH_DIR = Path("..") / "shared" / "data" / "hh-rlhf"
HH_FILES = ("helpful-base-test-part1", "harmless-base-test-part1", "helpful-online-test",
            "helpful-rejection-sampled-test")
HH_ASSISTANT = "\n\nAssistant:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class HHFeatureConfig:
    """What determines the cached features (every field is part of the cache key)."""

    data_dir: str = str(HH_DIR)
    files: tuple[str, ...] = HH_FILES
    pairs_per_dataset: int = 400
    max_length: int = 256
    seed: int = 0
    batch_size: int = 8
    model_path: str | None = None  # None: mojax.models.fetch_smollm2.smollm2_path()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_hh_pairs(path: str | os.PathLike, tokenizer: Any, *, max_length: int, max_pairs: int,
                  seed: int) -> dict[str, Any]:
    """Token ids of ``max_pairs`` HH pairs from one file: ``{"chosen", "rejected", "prompts", "skipped"}``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    order = np.random.default_rng(seed).permutation(len(records))
    chosen, rejected, prompts = [], [], []
    skipped = {"identical": 0, "no_shared_prompt": 0, "too_long": 0}
    examined = 0
    for i in order:
        examined += 1
        c, r = records[i]["chosen"], records[i]["rejected"]
        cut = os.path.commonprefix([c, r]).rfind(HH_ASSISTANT)
        if c == r:
            skipped["identical"] += 1
            continue
        if cut < 0:
            skipped["no_shared_prompt"] += 1
            continue
        ids_c, ids_r = tokenizer(c)["input_ids"], tokenizer(r)["input_ids"]
        if max(len(ids_c), len(ids_r)) > max_length:
            skipped["too_long"] += 1
            continue
        chosen.append(ids_c)
        rejected.append(ids_r)
        prompts.append(c[:cut + len(HH_ASSISTANT)])
        if len(chosen) == max_pairs:
            break
    return {"chosen": chosen, "rejected": rejected, "prompts": prompts, "skipped": skipped,
            "records_read": int(len(records)), "records_examined": examined}


def data_report(config: HHFeatureConfig) -> dict[str, dict[str, Any]]:
    """Per file: records in the file, records examined (in the seeded order) until ``pairs_per_dataset`` pairs were
    kept or the file ran out, pairs kept and the skipped counts by reason — the same filter the features use."""
    from mojax.models import load_gguf_tokenizer
    from mojax.models.fetch_smollm2 import smollm2_path

    tokenizer = load_gguf_tokenizer(config.model_path or str(smollm2_path()))
    out = {}
    for name in config.files:
        p = read_hh_pairs(Path(config.data_dir) / f"{name}.jsonl.gz", tokenizer, max_length=config.max_length,
                          max_pairs=config.pairs_per_dataset, seed=config.seed)
        out[name] = {"records_in_file": p["records_read"], "records_examined": p["records_examined"],
                     "pairs_kept": len(p["chosen"]), "skipped": p["skipped"]}
    return out


def hh_features(config: HHFeatureConfig, *, chunk: int = 100, cached_only: bool = False,
                log=_log) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset ``{"last": [n, 2, D], "mean": [n, 2, D], "prompt_hash": [n] uint64, "lengths": [n, 2]}``
    (index 0 = chosen), computed with the frozen backbone once and then read from the cache.

    Work is done in chunks of ``chunk`` pairs, round-robin over the datasets (chunk 0 of every dataset, then chunk 1,
    …), each chunk cached on its own: a job stopped early leaves every dataset with the same number of pairs.
    ``cached_only``: compute nothing, return the complete rounds already cached (possibly empty dicts).
    """
    from mojax.models import load_gguf, load_gguf_tokenizer
    from mojax.models.features import cached_features, default_cache_dir, feature_key, file_digest
    from mojax.models.features import sequence_features
    from mojax.models.fetch_smollm2 import smollm2_path

    model_path = config.model_path or str(smollm2_path())
    model_digest = file_digest(model_path)
    tokenizer = load_gguf_tokenizer(model_path)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("data_dir", "files", "model_path")}
    paths = {name: Path(config.data_dir) / f"{name}.jsonl.gz" for name in config.files}
    digests = {name: file_digest(p) for name, p in paths.items()}
    pairs: dict[str, dict[str, Any]] = {}
    backbone = None
    chunks: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in config.files}
    n_chunks = -(-config.pairs_per_dataset // chunk)
    for c in range(n_chunks):
        for name in config.files:
            parts = {"kind": "hh_pair_features", "model": model_digest, "data": digests[name], **settings,
                     "chunk": [c * chunk, min((c + 1) * chunk, config.pairs_per_dataset)]}
            if cached_only and not (default_cache_dir() / f"{feature_key(parts)}.npz").exists():
                return _concat(chunks, rounds=c)

            def compute(name=name, lo=parts["chunk"][0], hi=parts["chunk"][1]):
                nonlocal backbone
                if name not in pairs:
                    pairs[name] = read_hh_pairs(paths[name], tokenizer, max_length=config.max_length,
                                                max_pairs=config.pairs_per_dataset, seed=config.seed)
                    p = pairs[name]
                    log(f"{name}: {len(p['chosen'])} pairs (examined {p['records_examined']} of "
                        f"{p['records_read']} records, skipped {p['skipped']})")
                p = {k: v[lo:hi] for k, v in pairs[name].items() if isinstance(v, list)}
                if not p["chosen"]:
                    raise ValueError(f"{name}: no pairs left for chunk [{lo}, {hi})")
                if backbone is None:
                    backbone = load_gguf(model_path)
                n = len(p["chosen"])
                feats = sequence_features(backbone, p["chosen"] + p["rejected"], batch_size=config.batch_size,
                                          log=lambda s: log(f"{name}[{lo}:{hi}]: {s}"))
                hashes = [int.from_bytes(hashlib.sha256(q.encode()).digest()[:8], "little") for q in p["prompts"]]
                return {"last": np.stack([feats["last"][:n], feats["last"][n:]], 1),
                        "mean": np.stack([feats["mean"][:n], feats["mean"][n:]], 1),
                        "prompt_hash": np.array(hashes, np.uint64),
                        "lengths": np.array([[len(a), len(b)] for a, b in zip(p["chosen"], p["rejected"])])}

            chunks[name].append(cached_features(parts, compute, log=log))
    return _concat(chunks, rounds=n_chunks)


def _concat(chunks: dict[str, list[dict[str, np.ndarray]]], *, rounds: int) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name, parts in chunks.items():
        parts = parts[:rounds]
        out[name] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return out


def main(argv: list[str] | None = None) -> int:
    """Build (or check) the feature cache."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=HHFeatureConfig.pairs_per_dataset)
    parser.add_argument("--max-length", type=int, default=HHFeatureConfig.max_length)
    args = parser.parse_args(argv)
    config = HHFeatureConfig(pairs_per_dataset=args.pairs, max_length=args.max_length)
    feats = hh_features(config)
    for name, f in feats.items():
        _log(f"{name}: last {f['last'].shape}, {len(np.unique(f['prompt_hash']))} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
