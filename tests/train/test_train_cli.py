"""The command line: tyro parses the frozen configs; a two-step Stable PO run writes its run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest


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


def test_cli_rejects_unknown_method(capsys):
    from mojax.train.cli import main

    with pytest.raises(SystemExit):
        main(["--method", "ppo"])
