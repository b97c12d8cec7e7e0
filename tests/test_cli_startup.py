"""A usage or settings error comes at once: no command loads torch (seconds) before checking what needs no torch."""

import subprocess
import sys

import pytest

# runs `dfkd ARGS` as `python -m dfkd` does, then says whether torch was imported
PROBE = """
import runpy, sys
sys.argv = ["dfkd", *sys.argv[1:]]
try:
    runpy.run_module("dfkd", run_name="__main__")
finally:
    print("torch imported" if "torch" in sys.modules else "no torch", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["synthesize", "--per-class", "x", "--out", "o"],
        ["synthesize", "--out", "o"],  # no teacher
        ["synthesize", "--config", "no-such-recipe", "--out", "o"],
        ["synthesize", "--teacher", "t.pt", "--per-class", "3", "--out", "o"],  # not a multiple of images_per_class
        ["distill", "--shards", "s", "--out", "r", "--epochs", "x"],
        ["distill", "--config", "no-such-recipe", "--shards", "s", "--out", "r"],
        ["evaluate", "accuracy"],
        ["evaluate", "fidelity", "s", "--batch-size", "0"],
        ["inspect", "no-such-directory"],
        ["train-teacher", "--epochs", "0", "--out", "t.pt"],
        ["export", "s", "--to", "imagefolder", "--out", "x", "--no-such-option"],
    ],
)
def test_a_bad_command_line_is_refused_without_loading_torch(args, tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "error: " in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no torch", (args, result.stderr)


def test_help_loads_no_torch(tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "dfkd synthesize" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "no torch", result.stderr
