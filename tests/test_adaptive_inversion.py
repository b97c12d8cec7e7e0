"""Adaptive DeepInversion: the competition term by hand, a frozen student, and the student in the shard config."""

import json

import numpy as np
import pytest
import timm
import torch

import dfkd.models  # noqa: F401  (registers the DearKD students)
from synth.common.errors import UserError
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.competitor import competition, load_competitor
from synth.inversion.invert import invert_batch
from synth.run.engine import synthesize
from synth.shards.manifest import read_manifest
from synth.teachers.sources import load_teacher

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    """A randomly initialised pico student written as `dfkd distill` writes it (student.pth + student.json)."""
    root = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    model = timm.create_model("dearkd_pico_patch4_32", num_classes=4)
    torch.save(model.state_dict(), root / "student.pth")
    (root / "student.json").write_text(
        json.dumps(
            {"model": "dearkd_pico_patch4_32", "num_classes": 4, "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
        )
    )
    return str(root / "student.pth")


def test_competition_is_one_minus_jensen_shannon_at_temperature_3_by_hand():
    torch.manual_seed(0)
    t, s = torch.randn(5, 4) * 3, torch.randn(5, 4) * 3
    p, q = (np.exp(v.numpy() / 3) / np.exp(v.numpy() / 3).sum(1, keepdims=True) for v in (t, s))
    m = (p + q) / 2
    js = 0.5 * (p * np.log(p / m)).sum(1) + 0.5 * (q * np.log(q / m)).sum(1)
    torch.testing.assert_close(competition(t, s), torch.tensor(1 - js.mean(), dtype=torch.float32))
    torch.testing.assert_close(competition(t, t), torch.tensor(1.0))  # agreement: the largest value
    assert float(competition(torch.tensor([[30.0, 0.0]]), torch.tensor([[0.0, 30.0]]))) < 0.5


def test_competition_moves_only_the_image(random_teacher, student_file):
    teacher = load_teacher(random_teacher)
    competitor = load_competitor(student_file)
    assert not competitor.model.training
    assert not any(p.requires_grad for p in competitor.model.parameters())
    labels = torch.tensor([0, 0, 1, 1])
    schedule = Schedule(resolutions=(16, 32), iterations=(3, 3))
    weights = LossWeights(bn=1.0, ep=0.0, triplet=0.0, adi=5.0)
    before = {k: v.clone() for k, v in competitor.model.state_dict().items()}
    run = invert_batch(teacher, labels, weights, schedule, torch.Generator().manual_seed(0), competitor=competitor)
    plain = invert_batch(teacher, labels, weights, schedule, torch.Generator().manual_seed(0))
    assert "adi" in run.losses and 0 <= run.losses["adi"] <= 1 and "adi" not in plain.losses
    assert not torch.equal(run.images, plain.images)  # the term moved the image
    assert all(p.grad is None for p in competitor.model.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in competitor.model.state_dict().items())


def test_student_and_its_sha256_join_the_shard_config(random_teacher, student_file, tmp_path):
    config = SynthesisConfig(
        teacher=random_teacher,
        classes="0-1",
        per_class=2,
        classes_per_batch=2,
        images_per_class=2,
        threads=1,
        device="cpu",
        student=student_file,
        schedule=Schedule(resolutions=(16,), iterations=(2,)),
        losses=LossWeights(bn=1.0, ep=0.0, triplet=0.0, adi=1.0),
    )
    synthesize(config, tmp_path / "s")
    recorded = read_manifest(tmp_path / "s")["config"]["student"]
    assert recorded["sha256"] == load_competitor(student_file).sha256 and recorded["file"].endswith("student.pth")
    with pytest.raises(UserError, match="competition term needs both"):
        SynthesisConfig(teacher=random_teacher, student=student_file).validate()
    with pytest.raises(UserError, match="competition term needs both"):
        SynthesisConfig(teacher=random_teacher, losses=LossWeights(adi=1.0)).validate()


def test_student_with_another_class_count_is_refused_before_anything_is_written(random_teacher, tmp_path):
    """A 10-class student against the 4-class teacher: one line naming both counts, exit 2, no manifest."""
    from click.testing import CliRunner

    from dfkd.cli import main

    root = tmp_path / "student"
    root.mkdir()
    torch.save(timm.create_model("dearkd_pico_patch4_32", num_classes=10).state_dict(), root / "student.pth")
    meta = {"model": "dearkd_pico_patch4_32", "num_classes": 10, "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    (root / "student.json").write_text(json.dumps(meta))
    args = ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path / "s"), "--classes", "0-1"]
    args += ["--per-class", "2", "--classes-per-batch", "2", "--images-per-class", "2", "--resolutions", "16"]
    args += ["--iterations", "1", "--threads", "1", "--device", "cpu", "--a-adi", "1"]
    result = CliRunner().invoke(main, [*args, "--student", str(root / "student.pth")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "has 10 classes" in result.stderr and "has 4" in result.stderr
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_two_round_adaptive_workflow_through_the_cli(digits_teacher, tmp_path):
    """synthesize -> distill -> synthesize more against that student -> distill on both sets."""
    from click.testing import CliRunner

    from dfkd.cli import main

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args] + ["--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    tiny = [
        "--classes",
        "all",
        "--per-class",
        "2",
        "--classes-per-batch",
        "10",
        "--images-per-class",
        "2",
        "--resolutions",
        "16,32",
        "--iterations",
        "4,4",
        "--a-bn",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    train = [
        "--teacher",
        digits_teacher,
        "--student",
        "dearkd_pico_patch4_32",
        "--epochs",
        "1",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "10",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--distillation",
        "function_matching",
    ]
    run("synthesize", "--teacher", digits_teacher, "--out", tmp_path / "r1", *tiny)
    first = run("distill", "--shards", tmp_path / "r1", "--out", tmp_path / "s1", *train)
    second_set = run(
        "synthesize",
        "--teacher",
        digits_teacher,
        "--out",
        tmp_path / "r2",
        "--seed",
        "1",
        "--student",
        first["student"],
        "--a-adi",
        "1",
        *tiny,
    )
    assert second_set["images"] == 20
    both = run("distill", "--shards", f"{tmp_path / 'r1'},{tmp_path / 'r2'}", "--out", tmp_path / "s2", *train)
    assert both["images"] == 40 and both["distillation"] == "function_matching"
    config = read_manifest(tmp_path / "r2")["config"]
    assert config["losses"]["adi"] == 1.0 and config["student"]["sha256"] == load_competitor(first["student"]).sha256
