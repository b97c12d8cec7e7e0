"""A teacher file that declares grayscale input: synthesis optimises one channel and writes gray images."""

import numpy as np
import timm
import torch

import synth  # noqa: F401  (registers dfkd_cnn_tiny)
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.format import ShardDataset
from synth.shards.manifest import read_manifest
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.sources import load_teacher

torch.set_num_threads(1)


def test_grayscale_teacher_gives_gray_images_and_joins_the_config(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4).eval()
    save_teacher_file(
        tmp_path / "gray.pt",
        "timm:dfkd_cnn_tiny",
        {"num_classes": 4},
        model,
        (0.4, 0.5, 0.6),
        (0.2, 0.25, 0.3),
        32,
        grayscale=True,
    )
    save_teacher_file(
        tmp_path / "rgb.pt", "timm:dfkd_cnn_tiny", {"num_classes": 4}, model, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 32
    )
    assert load_teacher(str(tmp_path / "gray.pt")).grayscale and not load_teacher(str(tmp_path / "rgb.pt")).grayscale
    runs = {}
    for name in ("gray", "rgb"):
        config = SynthesisConfig(
            teacher=str(tmp_path / f"{name}.pt"),
            classes="0-1",
            per_class=2,
            classes_per_batch=2,
            images_per_class=2,
            threads=1,
            device="cpu",
            schedule=Schedule(resolutions=(16, 32), iterations=(3, 3)),
            losses=LossWeights(bn=1.0, ep=0.0, triplet=0.0),
        )
        synthesize(config, tmp_path / name)
        runs[name] = np.stack([np.asarray(ShardDataset(tmp_path / name)[i][0]) for i in range(4)])
    gray, rgb = runs["gray"], runs["rgb"]
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all() and gray.std() > 0
    assert not (rgb[:, 0] == rgb[:, 1]).all()
    assert read_manifest(tmp_path / "gray")["config"]["teacher_grayscale"] is True
    assert "teacher_grayscale" not in read_manifest(tmp_path / "rgb")["config"]
