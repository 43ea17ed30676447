"""The CLI's data handling (issue 14 §5/§6, issue 11 §4): several files in one run (mixed, or one objective each for
cos-dpo), evaluation splits by whole prompts or from a file, single-response SFT, the formats in ``--help``, and
user errors found before the data is tokenised (one line, exit status 2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_train_cli import WORDS, _tokenizer, _write_pairs, _write_pku, gpt2_dir  # noqa: F401  (gpt2_dir: fixture)


def _pairs(path, prompts, chosen="mix flour then heat oven", rejected="ignore that question"):
    path.write_text("\n".join(json.dumps({"prompt": p, "chosen": chosen, "rejected": rejected}) for p in prompts)
                    + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """The word-level tokenizer alone (no model: the runs use the tiny random decoder)."""
    path = tmp_path_factory.mktemp("tok")
    _tokenizer().save_pretrained(path)
    return path


def _cfg(paths, tok_dir, **kw):
    from mojax.train import DataConfig
    from mojax.train.cli import RunConfig

    data = {k[5:]: kw.pop(k) for k in list(kw) if k.startswith("data_")}
    return RunConfig(data=DataConfig(data_paths=tuple(map(str, paths)), tokenizer_path=str(tok_dir), max_length=32,
                                     max_prompt_length=16, **data), **kw)


def _data(config):
    from mojax.train.cli import _load_tokenizer, _user_data

    return _user_data(config, _load_tokenizer(config))


def test_several_files_mixed_for_pairwise_methods(tmp_path, tok_dir):
    """DPO on two files: all examples, file i stamped dataset_id i, one report per file."""
    a = _pairs(tmp_path / "a.jsonl", [f"how do i {w}" for w in WORDS[:5]])
    b = _pairs(tmp_path / "b.jsonl", [f"how do i {w}" for w in WORDS[5:8]], chosen="knead it slowly")
    data = _data(_cfg([a, b], tok_dir))
    assert [ex.dataset_id for ex in data.examples] == [0] * 5 + [1] * 3
    assert [r.kept for r in data.reports] == [5, 3] and data.report.kept == 8
    assert all(ex.labels.tolist() == [[1.0, 0.0]] for ex in data.examples)


def test_cos_dpo_file_k_is_objective_k_and_balanced(tmp_path, tok_dir):
    """cos-dpo on two single-objective files: K = 2, row k carries file k's label and the other row is 0; the
    smaller file is repeated to the larger one's size (each objective weighs the same in a batch)."""
    a = _pairs(tmp_path / "helpful.jsonl", [f"how do i {w}" for w in WORDS[:6]])
    b = _pairs(tmp_path / "harmless.jsonl", [f"how do i {w}" for w in WORDS[6:8]], chosen="ignore it",
               rejected="mix flour")
    data = _data(_cfg([a, b], tok_dir, method="cos-dpo"))
    assert data.num_objectives == 2
    rows = [(ex.dataset_id, ex.labels.tolist()) for ex in data.examples]
    assert rows.count((0, [[1.0, 0.0], [0.0, 0.0]])) == 6 and rows.count((1, [[0.0, 0.0], [1.0, 0.0]])) == 6
    assert len(rows) == 12
    # The listwise loss gives an all-zero label row no weight: objective 1's loss on file 0's example is 0.
    import jax.numpy as jnp

    from mojax.losses import listwise_dpo_loss

    per = listwise_dpo_loss(jnp.array([[0.3, -0.2]] * 2), jnp.zeros((2, 2)), jnp.array(data.examples[0].labels),
                            beta=0.1, label_norm="l1", reduce_fn=None)
    np.testing.assert_allclose(np.asarray(per), [math.log1p(math.exp(-0.1 * 0.5)), 0.0], rtol=1e-6)


