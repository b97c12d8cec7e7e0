"""The Python API: docs/python.md's walk-through runs as written; settings are the options' names; errors name them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import dfkd

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_walk_through_runs_as_written(tmp_path, monkeypatch):
    """Every python cell of docs/python.md, in order, in one namespace: own teacher -> shards -> student -> accuracy."""
    cells = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(cells) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own code
    assert namespace["shards"].images == 80 and namespace["shards"].complete is True
    assert Path(namespace["run"].student).is_file()
    accuracy = namespace["accuracy"]
    assert accuracy.teacher["top1"] > 0.95 and 0 <= accuracy.student["top1"] <= 1
    assert (tmp_path / "walk" / "shards" / "manifest.json").is_file()


def test_importing_dfkd_loads_no_torch():
    code = "import sys, dfkd; print('torch' in sys.modules, callable(dfkd.synthesize), callable(dfkd.distill))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"per_class": 10, "images_per_class": 4}, "per_class 10 must be a positive multiple of images_per_class 4"),
        ({"resolutions": [32, 16], "iterations": [1, 1]}, "resolutions [32, 16] must increase"),
        ({"a_bn": -1.0}, "a_bn must be >= 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"per_clas": 4}, "unknown setting per_clas=; accepted: "),
        ({"mean": "cifar11"}, "mean 'cifar11' is not numbers"),
    ],
)
def test_errors_name_python_parameters(tmp_path, settings, expected):
    stated = {"mean": "half", "std": "half", "input_size": 16, **settings}
    with pytest.raises(dfkd.UserError) as error:
        dfkd.synthesize(Net(), tmp_path / "s", "tiny_cpu", quiet=True, **stated)
    assert expected in str(error.value) and "--" not in str(error.value), str(error.value)
    assert not (tmp_path / "s").exists()


def test_an_in_memory_teacher_needs_its_preprocessing(tmp_path):
    with pytest.raises(dfkd.UserError, match="cannot tell its mean and std and input size.*mean=, std=, input_size="):
        dfkd.synthesize(Net(), tmp_path / "s", "tiny_cpu", quiet=True)


def test_results_read_as_keys_and_attributes(tmp_path):
    torch.manual_seed(0)
    result = dfkd.synthesize(Net(), tmp_path / "s", "tiny_cpu", quiet=True, mean="half", std="half", input_size=32)
    assert result.images == result["images"] == 16 and result.complete
    with pytest.raises(AttributeError, match="fields: "):
        result.no_such_field
