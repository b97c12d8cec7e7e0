"""First contact with the command line: every --help loads without torch, and the help texts say what the
commands do."""

import json
import subprocess
import sys

from click.testing import CliRunner

from dfkd.cli import main

HELP_OF_EVERY_COMMAND = """
import json, sys
import click
from click.testing import CliRunner
from dfkd.cli import main

def paths(group, prefix=()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from paths(command, (*prefix, name))
        else:
            yield (*prefix, name)

codes = {" ".join(p): CliRunner().invoke(main, [*p, "--help"]).exit_code for p in paths(main)}
heavy = [m for m in ("torch", "timm", "torchvision", "h5py") if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_of_every_command_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert len(result["codes"]) >= 10 and set(result["codes"].values()) == {0}, result["codes"]
    assert result["heavy"] == []


def test_export_formats_are_declared_once():
    from dfkd.evaluate.config import FORMATS
    from dfkd.evaluate.export_formats import WRITERS

    assert tuple(WRITERS) == FORMATS


def test_top_level_help_names_every_export_format():
    text = CliRunner().invoke(main, ["--help"]).output
    export = next(line for line in text.splitlines() if "dfkd export" in line)
    assert "imagefolder" in text and "webdataset" in text and "hf" in text and "PNG class folders" not in export


def test_synthesize_help_keeps_examples_on_their_lines_and_names_recipes():
    text = CliRunner().invoke(main, ["synthesize", "--help"], terminal_width=100).output
    lines = [line.strip() for line in text.splitlines()]
    assert "--student runs/round1/student.pth --a-adi 1" in lines
    assert any(line.startswith("Adaptive DeepInversion rounds") for line in lines)
    assert "--config RECIPE" in text and "shipped" in text
