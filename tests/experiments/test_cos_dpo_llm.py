"""COS-DPO LLM experiment: --quick smoke run (metrics.json schema, 11-point fronts, hypervolume against an
independent 2-D sweep), the conditioned model's dependence on w, DPO-LS's objective against a float64 NumPy
re-derivation, and the soup's interpolation endpoints."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import _lm_common as lm
from experiments import cos_dpo_llm as cd
from mojax.models.conditioning import ConditioningConfig
from mojax.train import DataConfig
from mojax.train.objectives.preference import scalarized_dpo_objective
from mojax.data import synthetic_lm

TINY = lm.ModelConfig(d_model=16, num_layers=1, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cos_dpo_llm_quick")
    return cd.main(dataclasses.replace(cd.get_config(quick=True), out=str(out)))


def _hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Independent 2-D hypervolume (maximisation): sweep x descending, add each new strip above the best y."""
    pts = points[(points > ref).all(1)]
    hv, best_y = 0.0, ref[1]
    for x, y in sorted(map(tuple, pts), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            hv += (x - ref[0]) * (y - best_y)
            best_y = y
    return hv


def test_quick_run_metrics_schema(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    ref = np.asarray(metrics["reference_point"], np.float64)
    assert ref.shape == (2,)
    assert {"w_cos_dpo", "dpo_ls", "dpo_soup"} <= set(metrics["methods"])
    for name, m in metrics["methods"].items():
        assert isinstance(m["hypervolume"], float) and math.isfinite(m["hypervolume"]) and m["hypervolume"] >= 0
        assert isinstance(m["train_seconds"], float) and m["train_seconds"] > 0
        assert isinstance(m["num_params"], int) and 0 < m["num_params"] < m["total_params"]
        front = np.asarray(m["front"], np.float64)
        assert front.shape == (11, 2) and np.isfinite(front).all(), name
        assert ((front >= 0) & (front <= 1)).all()  # class_a / class_b rewards are token fractions
        assert m["hypervolume"] == pytest.approx(_hv_2d(front, ref), rel=1e-9, abs=1e-12)
    runs = {n: m["runs"] for n, m in metrics["methods"].items()}
    assert runs["w_cos_dpo"] == 1 and runs["dpo_ls"] == 11 and runs["dpo_soup"] == 2
    # Trainable parameters: DPO-LS stores 11 adapters, the soup 2, W-COS-DPO one adapter plus the HPT module.
    lora = metrics["methods"]["dpo_soup"]["num_params"] // 2
    assert metrics["methods"]["dpo_ls"]["num_params"] == 11 * lora
    assert metrics["methods"]["w_cos_dpo"]["num_params"] > lora
    report = (quick_run / "report.md").read_text()
    assert "](fronts.png)" in report and (quick_run / "fronts.png").stat().st_size > 0
    assert "Did the paper's claim hold here?" in report


def test_conditioned_model_outputs_change_with_w(quick_run):
    """The one trained conditioned model gives different held-out log-probs at w = (1, 0) and (0, 1) (mean
    absolute difference per response). (After the few quick steps the change is too small to flip sampled tokens of
    16 prompts, so the sampled front points may coincide; the default run's front spreads, see docs/experiments/cos-dpo-llm.md.)"""
    m = json.loads((quick_run / "metrics.json").read_text())["methods"]["w_cos_dpo"]
    assert m["logp_change_across_w"] > 1e-4


def test_sweep_weights():
    w = cd.sweep_weights(11)
    assert w.shape == (11, 2)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-7)
    np.testing.assert_allclose(w[:, 0], np.arange(11) / 10, atol=1e-7)


def _tiny_setup(num_pairs=12, seed=0):
    task = synthetic_lm.SyntheticLMConfig()
    pi0 = lm.build_decoder(task, TINY, seed=seed)
    data = cd.synthetic_data(task, (0, 1), num_pairs=num_pairs, seed=seed)
    return task, pi0, lm.with_ref_logps(data, [pi0])


def _randomize_lora(model, seed):
    """Give the adapters nonzero B (they start at 0, i.e. the model equals π_0)."""
    state = nnx.state(model, nnx.LoRAParam)
    rng = np.random.default_rng(seed)  # NumPy: eager jax.random would compile a kernel per leaf shape
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), state))
    return model


