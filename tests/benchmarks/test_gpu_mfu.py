"""benchmarks/gpu_mfu.py: the CPU smoke mode runs end to end (fused attention, scanned + rematerialised layers,
packed rows, bf16 compute), and the FLOP count and batch layouts it relies on are checked by hand."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_mfu  # noqa: E402


def test_counted_flops_by_hand_and_full_length_case():
    s = gpu_mfu.SMOKE
    n = s.layers * (2 * s.d_model * s.heads * s.head_dim + 2 * s.d_model * s.kv_heads * s.head_dim
                    + 3 * s.d_model * s.mlp) + s.d_model * s.vocab
    per_layer_attn = s.heads * s.head_dim  # QKᵀ and AV: 2 matmuls · 2 FLOPs per MAC · L keys, ×4 for fwd+bwd+ref fwd
    lengths = [10, 64, 33]
    by_hand = sum(L * (6 * n + 2 * n) + L * L * s.layers * per_layer_attn * (12 + 4) for L in lengths)
    assert gpu_mfu.counted_flops(s, lengths) == by_hand
    # every sequence full length: the unpacked formula
    assert gpu_mfu.counted_flops(s, [s.seq_len] * (2 * s.pairs)) == s.step_flops()


def test_packed_and_padded_batches_hold_the_same_sequences():
    s = gpu_mfu.SMOKE
    examples = gpu_mfu.make_examples(s, seed=1)
    lengths = gpu_mfu.sequence_lengths(examples)
    assert len(lengths) == 2 * s.pairs and all(s.seq_len // 4 <= L <= s.seq_len for L in lengths)
    packed = gpu_mfu.build_batch(examples, s, "packed")
    padded = gpu_mfu.build_batch(examples, s, "padded")
    assert packed["input_ids"].shape[1] == s.seq_len and padded["input_ids"].shape == (s.pairs, 2, s.seq_len)
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum()) == sum(lengths)
    assert packed["input_ids"].shape[0] <= 2 * s.pairs  # never more rows than sequences
    rows, segs = packed["segment_ids"], packed["segment_index"]
    smax = packed["segment_lengths"].shape[1]
    for b, e in enumerate(examples):
        for j, r in enumerate(e.response_ids):
            row, seg = divmod(int(segs[b, j]), smax)
            tokens = packed["input_ids"][row][rows[row] == seg + 1]
            assert tokens.tolist() == np.concatenate([e.prompt_ids, r]).tolist()
            assert padded["input_ids"][b, j][padded["loss_mask"][b, j]].tolist() == r.tolist()
    with pytest.raises(ValueError, match="layout"):
        gpu_mfu.build_batch(examples, s, "ragged")


@pytest.mark.slow
def test_cpu_smoke_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_mfu.py", "--cpu-smoke", "--steps", "1", "--warmup", "1", "--pairs", "2"])
    gpu_mfu.main()
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "mfu=nan"  # CPU: no peak in the table
    assert "attention fused, scan True, remat nothing_saveable, packed rows" in out[0]
    losses = [float(v) for v in out[-2].split(";")[0].removeprefix("losses ").split(", ")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(2)) < 1e-3  # policy == reference before the update (bf16 compute)
    row = [c.strip() for c in out[-3].split("|")[1:-1]]  # the table's data row
    assert row[0] == "cpu" and float(row[7]) > 0  # tokens/s
