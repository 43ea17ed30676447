"""Tests for experiments/_report.py: JSON artefacts, Markdown tables, the report, the verdict, plots."""

from __future__ import annotations

import json
import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import _report as C

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_side=100):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    # a blank canvas would mean nothing was drawn: some pixels must differ from the background
    assert np.ptp(img[..., :3]) > 0.1


from config_fixtures import Cfg as _Cfg  # noqa: E402
from config_fixtures import Inner as _Inner  # noqa: E402


def test_config_and_metrics_round_trip(tmp_path):
    cfg = _Cfg(steps=7, inner=_Inner(lr=0.5))
    C.save_config(tmp_path, cfg)
    got = json.loads((tmp_path / "config.json").read_text())
    assert got == {"steps": 7, "name": "x", "inner": {"lr": 0.5, "betas": [0.1, 1.0]}, "out": None}
    metrics = {"methods": {"m": {"hypervolume": np.float32(0.25), "num_params": np.int64(12),
                                 "front": np.array([[0.1, 0.2], [0.3, 0.4]])}}, "flag": np.bool_(True)}
    C.save_metrics(tmp_path, metrics)
    got = C.load_json(tmp_path / "metrics.json")
    assert got["methods"]["m"]["hypervolume"] == 0.25 and isinstance(got["methods"]["m"]["num_params"], int)
    assert got["methods"]["m"]["front"] == [[0.1, 0.2], [0.3, 0.4]] and got["flag"] is True
    with pytest.raises(TypeError):
        C.save_config(tmp_path, 3)
    with pytest.raises(TypeError):
        C.save_metrics(tmp_path, [1, 2])


def test_non_finite_becomes_null_with_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"\$\.a\[1\]"):
        C.save_json(tmp_path / "m.json", {"a": [1.0, float("nan")], "b": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1.0, None], "b": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.to_jsonable({"ok": [1.0, 2.0]})  # finite values: no warning
    with pytest.raises(TypeError, match=r"\$\.x"):
        C.to_jsonable({"x": object()})


@settings(max_examples=30, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False,
                                                                                        allow_infinity=False)
                    | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                    max_leaves=10))
def test_to_jsonable_is_identity_on_json(value):
    assert C.to_jsonable(value) == value
    assert json.loads(json.dumps(C.to_jsonable(value), allow_nan=False)) == value


def test_markdown_table_format():
    table = C.markdown_table([{"method": "a|b", "hv": 0.123456, "n": 1234567, "t": 2.5e-5},
                              {"method": "c", "hv": None, "extra": True}])
    lines = table.splitlines()
    assert lines[0] == "| method | hv | n | t | extra |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| a\\|b | 0.1235 | 1,234,567 | 2.500e-05 | – |"
    assert lines[3] == "| c | – | – | – | True |"
    assert C.markdown_table([{"x": 1.0}], formats={"x": ".2f"}).splitlines()[2] == "| 1.00 |"
    with pytest.raises(ValueError):
        C.markdown_table([])


def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    t = np.linspace(0, np.pi / 2, 11)
    fronts = {"w_cos_dpo": np.stack([np.cos(t), np.sin(t)], 1), "dpo_ls": 0.8 * rng.random((11, 2))}
    p = C.plot_pareto_fronts(tmp_path / "front.png", fronts, objective_names=["o1", "o2"], reference=[0, 0],
                             title="t", annotate={"w_cos_dpo": [f"{x:.1f}" for x in t]})
    _assert_png(p)
    p3 = C.plot_pareto_fronts(tmp_path / "front3.png", {"a": rng.random((6, 3)), "b": rng.random((5, 3))},
                              objective_names=["x", "y", "z"])
    _assert_png(p3)
    curves = {"a": rng.random(50), "b": (np.arange(20) * 2.0, rng.random(20))}
    _assert_png(C.plot_curves(tmp_path / "curves.png", curves, smooth=5, logy=True))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        C.plot_pareto_fronts(tmp_path / "bad.png", {"a": rng.random((4, 3))}, objective_names=["x", "y"])
    with pytest.raises(ValueError):
        C.plot_curves(tmp_path / "bad.png", {"a": (np.arange(3), np.arange(4))})


