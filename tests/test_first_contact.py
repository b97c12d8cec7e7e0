"""First contact with the command line: every --help loads without torch, the help texts say what the commands
do, and the messages say what happened and what to do next."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfkd.cli import main
from synth.common.errors import UserError
from synth.shards.format import ShardDataset

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
    from dfkd.export.config import FORMATS
    from dfkd.export.formats import WRITERS

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


SMALL = ["--per-class", "4", "--classes-per-batch", "2", "--images-per-class", "2", "--units-per-shard", "1"]
SMALL += ["--resolutions", "8", "--iterations", "1", "--seed", "0", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def two_shards(random_teacher, tmp_path_factory) -> Path:
    """A tiny set of two shards (one unit each) from the random 4-class teacher."""
    out = tmp_path_factory.mktemp("texts") / "shards"
    result = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--classes", "0-1", *SMALL, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_inspect_into_a_closed_pipe_stops_quietly(two_shards):
    statuses = {}
    for args in (["--help"], ["inspect", str(two_shards)]):
        process = subprocess.Popen(
            [sys.executable, "-m", "dfkd", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        process.stdout.close()  # `| head` that has read enough
        stderr = process.stderr.read().decode()
        statuses[args[0]] = process.wait()
        assert stderr == "", (args, stderr)
    assert statuses["inspect"] == 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe


def test_verify_failure_reads_as_words(two_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(two_shards, copy)
    (copy / "shard-000001.h5").unlink()
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    line = next(line for line in result.stdout.splitlines() if line.startswith("verify:"))
    assert result.exit_code == 2 and line == "verify: FAILED: shard-000001.h5 is missing", line


def test_repeated_or_single_class_says_what_is_wrong(random_teacher, tmp_path):
    runner = CliRunner()
    repeated = runner.invoke(
        main, ["synthesize", "--teacher", random_teacher, "--classes", "1,1", *SMALL, "--out", str(tmp_path / "a")]
    )
    assert repeated.exit_code == 2 and "class 1 more than once" in repeated.stderr and "1,5,7-9" in repeated.stderr
    single = runner.invoke(
        main, ["synthesize", "--teacher", random_teacher, "--classes", "1", *SMALL, "--out", str(tmp_path / "b")]
    )
    assert single.exit_code == 2 and "at least 2 classes" in single.stderr and "[]" not in single.stderr


def test_combining_sets_states_the_real_rule(two_shards, random_teacher, tmp_path):
    other = tmp_path / "other"
    args = ["synthesize", "--teacher", random_teacher, "--classes", "2-3", *SMALL, "--out", str(other)]
    assert CliRunner().invoke(main, [*args, "--resolutions", "16"]).exit_code == 0
    with pytest.raises(UserError) as refused:
        ShardDataset([str(two_shards), str(other)])
    assert "resolution (8 vs 16)" in str(refused.value) and "may hold different classes" in str(refused.value)
    assert "same classes" not in str(refused.value)


def test_quiet_low_fidelity_line_points_at_no_hidden_warning():
    from dfkd.cli.synthesize import _lines

    summary = {"nothing_to_do": False, "shards_written": 1, "shards_skipped": 0, "out": "s", "seconds": 1, "shards": 1}
    summary.update(images=4, complete=True, fidelity=0.25, low_fidelity=True)
    assert "see the warning above" in "\n".join(_lines(summary, warned=True))
    quiet = "\n".join(_lines(summary, warned=False))
    assert "warning above" not in quiet and "--a-bn" in quiet


def test_interrupted_distill_prints_the_command_that_resumes(monkeypatch, tmp_path):
    import dfkd.distill.trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dfkd.distill.trainer, "train_student", interrupted)
    args = [
        "distill",
        "--shards",
        str(tmp_path),
        "--no-verify",
        "--distillation",
        "stored",
        "--out",
        str(tmp_path / "r"),
    ]
    result = CliRunner().invoke(main, args, prog_name="dfkd")
    assert result.exit_code == 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: interrupted; to resume, run: dfkd {shlex.join(args)} --resume"
    )


def test_library_log_warnings_are_hidden_unless_debugging(monkeypatch):
    import logging

    monkeypatch.delenv("DFKD_DEBUG", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.WARNING)
    CliRunner().invoke(main, ["inspect", "--help"])
    assert not logging.getLogger("timm.scheduler.cosine_lr").isEnabledFor(logging.WARNING)
