"""Command-line conventions: exit codes and one-line errors."""

from __future__ import annotations

import pytest

from itra_tune import cli
from itra_tune.config import ConfigError


def _main_raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, code", [(ConfigError("data.name: unknown dataset 'x'"), 2),
                                         (KeyboardInterrupt(), 130), (SystemExit(0), 0)])
def test_run_maps_outcomes_to_exit_codes(error, code, capsys):
    assert cli.run("prog", _main_raising(error)) == code
    err = capsys.readouterr().err
    if code == 2:
        assert err == "prog: error: data.name: unknown dataset 'x'\n"


def test_parser_usage_errors_are_one_line_and_exit_2(capsys):
    p = cli.Parser(prog="prog")
    p.add_argument("--seeds", type=int)
    assert cli.run("prog", lambda argv: p.parse_args(argv) and 0, ["--seeds", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prog: error: argument --seeds") and err[0].endswith("(see --help)")


def test_a_missing_module_of_an_extra_is_one_line_naming_the_extra_and_any_other_is_raised(capsys):
    # deep in a part of the search, `import mlflow` fails in an install without the extra
    assert cli.run("prog", _main_raising(ModuleNotFoundError("No module named 'mlflow'", name="mlflow.entities"))) == 2
    assert capsys.readouterr().err == ('prog: error: prog needs mlflow, which is not installed: '
                                       'pip install "itra_tune[search]"\n')
    with pytest.raises(ModuleNotFoundError):  # a module of no extra is a bug, not bad input
        cli.run("prog", _main_raising(ModuleNotFoundError("No module named 'nope'", name="nope")))