def test_cos_dpo_refuses_one_objective(tmp_path, tok_dir, capsys):
    """One single-objective file gives K = 1: refused in one line (exit 2), before any model is built."""
    from mojax.train.cli import main

    a = _pairs(tmp_path / "a.jsonl", [f"how do i {w}" for w in WORDS[:4]])
    with pytest.raises(ValueError, match="cos-dpo needs K >= 2"):
        _data(_cfg([a], tok_dir, method="cos-dpo"))
    with pytest.raises(SystemExit) as info:
        main(["--method", "cos-dpo", "--data.data-paths", str(a), "--data.tokenizer-path", str(tok_dir),
              "--train.run-dir", str(tmp_path / "run"), "--train.no-progress"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "cos-dpo needs K >= 2" in err
    pku = tmp_path / "pku.jsonl"  # a file with several label rows still trains cos-dpo alone ...
    _write_pku(pku)
    assert _data(_cfg([pku], tok_dir, method="cos-dpo")).num_objectives == 2
    with pytest.raises(ValueError, match="K=2 label rows"):  # ... but not mixed with files as objectives
        _data(_cfg([pku, a], tok_dir, method="cos-dpo"))


def test_eval_fraction_holds_out_whole_prompts_and_eval_file(tmp_path, tok_dir):
    prompts = [f"how do i {w}" for w in WORDS[:10]]
    a = _pairs(tmp_path / "a.jsonl", prompts * 3)  # every prompt three times
    data = _data(_cfg([a], tok_dir, data_eval_fraction=0.2))
    held = {tuple(ex.prompt_ids.tolist()) for ex in data.held_out}
    train = {tuple(ex.prompt_ids.tolist()) for ex in data.examples}
    assert len(held) == 2 and len(data.held_out) == 6 and len(data.examples) == 24 and not held & train

    e = _pairs(tmp_path / "eval.jsonl", [f"how do i {w}" for w in WORDS[10:13]])
    data = _data(_cfg([a], tok_dir, data_eval_data_path=str(e)))
    assert len(data.examples) == 30 and len(data.held_out) == 3 and [r.kept for r in data.reports] == [30, 3]
    from mojax.train import DataConfig

    with pytest.raises(ValueError, match="not both"):
        DataConfig(eval_data_path=str(e), eval_fraction=0.1)


def test_sft_on_single_response_records(tmp_path, tok_dir):
    """OpenAI ``messages`` records have one response (N = 1): SFT trains on them, mixed with a pairs file (whose
    chosen response is the target); DPO refuses them naming the file."""
    msgs = tmp_path / "sft.jsonl"
    msgs.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"how do i {w}"},
                                                       {"role": "assistant", "content": "mix flour then wait"}]})
                              for w in WORDS[:3]) + "\n")
    pairs = _pairs(tmp_path / "pairs.jsonl", ["how do i bake"])
    data = _data(_cfg([msgs, pairs], tok_dir, method="sft"))
    assert [len(ex.response_ids) for ex in data.examples] == [1] * 4
    tok = _tokenizer()
    chosen = tok("mix flour then heat oven", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert data.examples[-1].response_ids[0].tolist() == chosen
    with pytest.raises(ValueError, match=r"sft\.jsonl.*1 response"):
        _data(_cfg([msgs], tok_dir, method="dpo"))


def test_help_names_every_format(capsys):
    from mojax.data import FORMATS
    from mojax.train.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    section = out[out.index("--data.data-format"):out.index("--data.model-path")]
    assert all(name in section for name in FORMATS), [n for n in FORMATS if n not in section]
    # Each flag carries its own description (the text between it and the next flag).
    flags = {}
    for line in out.splitlines():
        text = line.strip("│ ").strip()
        if text.startswith("--"):
            current = text.split()[0].rstrip(",")
            flags[current] = ""
        elif flags and text:
            flags[current] += " " + text
    own = {"--beta": "temperature", "--stable-penalty": "hinge", "--cos-penalty": "cosine",
           "--conditioning": "weights w", "--finetune": "every weight", "--reference": "log-probs",
           "--dtype": "compute dtype", "--lora-rank": "LoRA rank", "--data.eval-data-path": "evaluation file",
           "--data.eval-fraction": "distinct prompts", "--train.count-unit": "count"}
    assert {f: w for f, w in own.items() if w not in flags.get(f, "")} == {}, {f: flags.get(f) for f in own}


@pytest.mark.parametrize("case", ["missing", "no_config", "bad_config", "bad_safetensors"])
def test_model_path_errors_come_before_the_data(tmp_path, gpt2_dir, case, capsys):
    """Each model-path problem is one line naming the cause/file, exit 2 — found before the data is read (the
    data file given does not even exist)."""
    import shutil

    from mojax.train.cli import main

    model = tmp_path / "model"
    if case != "missing":
        shutil.copytree(gpt2_dir, model)
    expected = {"missing": "no such directory", "no_config": "no config.json",
                "bad_config": f"{model / 'config.json'}: not valid JSON",
                "bad_safetensors": f"{model / 'model.safetensors'}: not a valid safetensors file"}[case]
    if case == "no_config":
        (model / "config.json").unlink()
    elif case == "bad_config":
        (model / "config.json").write_text("{garbage")
    elif case == "bad_safetensors":
        (model / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(SystemExit) as info:
        main(["--data.data-paths", str(tmp_path / "absent.jsonl"), "--data.model-path", str(model),
              "--train.run-dir", str(tmp_path / "run"), "--train.no-progress"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err


def test_cos_dpo_trains_on_two_files_with_eval_file(tmp_path, gpt2_dir):
    """End to end: cos-dpo on two single-objective files (mixed-LoRA conditioning on a transformers GPT-2, 2 steps)
    logs K = 2 objective losses, the learning rate and held-out metrics of the evaluation file (a PKU file: K = 2
    label rows), and exports the policy merged at w = (1/2, 1/2), which transformers loads with the same logits."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from mojax.train.cli import main

    a = _pairs(tmp_path / "helpful.jsonl", [f"how do i {w}" for w in WORDS[:4]])
    b = _pairs(tmp_path / "harmless.jsonl", [f"how do i {w}" for w in WORDS[4:8]], chosen="ignore it")
    pku = tmp_path / "pku.jsonl"
    _write_pku(pku)
    run_dir = tmp_path / "run"
    result = main(["--method", "cos-dpo", "--conditioning", "mixed_lora", "--data.data-paths", str(a), str(b),
                   "--data.eval-data-path", str(pku), "--data.model-path", str(gpt2_dir),
                   "--data.max-length", "32", "--data.max-prompt-length", "16", "--train.batch-size", "4",
                   "--train.steps", "2", "--train.log-every", "1", "--train.run-dir", str(run_dir),
                   "--train.no-progress", "--checkpoint.every-steps", "0", "--optimizer.learning-rate", "0.01",
                   "--optimizer.warmup-steps", "2"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in records if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2]
    assert all(len(x["objective_losses"]) == 2 for x in steps)
    # The rate of each step's own update: linear warmup over 2 steps gives 0, then 0.01 / 2.
    assert [x["learning_rate"] for x in steps] == pytest.approx([0.0, 0.005])
    assert all("examples_per_s" in x for x in steps)
    held = [x for x in records if "eval/loss" in x]
    assert [x["step"] for x in held] == [2] and math.isfinite(held[0]["eval/loss"])
    assert int(result.state.step) == 2

    policy = result.model()
    ids = np.asarray(_tokenizer()("how do i bake bread mix flour")["input_ids"], np.int32)[None]
    ours = np.asarray(policy(ids, weights=np.full((1, 2), 0.5, np.float32)))
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert np.abs(ours - np.asarray(policy(ids, weights=np.array([[1.0, 0.0]], np.float32)))).max() > 1e-6
