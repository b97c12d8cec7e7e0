"""A student from the user's own code (`dfkd distill --student module:factory` / `file.py:factory`): distilled from a
tiny teacher's shards, recorded in student.json and read back by `dfkd evaluate accuracy` and the other readers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfkd.cli.distill import distill_command
from dfkd.cli.evaluate import evaluate_group as evaluate
from dfkd.data.image_folder import write_image_folder
from dfkd.distill import AugmentConfig, DistillConfig, OptimConfig, train_student
from synth.common.errors import UserError
from synth.common.runtime import Progress
from synth.common.student_file import load_student
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.competitor import load_competitor
from synth.run.engine import synthesize

torch.set_num_threads(1)

MODEL_PY = '''
import torch.nn as nn


class LeNet5Half(nn.Module):
    """LeNet-5-Half (half the channels of LeNet-5) for 32-px images of 1 or 3 channels, with BatchNorm."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 3, 5), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(200, 60), nn.ReLU(), nn.Linear(60, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build(num_classes, width=1):
    return LeNet5Half(num_classes, in_channels=3)


NOT_CALLABLE = 3


def not_a_module(num_classes):
    return num_classes


def two_heads(num_classes):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = LeNet5Half(num_classes, 3)

        def forward(self, x):
            return self.net(x), self.net(x)

    return Two()
