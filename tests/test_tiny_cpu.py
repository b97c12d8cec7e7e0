"""The `tiny_cpu` recipe ("for trying things out") makes images dfkd's own digits teacher reads as their class."""

import json

from click.testing import CliRunner

from dfkd.cli import main


def test_tiny_cpu_images_are_read_by_the_digits_teacher(digits_teacher, tmp_path):
    out = str(tmp_path / "s")
    result = CliRunner().invoke(main, ["synthesize", "--config", "tiny_cpu", "--teacher", digits_teacher, "--out", out])
    assert result.exit_code == 0, result.output
    measured = CliRunner().invoke(main, ["evaluate", "fidelity", out, "--json"])
    assert measured.exit_code == 0, measured.output
    report = json.loads(measured.stdout)
    assert report["images"] == 16 and report["fidelity"] >= 0.9, report  # 0.125 with the recipe's old settings
