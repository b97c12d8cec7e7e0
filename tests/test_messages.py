"""Messages in the user's terms: Ctrl-C exits 130 with the resume hint, a YAML syntax error names its line and
column, distill's --epochs note follows the input checks, a truncated shard's advice works, and inspect reads
damaged shards out in words."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import dfkd.cli
from dfkd.cli import main
from synth.common.errors import UserError
from synth.shards.format import list_shards
from synth.shards.verify import check_integrity


def small(per_class: int = 4, iterations: str = "2,2") -> list[str]:
    """A toy synthesis: two classes, one unit (2 classes x 2 images) per shard."""
    args = ["--classes", "0-1", "--per-class", str(per_class), "--classes-per-batch", "2", "--images-per-class", "2"]
    return args + ["--resolutions", "8,16", "--iterations", iterations, "--units-per-shard", "1", "--threads", "1"]


SMALL = [*small(), "--device", "cpu"]


def test_ctrl_c_exits_130_with_the_command_that_resumes(random_teacher, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--teacher", random_teacher, *small(per_class=16, iterations="25,25"), "--device", "cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dfkd", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a shell's background job ignores SIGINT, and Python keeps it ignored: give the run the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (out / "shard-000000.h5").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    last = stderr.decode().strip().splitlines()[-1]
    assert len(list_shards(out)) < 8, "the interrupt came after the run finished"
    assert process.returncode == 130, stderr.decode()[-2000:]
    assert last.startswith("error: interrupted; to resume, run: ") and f"--out {out}" in last, last
    resumed = CliRunner().invoke(main, [*args, "--out", str(out), "--json"])
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["complete"], resumed.output


def test_ctrl_c_outside_a_command_body_exits_130_too(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(dfkd.cli, "install_warning_filters", interrupted)  # the group's callback, before any command
    result = CliRunner().invoke(main, ["inspect", "."])
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "error: interrupted", result.output


def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("synthesize:\n  per_class: 4\n  schedule: {resolutions: [16, 32]\n  seed: 1\n")
    result = CliRunner().invoke(main, ["synthesize", "--config", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"recipe '{recipe}' is not valid YAML: line 4, column 3: expected ',' or '}}'" in result.stderr
    assert "flow mapping at line 3, column 13" in result.stderr


def test_a_base_recipe_with_a_syntax_error_names_its_file(tmp_path):
    (tmp_path / "base.yaml").write_text("synthesize:\n\tseed: 1\n")
    (tmp_path / "mine.yaml").write_text("base: base\nsynthesize:\n  seed: 2\n")
    result = CliRunner().invoke(main, ["synthesize", "--config", str(tmp_path / "mine.yaml"), "--out", "o"])
    assert result.exit_code == 2 and f"{tmp_path / 'base.yaml'}, line 2, column 1: found character" in result.stderr


@pytest.fixture(scope="module")
def shards(random_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("messages") / "shards"
    result = CliRunner().invoke(main, ["synthesize", "--teacher", random_teacher, *SMALL, "--out", str(out)])
    assert result.exit_code == 0 and len(list_shards(out)) == 2, result.output
    return out


DISTILL = ["distill", "--config", "dearkd_nano_digits", "--epochs", "1", "--batch-size", "2", "--device", "cpu"]


def test_distill_prints_its_epochs_note_only_once_the_inputs_are_checked(shards, random_teacher, tmp_path):
    missing = CliRunner().invoke(main, [*DISTILL, "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "note:" not in missing.stderr, missing.output
    assert missing.stderr.strip().splitlines() == [f"error: shard directory '{tmp_path / 'none'}' does not exist"]
    args = [*DISTILL, "--shards", str(shards), "--teacher", random_teacher, "--out", str(tmp_path / "r")]
    ran = CliRunner().invoke(main, [*args, "--threads", "1"])
    assert ran.exit_code == 0 and "note: --epochs 1 keeps the recipe's proportions" in ran.stderr, ran.output


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_shard_is_not_sent_to_no_verify_but_to_synthesize_which_repairs_it(
    shards, random_teacher, tmp_path
):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(shards), str(copy)], check=True)
    _truncate(copy / "shard-000001.h5")
    with pytest.raises(UserError) as error:
        check_integrity(copy)
    assert "read it anyway" not in str(error.value) and "`dfkd synthesize` command to regenerate it" in str(error.value)
    rerun = CliRunner().invoke(main, ["synthesize", "--teacher", random_teacher, *SMALL, "--out", str(copy)])
    assert rerun.exit_code == 0 and "regenerated damaged shard(s): shard-000001.h5" in rerun.stdout, rerun.output
    check_integrity(copy)


def test_damage_that_leaves_a_shard_readable_still_offers_no_verify(shards, tmp_path):
    import h5py

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(shards), str(copy)], check=True)
    with h5py.File(copy / "shard-000001.h5", "r+") as f:
        f["images"][0, 0, 0, 0] ^= 0x55
    with pytest.raises(UserError, match="pass --no-verify to read it anyway"):
        check_integrity(copy)


def test_inspect_names_damaged_shards_in_words_when_none_verifies(shards, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(shards), str(copy)], check=True)
    for shard in list_shards(copy):
        _truncate(shard)
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1 and "{" not in line, result.output
    assert line.startswith(f"error: no shard in '{copy}' verifies: shard-000000.h5 is damaged: unreadable (")
    assert line.endswith("(and 1 more); rerun the same `dfkd synthesize` command to regenerate the damaged shards")