'''
NO_AUG = AugmentConfig(
    rand_augment=None, color_jitter=0.0, scale=(1.0, 1.0), hflip=0.0, mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.0
)


@pytest.fixture(scope="module")
def shards(random_teacher, tmp_path_factory) -> str:
    """8 synthesized 32-px images of the 4-class random teacher (a few iterations: plumbing, not quality)."""
    out = tmp_path_factory.mktemp("own-shards")
    synthesize(
        SynthesisConfig(
            teacher=random_teacher,
            classes="all",
            per_class=2,
            classes_per_batch=4,
            images_per_class=2,
            threads=1,
            device="cpu",
            schedule=Schedule(resolutions=(32,), iterations=(3,)),
            losses=LossWeights(bn=1.0),
        ),
        out,
    )
    return str(out)


@pytest.fixture
def model_py(tmp_path) -> Path:
    path = tmp_path / "code" / "lenet_half.py"
    path.parent.mkdir()
    path.write_text(MODEL_PY)
    return path


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> str:
    """12 random 32-px images in class folders 0-3 (a real-image folder's layout)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    return str(write_image_folder(images, np.arange(12) % 4, tmp_path_factory.mktemp("real") / "val"))


def _distill(shards, teacher, student, out, *extra):
    args = [
        "--shards", shards, "--teacher", teacher, "--student", student, "--out", out,
        "--epochs", "2", "--stage1-epochs", "1", "--batch-size", "4", "--workers", "0", "--threads", "1",
        "--device", "cpu", "--rand-augment", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
        "--warmup-epochs", "0", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(distill_command, [str(a) for a in args])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    assert "Traceback" not in result.output and "trains at" not in result.output, result.output
    return errors[0]


def test_a_file_student_distils_records_itself_and_evaluates(shards, random_teacher, model_py, real_folder, tmp_path):
    out = tmp_path / "run"
    result = _distill(shards, random_teacher, f"{model_py}:LeNet5Half", out, "--student-kwargs", '{"in_channels": 1}')
    assert result.exit_code == 0, result.output
    assert "trains at 32 px (the shards' resolution), normalised with mean (0.5, 0.5, 0.5)" in result.output
    assert "as the teacher's images were made" in result.output
    assert "hidden-layer KD is off: it needs a DearKD student's block taps" in result.output
    meta = json.loads((out / "student.json").read_text())
    assert meta["model"] == f"{model_py.resolve()}:LeNet5Half"
    assert meta["student_kwargs"] == {"in_channels": 1} and len(meta["code_sha256"]) == 64
    assert (meta["num_classes"], meta["input_size"], meta["mean"], meta["std"]) == (4, 32, [0.5] * 3, [0.5] * 3)
    assert "model_kwargs" not in meta
    state = torch.load(out / "student.pth", weights_only=True)
    assert "features.0.weight" in state and state["features.0.weight"].shape[1] == 1  # the user's network itself

    args = ["accuracy", "--student", out / "student.pth", "--data", real_folder, "--json", "--device", "cpu"]
    report = CliRunner().invoke(evaluate, [str(a) for a in args])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["student"]["images"] == 12

    loaded = load_student(out / "student.pth")
    assert not loaded.model.training and loaded.input_size == 32
    assert loaded.model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)  # one channel, fed the channels' mean
    assert load_competitor(out / "student.pth").num_classes == 4

    model_py.write_text(MODEL_PY + "\n# changed\n")
    notes = []
    load_student(out / "student.pth", notes.append)
    assert len(notes) == 1 and "changed since" in notes[0]


def test_a_module_student_trains_in_process_with_stated_normalisation(
    shards, random_teacher, model_py, monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(str(model_py.parent))
    config = DistillConfig(
        shards=shards,
        teacher=random_teacher,
        student="lenet_half:build",
        student_kwargs={"width": 2},
        student_mean="imagenet",
        student_std="0.25",
        epochs=1,
        stage1_epochs=1,
        batch_size=4,
        workers=0,
        threads=1,
        device="cpu",
        augment=NO_AUG,
        optim=OptimConfig(warmup_epochs=0),
    )
    messages = []
    summary = train_student(config, tmp_path / "run", Progress(message=messages.append))
    assert summary["hidden_kd"] is False and summary["pairs"] == []
    assert any("as --student-mean/--student-std say" in m for m in messages), messages
    meta = json.loads((tmp_path / "run" / "student.json").read_text())
    assert meta["model"] == "lenet_half:build" and meta["student_kwargs"] == {"width": 2}
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.25] * 3
    assert load_student(tmp_path / "run" / "student.pth").model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_pairs_and_timm_only_settings_are_refused_in_one_line(shards, random_teacher, model_py, tmp_path):
    line = _error_line(_distill(shards, random_teacher, f"{model_py}:build", tmp_path / "a", "--pairs", "0:1"))
    assert "--pairs needs a DearKD student's block taps" in line
    line = _error_line(
        _distill(shards, random_teacher, "dearkd_pico_patch4_32", tmp_path / "b", "--student-kwargs", '{"a": 1}')
    )
    assert "--student-kwargs is for your own student" in line


@pytest.mark.parametrize(
    "factory, kwargs, expected",
    [
        ("NOT_CALLABLE", "{}", "is not callable"),
        ("not_a_module", "{}", "returned int, not a torch.nn.Module"),
        ("build", '{"depth": 3}', "unexpected keyword argument 'depth'"),
        ("two_heads", "{}", "returned tuple for 2 images; it must return one (batch, 4) tensor"),
        ("missing", "{}", "has no 'missing'"),
    ],
)
def test_a_bad_factory_is_one_error_line(shards, random_teacher, model_py, tmp_path, factory, kwargs, expected):
    result = _distill(shards, random_teacher, f"{model_py}:{factory}", tmp_path / "run", "--student-kwargs", kwargs)
    assert expected in _error_line(result)


def test_a_student_that_cannot_take_the_input_size_says_so(shards, random_teacher, model_py, tmp_path):
    line = _error_line(_distill(shards, random_teacher, f"{model_py}:build", tmp_path / "run", "--input-size", "16"))
    assert "cannot run on 3x16x16 input" in line


def test_load_student_refuses_weights_that_do_not_fit(model_py, tmp_path):
    from synth.common.student_file import save_student
    from synth.teachers.user_code import code_sha256, parse_code_spec

    spec = f"{model_py}:build"
    info = {"model": spec, "student_kwargs": {}, "code_sha256": code_sha256(parse_code_spec(spec))}
    info.update(num_classes=4, input_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    save_student(tmp_path / "student.pth", torch.nn.Linear(2, 2), info)
    with pytest.raises(UserError, match="does not load into student"):
        load_student(tmp_path / "student.pth")
