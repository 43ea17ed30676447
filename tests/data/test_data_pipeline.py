"""Tests of mojax.data.pipeline: exact resume, per-process sharding, epochs, bucketed batches."""

import numpy as np
import pytest

from mojax.data.letor import RankingData
from mojax.data.pipeline import PipelineConfig, make_dataset, make_iterator, num_batches
from mojax.data.synthetic_lm import SyntheticLMConfig, make_pairs
from mojax.data.tokenize import TokenizeConfig

RECORDS = [{"id": np.int64(i)} for i in range(37)]


def ids(batch):
    return batch["id"][batch["example_mask"]].tolist()


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("drop", [True, False])
def test_sharding_covers_each_epoch_exactly_once(count, drop):
    epochs, bs = 2, 4
    per_process = []
    for index in range(count):
        cfg = PipelineConfig(batch_size=bs, seed=3, num_epochs=epochs, drop_remainder=drop, shard_index=index,
                             shard_count=count)
        batches = list(make_iterator(RECORDS, cfg))
        assert len(batches) == num_batches(len(RECORDS), cfg)
        assert all(b["id"].shape == (bs,) for b in batches)
        per_process.append(batches)
    assert len({len(p) for p in per_process}) == 1  # every host runs the same number of steps
    stream = [i for step in zip(*per_process) for b in step for i in ids(b)]  # global batches in step order
    n = len(RECORDS)
    per_step = bs * count
    if drop:
        assert len(stream) == epochs * n // per_step * per_step
    else:
        assert len(stream) == epochs * n
    # the global stream (one process, global batch size) visits each record once per epoch, in epoch order
    single = [i for b in make_iterator(RECORDS, PipelineConfig(batch_size=per_step, seed=3, num_epochs=epochs,
                                                               drop_remainder=drop, shard_index=0, shard_count=1))
              for i in ids(b)]
    for e in range(epochs):
        epoch = single[e * n:(e + 1) * n]
        assert len(set(epoch)) == len(epoch)
    if not drop:
        assert sorted(single[:n]) == list(range(n)) and sorted(single[n:]) == list(range(n))
    assert sorted(stream) == sorted(single)
    # and sharding only splits each global batch among the processes
    steps = list(zip(*per_process))
    singles = list(make_iterator(RECORDS, PipelineConfig(batch_size=per_step, seed=3, num_epochs=epochs,
                                                         drop_remainder=drop, shard_count=1)))
    for step, whole in zip(steps, singles):
        assert sorted(i for b in step for i in ids(b)) == sorted(ids(whole))


def test_epochs_are_reshuffled_and_seeded():
    cfg = PipelineConfig(batch_size=37, seed=0, num_epochs=2, shard_count=1)
    e1, e2 = (ids(b) for b in make_iterator(RECORDS, cfg))
    assert sorted(e1) == sorted(e2) == list(range(37)) and e1 != e2
    again = [ids(b) for b in make_iterator(RECORDS, cfg)]
    assert again == [e1, e2]
    other = [ids(b) for b in make_iterator(RECORDS, PipelineConfig(batch_size=37, seed=1, num_epochs=2,
                                                                   shard_count=1))]
    assert other[0] != e1
    ordered = [ids(b) for b in make_iterator(RECORDS, PipelineConfig(batch_size=37, shuffle=False, shard_count=1))]
    assert ordered == [list(range(37))]


def test_iterator_state_resumes_exactly_on_sequence_batches():
    pairs = make_pairs(SyntheticLMConfig(), num_pairs=50, seed=0).examples
    cfg = PipelineConfig(batch_size=4, seed=7, num_epochs=None, shard_count=1)
    tcfg = TokenizeConfig(max_length=32, max_prompt_length=12, min_bucket=8)
    it = make_iterator(pairs, cfg, tokenize_config=tcfg)
    for _ in range(15):  # past the first epoch boundary (12 batches)
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    fresh = make_iterator(pairs, cfg, tokenize_config=tcfg)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_each_batch_is_padded_to_its_own_bucket():
    from mojax.data.readers import TokenizedExample

    short = [TokenizedExample(prompt_ids=[1, 4], response_ids=[[5, 2], [6, 2]], labels=[[1, 0]])] * 4
    long = [TokenizedExample(prompt_ids=[1] * 10, response_ids=[[5] * 12, [6, 2]], labels=[[1, 0]])] * 4
    cfg = PipelineConfig(batch_size=4, shuffle=False, shard_count=1)
    tcfg = TokenizeConfig(max_length=64, max_prompt_length=16, min_bucket=8)
    shapes = [b["input_ids"].shape for b in make_iterator(short + long + short, cfg, tokenize_config=tcfg)]
    assert shapes == [(4, 2, 8), (4, 2, 32), (4, 2, 8)]


