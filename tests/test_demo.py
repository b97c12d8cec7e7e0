"""`dfkd train-teacher` and `dfkd demo --fast`: the whole pipeline on real digits."""

import json
import re

import torch
from click.testing import CliRunner
from PIL import Image

from dfkd.cli import main
from dfkd.data.digits import load_digits_split
from dfkd.pipeline.teacher_training import to_normalized
from synth.teachers.sources import load_teacher


def test_train_teacher_checkpoint_round_trip(tmp_path):
    path = tmp_path / "teacher.pt"
    result = CliRunner().invoke(
        main,
        [
            "train-teacher",
            "--dataset",
            "digits",
            "--arch",
            "dfkd_cnn_tiny",
            "--epochs",
            "3",
            "--threads",
            "1",
            "--out",
            str(path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    teacher = load_teacher(str(path))
    assert teacher.num_classes == 10 and teacher.input_size == 32 and teacher.class_names == [str(i) for i in range(10)]
    assert len(teacher.bn_layers) == 6 and teacher.mean == (0.5, 0.5, 0.5)
    split = load_digits_split()
    with torch.no_grad():
        predicted = teacher.model(to_normalized(split.test_images)).argmax(1)
    measured = (predicted == torch.from_numpy(split.test_labels)).float().mean().item()
    assert abs(measured - summary["test_accuracy"]) < 1e-6 and measured > 0.5
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "dfkd-teacher" and payload["extra"]["test_accuracy"] == summary["test_accuracy"]


def test_train_teacher_bad_arch(tmp_path):
    result = CliRunner().invoke(main, ["train-teacher", "--arch", "vit_nope", "--out", str(tmp_path / "t.pt")])
    assert result.exit_code == 2 and "unknown timm architecture 'vit_nope'" in result.stderr
    assert not (tmp_path / "t.pt").exists()


def test_fast_demo_end_to_end(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--fast", "--out", str(tmp_path), "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["teacher_accuracy"] > 0.85 and summary["fidelity"] > 0.8
    # At toy scale the ViT student learns the teacher's synthesized task (chance: 0.10) but not yet real
    # digits; the full demo and bench/quality.py measure real-digit accuracy.
    assert summary["student_synthetic_accuracy"] > 0.5, summary
    assert 0.0 <= summary["student_accuracy"] <= 1.0 and summary["test_images"] == 397
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "student" / "student.pth").is_file()
    assert "plumbing check" in result.stderr  # a chance-level student is expected, and said so
    page = tmp_path / "results.md"
    assert summary["results_page"] == str(page) and f"{summary['student_accuracy']:.4f}" in page.read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page.read_text())
    assert {"accuracy.png", "grid.png", "real-grid.png", "student/curves.png"} <= set(links)
    for link in links:  # every picture the page shows is there
        with Image.open(tmp_path / link) as image:
            image.verify()
    again = CliRunner().invoke(main, ["demo", "--fast", "--out", str(tmp_path), "--threads", "1"])
    assert again.exit_code == 0 and f"{summary['student_accuracy']:.4f}" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == f"results page: {page}"
