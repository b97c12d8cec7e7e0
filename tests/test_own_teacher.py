"""Your own CNN as the teacher: network classes through `file.py:factory` / `module:factory`, stated preprocessing with a
note wherever dfkd assumes, one-channel networks at 28 and 32 px, class-name files, pickled models, and
`dfkd import-teacher`; the tour's commands with a user class and with a timm teacher at its own resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from click.testing import CliRunner

from dfkd.cli import main
from synth.shards.format import ShardDataset
from synth.teachers.sources import load_teacher

HERE = Path(__file__).resolve()
TINY = ["--config", "tiny_cpu", "--classes", "0-1", "--per-class", "2", "--iterations", "2,2"]


class BasicBlock(nn.Module):
    """A CIFAR ResNet block (3x3, 3x3, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet as paper repositories write it: 3x3 stem, no max-pool, three stages, global pool, fc."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(num_classes: int = 10, width: int = 8) -> CifarResNet:
    """The factory a user names: `tests/test_own_teacher.py:cifar_resnet`."""
    return CifarResNet(num_classes, width)


class LeNet5(nn.Module):
    """LeNet-5 with BN, one input channel; `size` 28 pads the first convolution (MNIST's classic), 32 does not."""

    def __init__(self, num_classes: int = 4, size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2 if size == 28 else 0),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 25, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class NoBatchNorm(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def run(*args) -> "CliResult":
    result = CliRunner().invoke(main, [str(a) for a in args])
    return CliResult(result.exit_code, result.stdout, result.stderr)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self) -> dict:
        return json.loads(self.out.strip().splitlines()[-1])


def warmed(model: nn.Module, channels: int = 3, size: int = 32) -> nn.Module:
    """`model` with non-trivial BN running statistics (a few training-mode passes on seeded noise)."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, channels, size, size) * 0.8 + 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def cifar_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("own") / "cifar_resnet.pth"
    torch.save(warmed(cifar_resnet(num_classes=4)).state_dict(), path)
    return path


def cifar_spec() -> list[str]:
    return ["--teacher", f"{HERE}:cifar_resnet", "--teacher-kwargs", '{"num_classes": 4}']


def test_a_cifar_resnet_class_runs_the_tour(tmp_path, cifar_weights):
    """synthesize -> inspect -> fidelity -> distill -> accuracy with the user's class; the shards record the spec,
    the sha256 of its file and the CIFAR normalisation as given."""
    shards = tmp_path / "shards"
    own = [*cifar_spec(), "--teacher-weights", cifar_weights]
    result = run(
        "synthesize", *own, "--mean", "cifar10", "--std", "cifar10", "--input-size", "32", *TINY, "--out", shards
    )
    assert result.code == 0, result.err
    assert "teacher preprocessing: mean [0.4914, 0.4822, 0.4465]" in result.err and "(as given)" in result.err
    with h5py.File(next(shards.glob("shard-*.h5"))) as f:
        assert np.allclose(f.attrs["mean"], (0.4914, 0.4822, 0.4465)) and np.allclose(f.attrs["std"][2], 0.2616)
        config = json.loads(f.attrs["config"])
    assert config["teacher"] == f"{HERE}:cifar_resnet"
    assert config["teacher_source"]["code_sha256"] == __import__("hashlib").sha256(HERE.read_bytes()).hexdigest()
    assert config["teacher_source"]["kwargs"] == {"num_classes": 4}
    assert config["teacher_preprocessing"]["input_size"] == 32
    assert run("inspect", shards).code == 0
    fidelity = run("evaluate", "fidelity", shards, "--teacher-weights", cifar_weights, "--json")
    assert fidelity.code == 0, fidelity.err
    assert "teacher preprocessing: mean [0.4914" in fidelity.err  # the shards' record, for the recorded spec
    student = tmp_path / "run"
    distilled = run(
        "distill", "--shards", shards, *own, "--student", "dearkd_pico_patch4_32", "--epochs", "1",
        "--batch-size", "4", "--threads", "1", "--device", "cpu", "--out", student,
    )  # fmt: skip
    assert distilled.code == 0, distilled.err
    assert "teacher preprocessing: mean [0.4914" in distilled.err
    folder = tmp_path / "real"
    for label in range(2):
        (folder / str(label)).mkdir(parents=True)
        from PIL import Image

        Image.fromarray(np.full((32, 32, 3), 60 * label, np.uint8)).save(folder / str(label) / "0.png")
    accuracy = run(
        "evaluate", "accuracy", "--data", folder, "--student", student / "student.pth", *own,
        "--mean", "cifar10", "--std", "cifar10", "--input-size", "32", "--json",
    )  # fmt: skip
    assert accuracy.code == 0, accuracy.err
    assert set(accuracy.json()) >= {"student", "teacher"}


def test_a_timm_teacher_at_its_own_resolution_and_normalisation(tmp_path):
    """timm:resnet18 fine-tuned at 64 px with mean 0.5 / std 0.25: stated, recorded; unstated, the run says what it
    assumed."""
    weights = tmp_path / "resnet18.pth"
    torch.save(warmed(timm.create_model("resnet18", num_classes=3), size=64).state_dict(), weights)
    stated = run(
        "synthesize", "--teacher", "timm:resnet18", "--teacher-weights", weights, "--mean", "0.5", "--std", "0.25",
        "--input-size", "64", *TINY, "--resolutions", "32,64", "--out", tmp_path / "s",
    )  # fmt: skip
    assert stated.code == 0, stated.err
    assert "ASSUMED" not in stated.err and "mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25], 64 px" in stated.err
    assert ShardDataset(tmp_path / "s").teacher["mean"] == [0.5, 0.5, 0.5]
    timm_teacher = ["--teacher", "timm:resnet18", "--teacher-weights", weights]
    fidelity = run("evaluate", "fidelity", tmp_path / "s", *timm_teacher, "--mean", "0.5", "--std", "0.25", "--json")
    assert fidelity.code == 0 and "ASSUMED" not in fidelity.err, fidelity.err
    distilled = run(
        "distill", "--shards", tmp_path / "s", *timm_teacher, "--student", "dearkd_pico_patch4_32", "--epochs", "1",
        "--batch-size", "4", "--threads", "1", "--device", "cpu", "--out", tmp_path / "run", "--json",
    )  # fmt: skip
    assert distilled.code == 0 and "mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25], 64 px" in distilled.err
    assert "from the shards' record" in distilled.err and "ASSUMED" not in distilled.err
    exported = run("export", tmp_path / "s", "--to", "imagefolder", tmp_path / "png", "--json")
    assert exported.code == 0 and len(list((tmp_path / "png").rglob("*.png"))) == 4, exported.err
    assumed = load_teacher("timm:resnet18", str(weights))
    assert len(assumed.notes) == 1 and "ASSUMED" in assumed.notes[0] and "--mean/--std/--input-size" in assumed.notes[0]


def test_no_silent_preprocessing_on_any_path(tmp_path, monkeypatch, random_teacher, cifar_weights):
    """Every way in says in one line what preprocessing the teacher runs with, and marks what it assumed."""
    import synth.teachers.sources as sources

    hub_file = tmp_path / "hub.pth"
    torch.save(timm.create_model("resnet18").state_dict(), hub_file)
    monkeypatch.setattr(sources, "timm_weights_file", lambda name, cfg: str(hub_file))
    tv_weights = tmp_path / "tv.pth"
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tv_weights)
    timm_weights = tmp_path / "timm.pth"
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), timm_weights)
    cases = {
        "timm hub weights": (load_teacher("timm:resnet18"), "timm's pretrained_cfg", False),
        "timm user weights": (load_teacher("timm:resnet18", str(timm_weights)), "ASSUMED", True),
        "torchvision user weights": (load_teacher("torchvision:resnet18", str(tv_weights)), "ASSUMED", True),
        "teacher file": (load_teacher(random_teacher), "from the teacher file", False),
    }
    from synth.teachers.preprocessing import Preprocessing
    from synth.teachers.sources import TeacherOptions

    own = TeacherOptions(str(cifar_weights), {"num_classes": 4}, Preprocessing("cifar10", "cifar10", 32))
    cases["own class"] = (load_teacher(f"{HERE}:cifar_resnet", options=own), "(as given)", False)
    for name, (teacher, source, assumed) in cases.items():
        assert len(teacher.notes) == 1 and teacher.notes[0].startswith("teacher preprocessing: mean"), name
        assert source in teacher.notes[0] and ("ASSUMED" in teacher.notes[0]) == assumed, name
    with pytest.raises(Exception, match="cannot tell its mean and std and input size: pass --mean"):
        load_teacher(f"{HERE}:cifar_resnet", options=TeacherOptions(str(cifar_weights), {"num_classes": 4}))


@pytest.mark.parametrize("size", [28, 32])
def test_a_one_channel_lenet_at_its_size(tmp_path, size):
    """A 1 x size x size LeNet-5: synthesis optimises one channel; shards hold it as RGB with R = G = B."""
    weights = tmp_path / "lenet.pth"
    torch.save(warmed(LeNet5(4, size), channels=1, size=size).state_dict(), weights)
    spec = f"{HERE}:LeNet5"
    args = ["--teacher", spec, "--teacher-kwargs", json.dumps({"size": size}), "--teacher-weights", weights]
    result = run(
        "synthesize", *args, "--mean", "mnist", "--std", "mnist", "--input-size", size, *TINY,
        "--resolutions", f"{size // 2},{size}", "--out", tmp_path / "s", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = ShardDataset(tmp_path / "s")
    images = np.stack([np.asarray(data[i][0]) for i in range(len(data))])
    assert images.shape[1:] == (3, size, size) and (images[:, 0] == images[:, 1]).all() and images.std() > 0
    assert data.teacher["input_channels"] == 1 and data.teacher["mean"] == [0.1307] * 3
    with h5py.File(next((tmp_path / "s").glob("shard-*.h5"))) as f:
        assert f["images"].shape[1:] == (size, size, 3)


def test_class_names_from_a_file(tmp_path, cifar_weights):
    """--class-names: one per line or a JSON list; a count that does not match the classifier is refused."""
    lines, as_json, wrong = tmp_path / "names.txt", tmp_path / "names.json", tmp_path / "wrong.txt"
    lines.write_text("cat\ndog\n\nbird\nfish\n")
    as_json.write_text(json.dumps(["cat", "dog", "bird", "fish"]))
    wrong.write_text("cat\ndog\n")
    base = [*cifar_spec(), "--teacher-weights", cifar_weights, "--mean", "cifar10", "--std", "cifar10"]
    base += ["--input-size", "32"]
    for i, names in enumerate((lines, as_json)):
        out = tmp_path / f"t{i}.pt"
        result = run("import-teacher", *base, "--class-names", names, "--out", out, "--json")
        assert result.code == 0, result.err
        assert load_teacher(str(out)).class_names == ["cat", "dog", "bird", "fish"]
    refused = run("import-teacher", *base, "--class-names", wrong, "--out", tmp_path / "w.pt")
    assert refused.code == 2 and "lists 2 names but teacher" in refused.err and "has 4 classes" in refused.err


def test_pickled_models_need_the_opt_in_and_state_dicts_an_architecture(tmp_path):
    """A whole pickled model is refused in one complete line; --trust-pickle loads it. A bare state_dict as --teacher
    says to pass the architecture."""
    model = warmed(cifar_resnet(num_classes=4))
    pickled, state = tmp_path / "whole.pt", tmp_path / "state.pt"
    torch.save(model, pickled)
    torch.save(model.state_dict(), state)
    env = {"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin"}
    stated = ["--mean", "cifar10", "--std", "cifar10", "--input-size", "32", *TINY]

    def cli(*args) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "dfkd", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, env={**env}, timeout=300)

    refused = cli("synthesize", "--teacher", pickled, *stated, "--out", tmp_path / "a")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert (
        "pickled model" in refused.stderr
        and "--trust-pickle" in refused.stderr
        and "Weights only" not in refused.stderr
    )
    accepted = cli("synthesize", "--teacher", pickled, "--trust-pickle", *stated, "--out", tmp_path / "b", "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["complete"] is True
    bare = run("synthesize", "--teacher", state, *stated, "--out", tmp_path / "c")
    assert bare.code == 2 and "holds weights but no architecture" in bare.err and "--teacher-weights" in bare.err


def test_import_teacher_round_trip_and_checks(tmp_path, cifar_weights):
    """import-teacher packs the class, weights, preprocessing and names; the file gives the same teacher (weights
    sha256, normalisation, size, names); a network without BN, a size it cannot take and names that do not fit are
    refused before anything is written."""
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    base = [*cifar_spec(), "--teacher-weights", cifar_weights, "--mean", "cifar10", "--std", "cifar10"]
    out = tmp_path / "teacher.pt"
    result = run("import-teacher", *base, "--input-size", "32", "--class-names", names, "--out", out, "--json")
    assert result.code == 0, result.err
    packed = result.json()
    assert packed["arch"] == f"{HERE}:cifar_resnet" and packed["arch_kwargs"] == {"num_classes": 4}
    from synth.teachers.preprocessing import Preprocessing
    from synth.teachers.sources import TeacherOptions

    direct = load_teacher(
        f"{HERE}:cifar_resnet",
        options=TeacherOptions(str(cifar_weights), {"num_classes": 4}, Preprocessing("cifar10", "cifar10", 32)),
    )
    reloaded = load_teacher(str(out))
    assert reloaded.weights_sha256 == direct.weights_sha256 == packed["weights_sha256"]
    assert reloaded.mean == direct.mean and reloaded.input_size == 32 and reloaded.class_names == ["a", "b", "c", "d"]
    assert torch.load(out, weights_only=True)["code_sha256"] == packed["code_sha256"]
    no_bn = run("import-teacher", "--teacher", f"{HERE}:NoBatchNorm", "--mean", "half", "--std", "half",
                "--input-size", "32", "--out", tmp_path / "x.pt")  # fmt: skip
    assert no_bn.code == 2 and "no BatchNorm layers" in no_bn.err
    lenet = run("import-teacher", "--teacher", f"{HERE}:LeNet5", "--mean", "mnist", "--std", "mnist",
                "--input-size", "24", "--out", tmp_path / "y.pt")  # fmt: skip
    assert lenet.code == 2 and "fails on blank 24-px images" in lenet.err and "--input-size" in lenet.err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_user_code_specs_fail_in_one_line(tmp_path):
    """Specs that do not resolve, factories that fail or return no network, bad --teacher-kwargs: exit 2, one line."""
    stated = ["--mean", "half", "--std", "half", "--input-size", "32", *TINY]
    cases = {
        f"{tmp_path}/missing.py:Net": "does not exist",
        f"{HERE}:nothing_here": "has no 'nothing_here'",
        f"{HERE}:HERE": "is not callable",
        "no_such_module_xyz:Net": "cannot import 'no_such_module_xyz'",
    }
    for spec, expected in cases.items():
        result = run("synthesize", "--teacher", spec, *stated, "--out", tmp_path / "o")
        assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1, spec
    wrong_kwargs = run("synthesize", *cifar_spec()[:2], "--teacher-kwargs", '{"depth": 3}', *stated, "--out", tmp_path)
    assert wrong_kwargs.code == 2 and "failed: " in wrong_kwargs.err and "(num_classes" in wrong_kwargs.err
    not_json = run("synthesize", *cifar_spec()[:2], "--teacher-kwargs", "{num_classes: 4}", *stated, "--out", tmp_path)
    assert not_json.code == 2 and "--teacher-kwargs" in not_json.err and "JSON object" in not_json.err
    assert not any(tmp_path.glob("o/shard-*"))
