"""The command line: tyro parses the frozen configs; runs on synthetic pairs, on a user's JSONL with a Hugging Face
GPT-2 checkpoint (exported back to transformers after merging LoRA), and on multi-objective PKU-style data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

WORDS = ("how do i bake bread cake knead the dough mix flour water yeast sugar then wait rest it slowly ignore "
         "that question is dull add salt heat oven").split()
WORDS = tuple(dict.fromkeys(WORDS))


def _tokenizer():
    """A word-level tokenizer (no BOS, EOS = <eos>, PAD = <pad>): self-made, so the test needs no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("<pad>", "<unk>", "<eos>") + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 saved by transformers, with the tokenizer in the same directory."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _write_pairs(path):
    good = [{"prompt": "how do i bake bread", "chosen": "mix flour water yeast then knead the dough",
             "rejected": "ignore that question"},
            {"prompt": "how do i bake cake", "chosen": "mix flour sugar then heat oven",
             "rejected": "that question is dull"},
            {"prompt": "how do i knead dough", "chosen": "knead it slowly then rest it", "rejected": "wait"},
            {"prompt": "how do i mix flour", "chosen": "add water then mix slowly", "rejected": "ignore it"}] * 2
    lines = [json.dumps(r) for r in good]
    lines.insert(3, "{not json")                                                     # malformed_json
    lines.insert(5, json.dumps({"prompt": "how do i bake", "chosen": "add salt"}))   # missing_field
    lines.insert(7, json.dumps({"prompt": "how", "chosen": "", "rejected": "wait"}))  # empty_response
    path.write_text("\n".join(lines) + "\n")
    return len(good)


def test_cli_parses_configs_and_trains(tmp_path):
    from mojax.train.cli import main

    result = main(["--method", "stable-po", "--train.steps", "2", "--train.log-every", "1", "--train.run-dir",
                   str(tmp_path), "--train.no-progress", "--num-pairs", "32", "--checkpoint.every-steps", "0"])
    assert int(result.state.step) == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "stable-po" and config["train"]["steps"] == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    # The reference is the LoRA base and LoRA's B starts at 0: the policy starts equal to it, so no hinge yet.
    assert lines[0]["hinge"] == 0.0 and abs(lines[0]["preference_loss"] - np.log(2)) < 1e-6
    assert not (tmp_path / "hf").exists()  # no model path: nothing to export


def test_cli_user_jsonl_and_hf_checkpoint_export(tmp_path, gpt2_dir, capsys):
    """JSONL with bad lines + a transformers GPT-2 → DPO on LoRA → merged export that transformers loads."""
    torch = pytest.importorskip("torch")
    from flax import nnx
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mojax.models import load_hf, merge_lora
    from mojax.train.cli import main

    data = tmp_path / "prefs.jsonl"
    n_good = _write_pairs(data)
    run_dir = tmp_path / "run"
    result = main(["--method", "dpo", "--data.data-paths", str(data), "--data.model-path", str(gpt2_dir),
                   "--data.max-length", "32", "--data.max-prompt-length", "16", "--train.batch-size", "4", "--train.steps", "3", "--train.log-every", "1",
                   "--train.run-dir", str(run_dir), "--train.no-progress", "--checkpoint.every-steps", "0",
                   "--optimizer.learning-rate", "0.05", "--lora-rank", "2", "--data.eval-fraction", "0.25",
                   "--train.eval-every", "2"])
    out = capsys.readouterr().out
    assert f"kept {n_good} of {n_good + 3} records" in out and "skipped malformed_json: 1" in out

    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["kept"] == n_good
    assert report["skipped"] == {"malformed_json": 1, "missing_field": 1, "empty_response": 1}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["data_paths"] == [str(data)] and config["data"]["model_path"] == str(gpt2_dir)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [x for x in records if "loss" in x]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(math.isfinite(x["loss"]) for x in lines)
    held = [x for x in records if "eval/loss" in x]  # 2 of the 8 good pairs held out, evaluated at 2 and the end
    assert [x["step"] for x in held] == [2, 3] and all(math.isfinite(x["eval/loss"]) for x in held)
    assert "6 examples (2 held out)" in out
    assert abs(lines[0]["loss"] - math.log(2)) < 1e-5  # the LoRA base is the reference: DPO starts at ln 2

    # The export equals mojax's merged model, and training moved it away from the checkpoint it started from.
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "hf").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "hf")
    ids = np.asarray(tok("how do i bake bread mix flour then knead the dough")["input_ids"], np.int32)[None]
    lora_logits = np.asarray(result.model()(ids))
    merged = merge_lora(nnx.merge(result.graphdef, result.state.params, result.state.rest, copy=True))
    ours = np.asarray(merged(ids))
    np.testing.assert_allclose(ours, lora_logits, atol=1e-5, rtol=0)  # merging does not change the function
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    base = np.asarray(load_hf(gpt2_dir)(ids))
    assert np.abs(ours - base).max() > 1e-3


