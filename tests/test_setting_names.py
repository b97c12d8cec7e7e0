"""Errors name a setting as the user gave it: the flag on the command line, the key in a recipe, the parameter in
Python."""

from __future__ import annotations

from click.testing import CliRunner

from dfkd.api import python_terms
from dfkd.cli import main
from dfkd.cli.options import rename_settings


def error_of(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    return result.stderr.strip()


def test_flags_typed_are_named_as_flags(tmp_path):
    message = error_of("synthesize", "--teacher", "x.pt", "--per-class", "10", "--images-per-class", "4", "--out", "o")
    assert message == "error: --per-class 10 must be a positive multiple of --images-per-class 4"
    stages = error_of("synthesize", "--teacher", "x.pt", "--resolutions", "16,32", "--iterations", "5", "--out", "o")
    assert "--resolutions [16, 32] and --iterations [5]" in stages and "schedule." not in stages


def test_recipe_values_are_named_by_their_key(tmp_path):
    message = error_of("synthesize", "--config", "digits", "--teacher", "x.pt", "--images-per-class", "3", "--out", "o")
    assert "per_class (recipe key) 80 must be a positive multiple of --images-per-class 3" in message


def test_print_config_refuses_what_the_run_refuses():
    message = error_of(
        "synthesize", "--print-config", "--teacher", "x.pt", "--per-class", "10", "--images-per-class", "4"
    )
    assert "--per-class 10" in message


def test_renaming_leaves_prose_and_drops_a_repeated_flag():
    names = {"schedule.lr": "--lr", "per_class": "--per-class"}
    assert rename_settings("schedule.lr (--lr) must be > 0, not 0", names) == "--lr must be > 0, not 0"
    assert rename_settings("per_class_grid 3 and xper_class", names) == "per_class_grid 3 and xper_class"
    assert python_terms("schedule.lr (--lr) must be > 0; see --per-class", {"schedule.lr": "lr"}) == (
        "lr must be > 0; see per_class"
    )
