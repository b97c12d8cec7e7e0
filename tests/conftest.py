"""Shared fixtures: tiny teachers trained or initialised in seconds; one torch thread (the CI box has 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

import synth.teachers.small_cnn  # noqa: F401  (registers the small BN CNNs with timm)
from synth.teachers.checkpoint import save_teacher_file

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> str:
    """A dfkd_cnn_tiny teacher trained on the real digits (about 97% held-out accuracy, ~10 s)."""
    from dfkd.pipeline.teacher_training import TeacherTrainingConfig, train_teacher

    path = tmp_path_factory.mktemp("teacher") / "digits-tiny.pt"
    train_teacher(TeacherTrainingConfig(arch="dfkd_cnn_tiny", epochs=10, threads=1), path)
    return str(path)


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory) -> str:
    """A randomly initialised dfkd_cnn_tiny teacher file with non-trivial BN running statistics (4 classes)."""
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 32, 32) * 0.7 + 0.1)
    path = tmp_path_factory.mktemp("teacher") / "random-tiny.pt"
    save_teacher_file(
        path,
        "timm:dfkd_cnn_tiny",
        {"num_classes": 4},
        model,
        (0.5,) * 3,
        (0.5,) * 3,
        32,
        ["zero", "one", "two", "three"],
    )
    return str(path)


@pytest.fixture(scope="session")
def backbone(tmp_path_factory) -> Path:
    """A torchvision AlexNet state_dict file with random weights (what torchvision caches, minus the training), for
    LPIPS diversity."""
    from dfkd.evaluate.lpips_diversity import ALEXNET_FILE

    torch.manual_seed(1234)  # not lpips' own random AlexNet (seed 0 in every test)
    path = tmp_path_factory.mktemp("lpips") / ALEXNET_FILE
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path