def _write_pku(path):
    rows = []
    for i in range(6):
        safer = i % 2  # odd rows: the more helpful response 0 is the less safe one
        rows.append({"prompt": f"how do i {WORDS[i]}", "response_0": "mix flour then heat oven",
                     "response_1": "ignore that question", "better_response_id": 0, "safer_response_id": safer})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_cli_data_objective_index_selects_dimension(tmp_path, gpt2_dir):
    """PKU rows have labels [K=2, N=2]: pairwise methods keep row ``objective_index`` with its winner first;
    cos-dpo keeps both rows."""
    from mojax.train import DataConfig
    from mojax.train.cli import RunConfig, _load_tokenizer, _user_data

    def cfg(**kw):
        return RunConfig(data=DataConfig(data_paths=(str(path),), max_length=32, max_prompt_length=16), **kw)

    path = tmp_path / "pku.jsonl"
    _write_pku(path)
    tok = _load_tokenizer(RunConfig(data=DataConfig(model_path=str(gpt2_dir))))  # found in the model directory
    assert tok is not None and tok.eos_token == "<eos>"
    eos = tok.eos_token_id
    helpful = tok("mix flour then heat oven", add_special_tokens=False)["input_ids"] + [eos]
    refusal = tok("ignore that question", add_special_tokens=False)["input_ids"] + [eos]

    safer = _user_data(cfg(objective_index=1), tok)
    assert safer.num_objectives == 1 and safer.report.kept == 6  # the objective sees one dimension
    for i, ex in enumerate(safer.examples):
        assert ex.labels.tolist() == [[1.0, 0.0]]
        assert ex.response_ids[0].tolist() == (refusal if i % 2 else helpful)  # the safer response first
    better = _user_data(cfg(), tok)
    assert all(ex.response_ids[0].tolist() == helpful for ex in better.examples)
    both = _user_data(cfg(method="cos-dpo"), tok)
    assert both.num_objectives == 2
    assert [ex.labels.tolist() for ex in both.examples[:2]] == [[[1, 0], [1, 0]], [[1, 0], [0, 1]]]

    with pytest.raises(ValueError, match="objective_index=2"):
        _user_data(cfg(objective_index=2), tok)


def test_cli_rejects_bad_options(tmp_path):
    from mojax.train import DataConfig
    from mojax.train.cli import RunConfig, main, run

    with pytest.raises(SystemExit):
        main(["--method", "ppo"])
    with pytest.raises(ValueError, match="max_prompt_length"):
        DataConfig(max_length=16, max_prompt_length=16)
    with pytest.raises(FileNotFoundError, match="model_path"):
        run(RunConfig(data=DataConfig(model_path=str(tmp_path / "nowhere")), train=_one_step(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:  # a user error: exit status 2, one line, no traceback
        main(["--data.model-path", str(tmp_path / "nowhere"), "--train.run-dir", str(tmp_path / "run"),
              "--train.no-progress"])
    assert exit_info.value.code == 2


def _one_step(tmp_path):
    from mojax.train.loop import TrainConfig

    return TrainConfig(steps=1, run_dir=str(tmp_path / "run"), progress=False)


def test_cli_trains_on_a_mesh_that_cannot_split_the_vocabulary(tmp_path, gpt2_dir):
    """A 31-token vocabulary cannot be split over tensor=2: ``mojax.sharding.state_shardings`` replicates that
    dimension (d_model = 32 still splits), so a 2×2 fsdp×tensor run trains with the same losses as a data-parallel run.
    Runs in a subprocess with 4 CPU devices."""
    import os
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    _write_pairs(data)
    code = f"""
import json
from mojax.train.cli import main
for name, mesh in (("data", ["--mesh.data", "4"]), ("grid", ["--mesh.fsdp", "2", "--mesh.tensor", "2"])):
    r = main(["--method", "dpo", "--data.data-paths", {str(data)!r}, "--data.model-path", {str(gpt2_dir)!r},
              "--data.max-length", "32", "--data.max-prompt-length", "16", "--train.batch-size", "4", "--train.steps", "2",
              "--train.log-every", "1", "--optimizer.learning-rate", "0.05",
              "--train.no-progress", "--checkpoint.every-steps", "0", "--no-save-hf",
              "--train.run-dir", {str(tmp_path)!r} + "/" + name, *mesh])
    losses = [json.loads(x)["loss"] for x in open({str(tmp_path)!r} + "/" + name + "/metrics.jsonl")]
    print("RESULT", name, *losses)
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[1]: [float(x) for x in line.split()[2:]] for line in out.stdout.splitlines()
            if line.startswith("RESULT ")}
    assert len(rows["data"]) == len(rows["grid"]) == 2, rows
    assert abs(rows["grid"][0] - math.log(2)) < 1e-5, rows  # LoRA starts at the reference
    np.testing.assert_allclose(rows["grid"], rows["data"], atol=1e-5)  # and the update is the same on both meshes
