"""Tests for experiments/_common.py: run directories, timer and CLI (report writers: test_report.py)."""

from __future__ import annotations

import math
import time

import pytest

from experiments import _common as C

from config_fixtures import Cfg as _Cfg  # noqa: E402
from config_fixtures import Inner as _Inner  # noqa: E402


def test_make_run_dir_default_and_out(tmp_path):
    a = C.make_run_dir("exp", root=tmp_path)
    b = C.make_run_dir("exp", root=tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert a.parent == tmp_path / "exp"
    # collision suffix keeps the timestamp prefix
    assert b.name.startswith(a.name[:15])
    out = C.make_run_dir("exp", tmp_path / "deep" / "given")
    assert out == tmp_path / "deep" / "given" and out.is_dir()
    assert C.make_run_dir("exp", out) == out  # reuse is fine
    with pytest.raises(ValueError, match="plain name"):
        C.make_run_dir("a/b", root=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        C.make_run_dir("exp", tmp_path / "file")


def test_timer_accumulates():
    t = C.Timer()
    with t:
        time.sleep(0.01)
    first = t.seconds
    with t:
        pass
    assert first >= 0.009 and t.count == 2 and math.isclose(t.total, first + t.seconds)
    with t:
        sum(i * i for i in range(200_000))  # busy: CPU time accrues
    assert t.cpu_seconds > 0 and t.cpu_total >= t.cpu_seconds


def test_cli_quick_and_overrides():
    calls = []

    def get_config(quick: bool = False) -> _Cfg:
        return _Cfg(steps=3 if quick else 100)

    assert C.cli(get_config, lambda c: c, argv=[]) == _Cfg()
    got = C.cli(get_config, lambda c: c, argv=["--quick", "--name", "y", "--inner.lr", "0.25"])
    assert got == _Cfg(steps=3, name="y", inner=_Inner(lr=0.25))
    assert C.cli(get_config, lambda c: calls.append(c) or "ret", argv=["--steps", "5"]) == "ret"
    assert calls == [_Cfg(steps=5)]
    with pytest.raises(SystemExit):
        C.cli(lambda: _Cfg(), lambda c: c, argv=["--quick"])
    with pytest.raises(SystemExit):
        C.cli(get_config, lambda c: c, argv=["--no-such-field", "1"])


def test_shared_data_dir_is_outside_repo():
    path = C.shared_data_dir()
    if path is None:
        pytest.skip("../shared absent")
    assert not str(path).startswith(str(C.REPO_ROOT) + "/")

