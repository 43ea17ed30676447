"""mojax.train.parse: tyro's framed errors become one line with status 2; help and good parses are unchanged."""

import dataclasses

import pytest

from mojax.train.parse import one_line_error, parse_cli


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Config:
    rate: float = 1.0  # a learning rate

    def __post_init__(self):
        if not self.rate == self.rate:
            raise ValueError(f"rate must be finite, got {self.rate}")


def test_good_parse_returns_the_config():
    assert parse_cli(_Config, args=["--rate", "0.5"]) == _Config(rate=0.5)


@pytest.mark.parametrize("argv, cause", [(["--rate", "nan"], "rate must be finite, got nan"),
                                         (["--bogus"], "Unrecognized options: --bogus")])
def test_errors_are_one_line_with_status_2(argv, cause, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_cli(_Config, args=argv, prog="prog")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: ") and cause in err


def test_debug_keeps_the_framed_message(capsys):
    with pytest.raises(SystemExit):
        parse_cli(_Config, args=["--bogus", "--debug"], prog="prog")
    assert capsys.readouterr().err.count("\n") > 1


def test_help_is_tyros_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_cli(_Config, args=["--help"])
    assert not exit_.value.code
    assert "a learning rate" in capsys.readouterr().out


def test_one_line_error_drops_frame_and_pointer():
    text = "╭─ Value error ─╮\n│ Error parsing x: bad │\n│ ───── │\n│ For full helptext, see p --help │\n╰──╯\n"
    assert one_line_error(text) == "Error parsing x: bad"