def test_scalarized_dpo_objective_matches_numpy():
    """DPO-LS (the library's scalarized_dpo_objective, w a traced hyper-parameter): Σ_k w_k·DPO_k with each
    objective's own chosen response, against float64 NumPy on the model's log-probs."""
    _, pi0, data = _tiny_setup()
    model = _randomize_lora(cd.lora_policy(pi0, cd.Config().lora, seed=1), seed=2)
    w = np.array([0.3, 0.7], np.float32)
    batch = data.batch(np.arange(len(data)))
    objective = scalarized_dpo_objective(beta=0.5, weights=(0.5, 0.5), chunk_size=None)
    graphdef, state = nnx.split(model)
    loss, metrics = jax.jit(lambda st, b: objective(nnx.merge(graphdef, st), b, jax.random.key(0),
                                                    hparams={"weights": jnp.asarray(w)}))(state, batch)
    logps = lm.pair_logps(model, data).astype(np.float64)
    ref = data.arrays["ref_logps"][:, 0].astype(np.float64)
    labels = data.arrays["labels"]  # [E, 2, 2]
    per = np.zeros((len(data), 2))
    for k in range(2):
        first = labels[:, k, 0] > labels[:, k, 1]
        z = 0.5 * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))
        z = np.where(first, z, -z)
        per[:, k] = np.logaddexp(0.0, -z)  # −log σ(z)
    assert float(loss) == pytest.approx(float((per @ w.astype(np.float64)).mean()), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(np.asarray(metrics["objective_losses"]), per.mean(0), rtol=1e-4, atol=1e-5)
    # The two label rows disagree on some pairs (independent Bradley–Terry draws per objective).
    assert (labels[:, 0, 0] != labels[:, 1, 0]).any()


def test_soup_interpolates_the_two_fine_tuned_models():
    _, pi0, data = _tiny_setup()
    a = _randomize_lora(cd.lora_policy(pi0, cd.Config().lora, seed=1), seed=3)
    b = _randomize_lora(cd.lora_policy(pi0, cd.Config().lora, seed=1), seed=4)
    np.testing.assert_allclose(lm.pair_logps(cd.soup(a, b, 1.0), data), lm.pair_logps(a, data), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lm.pair_logps(cd.soup(a, b, 0.0), data), lm.pair_logps(b, data), rtol=1e-5, atol=1e-4)
    # Midpoint: every kernel is the mean of the two merged kernels (W_0 + ½Δ_a + ½Δ_b).
    mid = nnx.state(cd.soup(a, b, 0.5))
    ka = nnx.state(cd.soup(a, b, 1.0))
    kb = nnx.state(cd.soup(a, b, 0.0))
    for x, y, z in zip(jax.tree.leaves(mid), jax.tree.leaves(ka), jax.tree.leaves(kb)):
        np.testing.assert_allclose(np.asarray(x), 0.5 * (np.asarray(y) + np.asarray(z)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(lm.pair_logps(a, data), lm.pair_logps(b, data))


def test_chosen_first_orders_by_the_objective():
    _, _, data = _tiny_setup(num_pairs=30)
    swapped = lm.chosen_first(data, 1)
    labels = swapped.arrays["labels"]
    assert (labels[:, 1, 0] == 1).all() and (labels[:, 1, 1] == 0).all()
    moved = data.arrays["labels"][:, 1, 0] == 0
    assert moved.any()
    np.testing.assert_array_equal(swapped.arrays["input_ids"][moved, 0], data.arrays["input_ids"][moved, 1])
    np.testing.assert_array_equal(swapped.arrays["ref_logps"][moved, :, 0], data.arrays["ref_logps"][moved, :, 1])
    np.testing.assert_array_equal(swapped.arrays["input_ids"][~moved], data.arrays["input_ids"][~moved])
    np.testing.assert_array_equal(swapped.rewards[moved, 0], data.rewards[moved, 1])


def test_fixed_weight_view_equals_the_conditioned_call():
    task, pi0, data = _tiny_setup()
    model = cd.conditioned_policy(pi0, cd.Config(conditioning=ConditioningConfig(
        kind="hpt", num_prefix_tokens=2, rank=2, hidden_dim=8, lora=cd.LORA)))
    batch = data.batch(np.arange(4))
    w = np.array([0.2, 0.8], np.float32)
    ids = jnp.asarray(batch["input_ids"][:, 0])
    mask = jnp.asarray(batch["attention_mask"][:, 0])
    g_view, s_view = nnx.split(cd.at_weight(model, w))
    g_model, s_model = nnx.split(model)
    via_view = jax.jit(lambda st: nnx.merge(g_view, st)(ids, attention_mask=mask))(s_view)
    direct = jax.jit(lambda st: nnx.merge(g_model, st)(ids, weights=jnp.tile(w, (4, 1)), attention_mask=mask))(s_model)
    np.testing.assert_allclose(np.asarray(via_view), np.asarray(direct), rtol=1e-6, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        cd.Config(methods=("w_cos_dpo", "nope"))
    with pytest.raises(ValueError, match="distinct"):
        cd.Config(objectives=(1, 1))
    with pytest.raises(ValueError, match="out of range"):
        cd.Config(objectives=(0, 5))
    with pytest.raises(ValueError, match="tokenizer"):
        cd.Config(data=DataConfig(data_paths=("x.jsonl",)))


# ----------------------------------------------------------------------------------------------------------------
# The SmolLM2 preset (experiments/_cos_llm_smol.py), exercised on a tiny random Llama with GPT-2's tokenizer
# ----------------------------------------------------------------------------------------------------------------

from experiments import _cos_llm_smol as smol  # noqa: E402
from experiments._common import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()
HAS_SHARED = SHARED is not None and (SHARED / "hh-rlhf").is_dir() and (SHARED / "gpt2-bpe").is_dir()


def test_text_rewards_by_hand():
    # words: the, cat, sat, on, the, extraordinarily, comfortable, mat -> content: cat, sat, extraordinarily,
    # comfortable, mat (5 distinct); <= 4 letters: the, cat, sat, on, the, mat (6 of 8).
    r = smol.text_rewards("The cat sat on the extraordinarily comfortable mat. The", info_norm=4.0)
    assert r[0] == 1.0  # capped
    r = smol.text_rewards("The cat sat on the extraordinarily comfortable mat.", info_norm=10.0)
    np.testing.assert_allclose(r, [5 / 10, 6 / 8])
    np.testing.assert_array_equal(smol.text_rewards("... 123 !"), [0.0, 0.0])


def test_hh_first_turns(tmp_path):
    rows = [{"chosen": "\n\nHuman: Hi there?\n\nAssistant: Hello.\n\nHuman: more\n\nAssistant: x", "rejected": "."},
            {"chosen": "\n\nHuman: Hi there?\n\nAssistant: Other.", "rejected": "."},
            {"chosen": "\n\nHuman: Second one\n\nAssistant: ok", "rejected": "."}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert smol.hh_first_turns(tmp_path) == ["Hi there?", "Second one"]


def test_make_pairs_bradley_terry_labels():
    prompts = [np.array([5, 6], np.int32)] * 400
    responses = [np.array([7, 8, 2], np.int32)] * 800
    # Response 0 of each pair is far better on informativeness and far worse on plainness: labels are deterministic
    # in opposite directions; on ties (equal rewards) each label is a fair coin.
    rewards = np.zeros((800, 2))
    rewards[0::2, 0], rewards[1::2, 1] = 1.0, 1.0
    rewards[400:] = 0.0
    rewards[400::2, 0] = rewards[401::2, 0] = 0.3
    data = smol.make_pairs(prompts, responses, rewards, per_prompt=2, bt_scale=0.01, width=16, pad_id=0, seed=0)
    labels = data.arrays["labels"]  # [E, K, 2]
    assert labels.shape == (400, 2, 2)
    assert (labels[:200, 0, 0] == 1).all() and (labels[:200, 1, 1] == 1).all()
    first_obj0 = labels[200:, 0, 0].mean()
    assert 0.35 < first_obj0 < 0.65


@pytest.fixture(scope="module")
def smol_quick_run(tmp_path_factory):
    if not HAS_SHARED:
        pytest.skip("../shared/data (hh-rlhf, gpt2-bpe) absent")
    from mojax.models import Decoder, DecoderConfig, save_hf

    root = tmp_path_factory.mktemp("smol_quick")
    cfg = DecoderConfig(model_type="llama", vocab_size=50257, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                        mlp_dim=32, max_positions=128, eos_token_id=50256)
    save_hf(Decoder(cfg, rngs=nnx.Rngs(0)), root / "tiny-llama")
    out = root / "run"
    cd.run_cli(["--preset", "smollm2", "--quick", "--model-path", str(root / "tiny-llama"), "--tokenizer-path",
                str(SHARED / "gpt2-bpe"), "--out", str(out), "--no-compile-cache"])
    return out


@pytest.mark.slow
def test_smol_preset_quick_on_tiny_llama(smol_quick_run):
    metrics = json.loads((smol_quick_run / "metrics.json").read_text())
    assert (smol_quick_run / "fronts.png").is_file() and (smol_quick_run / "report.md").is_file()
    assert set(metrics["methods"]) == {"dpo_ls", "mixed_lora", "hpt"}
    ref = np.asarray(metrics["reference_point"], np.float64)
    for name, m in metrics["methods"].items():
        front = np.asarray(m["front"], np.float64)
        assert np.isfinite(front).all() and ((front >= 0) & (front <= 1)).all(), name
        assert m["hypervolume"] == pytest.approx(_hv_2d(front, ref), rel=1e-9, abs=1e-12)
        assert m["seconds_per_step"] > 0 and m["train_seconds"] > 0
    assert np.asarray(metrics["methods"]["dpo_ls"]["front"]).shape == (3, 2)
    # the conditioned models: the 3-point sweep plus (½, ½) = the sweep's middle, so 3 points
    assert np.asarray(metrics["methods"]["mixed_lora"]["front"]).shape == (3, 2)
    # mixed LoRA carries one adapter per objective: exactly twice DPO-LS's one adapter; HPT adds its prefix MLPs
    lora = metrics["methods"]["dpo_ls"]["trainable_params"]
    assert metrics["methods"]["mixed_lora"]["trainable_params"] == 2 * lora
    assert metrics["methods"]["hpt"]["trainable_params"] > lora
    assert {v["result"] for v in metrics["verdicts"].values()} == {"smoke"}
    assert -1.0 <= metrics["reward_correlation"] <= 1.0 or math.isnan(metrics["reward_correlation"])


def test_preset_flag_rejects_unknown(capsys):
    with pytest.raises(SystemExit) as e:
        cd.run_cli(["--preset", "gpt5"])
    assert e.value.code == 2 and "--preset" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# --compare-conditionings (experiments/_cos_llm_compare.py)
# ----------------------------------------------------------------------------------------------------------------

from experiments import _cos_llm_compare as cmp  # noqa: E402


def _seed(frac, hv, tr):
    return {"methods": {"a": {"spread_fraction_of_dpo_ls": frac, "hv_ratio": hv, "time_ratio": tr},
                        "b": {"spread_fraction_of_dpo_ls": [0.1, 0.1], "hv_ratio": 0.5, "time_ratio": 0.1}}}


def test_decide_rules():
    ok, low = _seed([0.9, 0.8], 1.0, 0.2), _seed([0.9, 0.6], 1.0, 0.2)
    summ, best, v = cmp.decide([ok, ok], ["a", "b"])
    assert best == "a" and v.result == "held" and v.seeds == 2
    # one seed misses the range threshold, the mean (0.7) meets it: inconclusive
    assert cmp.decide([ok, _seed([0.9, 0.6], 1.0, 0.2)], ["a", "b"])[2].result == "inconclusive"
    assert cmp.decide([low, low], ["a", "b"])[2].result == "did_not_hold"
    assert cmp.decide([_seed([0.9, 0.9], 1.0, 0.4)], ["a", "b"])[2].result == "did_not_hold"  # too slow
    assert cmp.decide([ok], ["a", "b"], smoke=True)[2].result == "smoke"
    np.testing.assert_allclose(summ["a"]["mean"]["spread_fraction_of_dpo_ls"], [0.9, 0.8])


@pytest.mark.slow
def test_compare_conditionings_quick(tmp_path):
    cfg = dataclasses.replace(cd.get_config(quick=True), compare_conditionings=True,
                              conditionings=("hpt", "mixed_lora"), num_weights=3, num_seeds=2, out=str(tmp_path / "cmp"))
    run_dir = cd.main(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["verdict"]["result"] == "smoke" and m["verdict"]["seeds"] == 2 and len(m["seeds"]) == 2
    assert m["best"] in ("hpt", "mixed_lora")
    ref = np.asarray(m["reference_point"])
    for s in m["seeds"]:
        ls = s["dpo_ls"]
        assert len(ls["run_seconds"]) == 3 and ls["seconds"] == pytest.approx(sum(ls["run_seconds"]))
        for name in ("hpt", "mixed_lora"):
            r = s["methods"][name]
            front = np.asarray(r["front"])
            assert front.shape == (3, 2) and np.isfinite(front).all()
            assert r["hypervolume"] == pytest.approx(_hv_2d(front, ref), rel=1e-9, abs=1e-12)
            assert r["hv_ratio"] == pytest.approx(r["hypervolume"] / ls["hypervolume"])
            assert r["time_ratio"] == pytest.approx(r["seconds"] / ls["seconds"])
            np.testing.assert_allclose(r["spread_fraction_of_dpo_ls"],
                                       np.ptp(front, 0) / np.maximum(np.ptp(np.asarray(ls["front"]), 0), 1e-12))
    assert "Verdict: smoke" in (run_dir / "report.md").read_text()
