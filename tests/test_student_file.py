"""The student file (synth.common.student_file): one writer and one reader of student.pth + student.json for every caller."""

import json
import subprocess
import sys

import pytest
import timm
import torch

import dfkd.evaluate
from synth.common.errors import UserError
from synth.common.student_file import load_student, save_student
from synth.inversion.competitor import load_competitor

INFO = {"model": "dfkd_cnn_tiny", "num_classes": 3, "input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture
def student(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=3)
    save_student(tmp_path / "student.pth", model, {**INFO, "epochs": 1})
    return model, tmp_path / "student.pth"


def test_what_is_saved_loads_back_for_every_reader(student):
    model, path = student
    assert json.loads(path.with_suffix(".json").read_text())["epochs"] == 1
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_student(path)
    assert (loaded.num_classes, loaded.input_size, loaded.mean, loaded.std) == (3, 16, [0.5] * 3, [0.25] * 3)
    assert not loaded.model.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)
    competitor = load_competitor(path)
    assert (competitor.input_size, competitor.mean, competitor.std) == (16, (0.5,) * 3, (0.25,) * 3)
    assert dfkd.evaluate.load_student is load_student  # the public import is the one reader


def test_a_description_without_a_key_is_refused(student):
    _, path = student
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in INFO.items() if k != "std"}))
    with pytest.raises(UserError, match="not a student description"):
        load_competitor(path)


def test_an_unregistered_architecture_names_the_import_that_registers_it(tmp_path):
    """synth reads a student without importing dfkd; a DearKD student it cannot build says how to register it."""
    weights = tmp_path / "student.pth"
    torch.save({}, weights)
    weights.with_suffix(".json").write_text(json.dumps({**INFO, "model": "dearkd_pico_patch4_32"}))
    probe = (
        "import sys; from synth.common.errors import UserError; from synth.common.student_file import load_student\n"
        f"try: load_student({str(weights)!r})\n"
        "except UserError as exc: print(exc)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dfkd'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    message, modules = out.strip().splitlines()
    assert "dearkd_pico_patch4_32" in message and "import dfkd.models" in message and modules == "[]"
