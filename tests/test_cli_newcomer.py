"""What a newcomer meets first: help texts with defaults, quiet reruns, readable inspect output, teacher paths that
work from any directory, and options that are refused rather than ignored."""

import json
import os
from pathlib import Path

import yaml
from click.testing import CliRunner

from dfkd.cli import main
from dfkd.cli.common import Reporter
from synth.shards.format import ShardDataset

SMALL = [
    "--classes",
    "0-1",
    "--per-class",
    "2",
    "--classes-per-batch",
    "2",
    "--images-per-class",
    "2",
    "--resolutions",
    "8",
    "--iterations",
    "1",
    "--seed",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
]


def test_synthesize_help_shows_every_default_and_explains_ep_form():
    from dfkd.cli.synthesize import synthesize_command as synthesize

    helps = {param.opts[0]: param.help or "" for param in synthesize.params}
    for option in (
        "--per-class",
        "--classes-per-batch",
        "--images-per-class",
        "--units-per-shard",
        "--multires",
        "--ep-form",
    ):
        assert "[default: " in helps[option], helps[option]
    assert "saturating" in helps["--ep-form"] and "Intra-divergence" in helps["--ep-form"]
    assert CliRunner().invoke(main, ["synthesize", "--help"]).exit_code == 0


def test_export_refuses_config():
    result = CliRunner().invoke(main, ["export", "shards/", "--to", "imagefolder", "out/", "--config", "x.yaml"])
    assert result.exit_code == 2 and "--config" in result.output


def test_no_progress_bar_when_there_is_nothing_to_do():
    bar = Reporter(json_mode=False, quiet=False).bar(0, "img", "synthesize")
    assert bar.disable
    assert not Reporter(json_mode=False, quiet=False).bar(3, "img", "x").disable


def test_relative_teacher_is_recorded_absolute_and_works_from_anywhere(random_teacher, tmp_path, monkeypatch):
    runner = CliRunner()
    teacher = Path(random_teacher)
    monkeypatch.chdir(teacher.parent)
    out = tmp_path / "shards"
    first = runner.invoke(main, ["synthesize", "--teacher", teacher.name, "--out", str(out), *SMALL])
    assert first.exit_code == 0, first.output
    assert ShardDataset(out).teacher["spec"] == str(teacher.resolve())
    assert json.loads((out / "manifest.json").read_text())["config"]["teacher"] == str(teacher.resolve())
    # the same file by its absolute path is the same config (compared by the weights' sha256): nothing to do
    again = runner.invoke(main, ["synthesize", "--teacher", str(teacher.resolve()), "--out", str(out), *SMALL])
    assert again.exit_code == 0 and "nothing to do" in again.stdout, again.output
    assert "%|" not in again.stderr  # no empty progress bars on a finished rerun
    monkeypatch.chdir(tmp_path)
    fidelity = runner.invoke(main, ["evaluate", "fidelity", str(out), "--json", "--device", "cpu"])
    assert fidelity.exit_code == 0, fidelity.output
    inspect = runner.invoke(main, ["inspect", str(out)])
    assert inspect.exit_code == 0, inspect.output
    text = inspect.stdout[inspect.stdout.index("config:\n") + len("config:\n") :]
    config = yaml.safe_load(text)
    assert config["teacher"] == str(teacher.resolve()) and config["losses"]["ep_form"] == "saturating"


def test_fidelity_names_teacher_option_when_recorded_teacher_is_gone(random_teacher, tmp_path):
    copy = tmp_path / "teacher.pt"
    copy.write_bytes(Path(random_teacher).read_bytes())
    out = tmp_path / "shards"
    assert CliRunner().invoke(main, ["synthesize", "--teacher", str(copy), "--out", str(out), *SMALL]).exit_code == 0
    os.remove(copy)
    result = CliRunner().invoke(main, ["evaluate", "fidelity", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and "--teacher" in result.stderr and str(copy) in result.stderr