def test_front_mask_matches_bruteforce():
    rng = np.random.default_rng(1)
    pts = rng.random((40, 3))
    mask = C._front_mask(pts, maximize=True)
    for i in range(len(pts)):
        dominated = any((pts[j] >= pts[i]).all() and (pts[j] > pts[i]).any() for j in range(len(pts)))
        assert mask[i] == (not dominated)
    assert (C._front_mask(pts, maximize=False) == C._front_mask(-pts, maximize=True)).all()


def test_write_report_layout(tmp_path):
    C.plot_curves(tmp_path / "loss.png", {"a": [3.0, 2.0, 1.0]})
    path = C.write_report(tmp_path, title="T", what_ran="ran things", command="python -m x --quick",
                          tables={"Methods": [{"method": "a", "hv": 0.5}], "Raw": "| a |\n|---|\n| 1 |"},
                          plots=["loss.png", ("loss.png", "training loss")], claim="It held: 0.5 > 0.4.",
                          sections={"Notes": "n"})
    text = path.read_text()
    assert text.startswith("# T\n")
    for needle in ["## What ran", "ran things", "```bash\npython -m x --quick\n```", "### Methods",
                   "| method | hv |", "| a | 0.5 |", "### Raw", "![loss](loss.png)", "![training loss](loss.png)",
                   "## Notes", "## Did the paper's claim hold here?", "It held: 0.5 > 0.4."]:
        assert needle in text
    assert text.index("## Results") < text.index("## Plots") < text.index("## Did the paper")
    with pytest.raises(FileNotFoundError):
        C.write_report(tmp_path, title="T", what_ran="", command="", tables={}, plots=["missing.png"], claim="c")
    with pytest.raises(ValueError):
        C.write_report(tmp_path, title="T", what_ran="", command="", tables={}, claim="  ")


def test_command_line_quotes():
    assert C.command_line(["prog.py", "--name", "a b"]).endswith("--name 'a b'")


def test_panels_and_histograms_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(2)
    panels = {"chosen": {"a": (np.arange(5), rng.random(5)), "b": rng.random(5)}, "rejected": {"b": rng.random(5)}}
    _assert_png(C.plot_curve_panels(tmp_path / "p.png", panels, ylabels=["logp", "logp"]))
    hists = {"run 1": {"x": rng.normal(size=200), "empty": np.zeros(0)}, "run 2": {"x": rng.normal(size=50)}}
    _assert_png(C.plot_histograms(tmp_path / "h.png", hists, xlabels="value", bins=np.linspace(-3, 3, 13)))
    _assert_png(C.plot_histograms(tmp_path / "s.png", hists, xlabels=["a", "b"], step=True, density=False))
    with pytest.raises(ValueError):
        C.plot_curve_panels(tmp_path / "bad.png", {"empty": {}})
    with pytest.raises(ValueError):
        C.plot_histograms(tmp_path / "bad.png", {}, xlabels="x")


def test_verdict_validates_and_renders(tmp_path):
    v = C.Verdict(claim="SPO keeps dimension 1.", result="inconclusive", test="paired bootstrap, 95% CI",
                  seeds=3, ci=(-0.01, 0.05))
    assert C.to_jsonable({"verdict": v})["verdict"] == {"claim": "SPO keeps dimension 1.", "result": "inconclusive",
                                                        "test": "paired bootstrap, 95% CI", "seeds": 3,
                                                        "ci": [-0.01, 0.05]}
    assert "**Verdict: inconclusive**" in v.markdown() and "[-0.01, 0.05]" in v.markdown()
    for bad in ({"result": "maybe"}, {"seeds": 0}, {"ci": (1.0, 0.0)}, {"ci": (0.0, float("nan"))}, {"test": " "}):
        with pytest.raises(ValueError):
            C.Verdict(**{"claim": "c", "result": "held", "test": "t", **bad})
    smoke = C.Verdict.smoke("c")
    assert smoke.result == "smoke"
    text = C.write_report(tmp_path, title="T", what_ran="w", command="x", tables={}, claim="numbers",
                          verdict=smoke).read_text()
    claim_part = text[text.index("## Did the paper"):]
    assert "**Verdict: smoke**" in claim_part and "draws no conclusion" in claim_part
    assert claim_part.index("Verdict") < claim_part.index("numbers")
