"""The fault-injection script's fast variant: non-finite options through ``python -m mojax.train`` end to end.

(Kill, corrupt-checkpoint and bad-record trials take several CLI processes each; their in-process counterparts are
``tests/train/test_train_checkpoint.py`` and the data tests. Run the full script by hand: see its docstring.)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fault_injection  # noqa: E402


def test_non_finite_options_are_refused_or_stop_the_run_and_nothing_non_finite_is_written(tmp_path, capsys):
    trials = fault_injection.main(["--scenarios", "non-finite", "--only", "rate nan,beta", "--workdir",
                                   str(tmp_path)])
    out = capsys.readouterr().out
    assert [t.variant for t in trials] == ["learning rate nan", "beta 1e30"]
    assert all(t.survived and t.lost == 0 for t in trials), out
    assert out.strip().splitlines()[-1] == "fault_injection_survived=1.000"