def test_ranking_pipeline_and_padding_batch():
    q, l, f = 10, 5, 3
    rng = np.random.default_rng(0)
    data = RankingData(features=rng.normal(size=(q, l, f)).astype(np.float32), where=np.ones((q, l), bool),
                       labels=rng.normal(size=(q, 2, l)).astype(np.float32), qids=np.arange(q))
    cfg = PipelineConfig(batch_size=4, seed=0, num_epochs=1, drop_remainder=False, shard_count=1)
    batches = list(make_iterator(data, cfg))
    assert [b["example_mask"].sum() for b in batches] == [4, 4, 2]
    assert batches[0]["features"].shape == (4, l, f) and batches[0]["labels"].shape == (4, 2, l)
    seen = np.concatenate([b["features"][b["example_mask"]] for b in batches])
    assert sorted(map(tuple, seen[:, 0, :].tolist())) == sorted(map(tuple, data.features[:, 0, :].tolist()))


def test_defaults_and_bad_config():
    assert PipelineConfig(batch_size=2).shard() == (0, 1)  # jax.process_index / process_count
    with pytest.raises(ValueError):
        PipelineConfig(batch_size=0)
    with pytest.raises(ValueError):
        PipelineConfig(batch_size=2, shard_index=2, shard_count=2).shard()
    with pytest.raises(ValueError, match="no full global batch"):
        make_dataset(RECORDS[:3], PipelineConfig(batch_size=4, shard_count=1))
    with pytest.raises(TypeError, match="batch_fn"):
        make_dataset([1, 2, 3], PipelineConfig(batch_size=1, shard_count=1))


def variable_length_examples(n, seed=0):
    from mojax.data.readers import TokenizedExample

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 120, n)
    return [TokenizedExample(prompt_ids=[1] * int(rng.integers(1, 8)), response_ids=[[i + 10] * int(lengths[i]),
                                                                                     [3] * int(lengths[i])],
                             labels=[[1, 0]]) for i in range(n)]


@pytest.mark.parametrize("window", [0, 4])
def test_processes_get_identical_shapes_and_grouping_keeps_coverage(window):
    exs = variable_length_examples(90)
    tcfg = TokenizeConfig(max_length=128, max_prompt_length=8, min_bucket=8)
    per = []
    for index in range(3):
        cfg = PipelineConfig(batch_size=4, seed=2, num_epochs=1, drop_remainder=False, shard_index=index,
                             shard_count=3, length_group_window=window)
        per.append(list(make_iterator(exs, cfg, tokenize_config=tcfg)))
    for step in zip(*per):  # the row length comes from the global batch: one shape on every process
        assert len({b["input_ids"].shape for b in step}) == 1
    seen = sorted(int(b["input_ids"][i, 0, b["loss_mask"][i, 0]][0]) - 10 for p in per for b in p
                  for i in np.flatnonzero(b["example_mask"]))
    assert seen == list(range(90))


def test_length_grouping_pads_less_and_resumes():
    exs = variable_length_examples(400, seed=1)
    tcfg = TokenizeConfig(max_length=128, max_prompt_length=8, min_bucket=8, bucket="multiple", bucket_multiple=16)

    def efficiency(window):
        cfg = PipelineConfig(batch_size=8, seed=0, shard_count=1, length_group_window=window)
        batches = list(make_iterator(exs, cfg, tokenize_config=tcfg))
        return sum(b["attention_mask"].sum() for b in batches) / sum(b["attention_mask"].size for b in batches)

    plain, grouped = efficiency(0), efficiency(16)
    assert grouped > plain + 0.2, (plain, grouped)
    cfg = PipelineConfig(batch_size=8, seed=0, num_epochs=None, shard_count=1, length_group_window=16)
    it = make_iterator(exs, cfg, tokenize_config=tcfg)
    for _ in range(70):  # past the first epoch (50 batches) and into the second window
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(5)]
    fresh = make_iterator(exs, cfg, tokenize_config=tcfg)
    fresh.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh)["input_ids"], w["input_ids"])


@pytest.mark.slow
def test_two_real_processes_cover_the_data_once_with_one_global_shape(tmp_path):
    """Two JAX processes (gloo): default shard args, global arrays built from each process's batch."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).with_name("_pipeline_worker.py")
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(tmp_path / f"{i}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    res = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert [(r["index"], r["count"]) for r in res] == [(0, 2), (1, 2)]
    assert res[0]["shapes"] == res[1]["shapes"]  # same global shapes and the same global reductions
    assert all(s[0] == 8 for s in res[0]["shapes"])
    assert sum(s[-1] for s in res[0]["shapes"]) == 45  # valid examples across both processes
    assert sorted(res[0]["seen"] + res[1]["seen"]) == list(range(45))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), bs=st.integers(1, 5), count=st.integers(1, 4), epochs=st.integers(1, 3),
       seed=st.integers(0, 2**31), window=st.sampled_from([0, 2]))
def test_padded_sharding_property(n, bs, count, epochs, seed, window):
    recs = [{"id": np.int64(i)} for i in range(n)]
    per = [list(make_iterator(recs, PipelineConfig(batch_size=bs, seed=seed, num_epochs=epochs,
                                                   drop_remainder=False, shard_index=i, shard_count=count,
                                                   length_group_window=window)))
           for i in range(count)]
    assert len({len(p) for p in per}) == 1
    seen = [i for p in per for b in p for i in ids(b)]
    assert sorted(seen) == sorted(list(range(n)) * epochs)
