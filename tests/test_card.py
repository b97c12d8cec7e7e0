"""The dataset card's "What it is" says what happened: the pixels (RGB or grayscale), the stages and only the loss
terms that were on, from the recorded config."""

from pathlib import Path

import timm
import torch

import synth  # noqa: F401  (registers dfkd_cnn_tiny)
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.card import CARD, describe_method, describe_pixels, render
from synth.teachers.checkpoint import save_teacher_file

PAPER = {"ce": 1.0, "bn": 10.0, "tv": 1e-4, "l2": 1e-5, "ep": 50.0, "triplet": 0.5, "adi": 0.0, "ep_margin": 0.5}
DIGITS = {**PAPER, "ep": 0.0}
SCHEDULE = {"resolutions": [16, 32], "iterations": [200, 200], "lowres": 1}


def _what_it_is(text: str) -> str:
    """The card's "What it is" paragraph."""
    return text.split("## What it is\n\n")[1].split("\n\n")[0]


def test_only_the_losses_that_were_on_are_named():
    paper = describe_method({"losses": PAPER, "schedule": SCHEDULE})
    assert "DF-DearKD's intra-divergence and triplet losses" in paper
    assert "multi-resolution DeepInversion (200 iterations at 16 px, then 200 iterations at 32 px)" in paper
    digits = describe_method({"losses": DIGITS, "schedule": {**SCHEDULE, "lowres": 4}})
    assert "intra-divergence" not in digits and "DF-DearKD's triplet loss" in digits
    assert "1/4 of the resolution" in digits
    plain = describe_method({"losses": {**PAPER, "ep": 0.0, "triplet": 0.0, "tv": 0.0}, "schedule": SCHEDULE})
    assert "DF-DearKD" not in plain and "total-variation" not in plain and "the L2 prior" in plain
    single = describe_method({"losses": PAPER, "schedule": {"resolutions": [32], "iterations": [50]}})
    assert single.startswith("DeepInversion (50 iterations at 32 px)") and "multi-resolution" not in single


def test_the_competition_is_named_only_with_a_student():
    adi = {**PAPER, "adi": 1.0}
    student = {"file": "/runs/x/student.pth", "sha256": "abc"}
    assert "competition with the student `/runs/x/student.pth`" in describe_method({"losses": adi, "student": student})
    assert "competition" not in describe_method({"losses": adi})
    assert "competition" not in describe_method({"losses": PAPER, "student": student})


def test_pixels_say_grayscale_for_grayscale_and_one_channel_teachers():
    assert describe_pixels({}, {}) == "RGB images"
    for config, teacher in (({"teacher_grayscale": True}, {}), ({}, {"grayscale": True})):
        text = describe_pixels(config, teacher)
        assert text.startswith("grayscale") and "3 equal RGB channels" in text
    one = describe_pixels({"teacher_grayscale": True}, {"grayscale": True, "input_channels": 1})
    assert one.startswith("grayscale") and "one channel" in one


def test_a_hand_made_manifest_without_config_still_renders(tmp_path: Path):
    text = _what_it_is(render(tmp_path, {"teacher": {"spec": "x"}, "config": {}}))
    assert "RGB images" in text and "DeepInversion" in text and "intra-divergence" not in text


def test_a_grayscale_digits_like_set_says_grayscale_and_names_no_intra_divergence(tmp_path: Path):
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4).eval()
    teacher = tmp_path / "gray.pt"
    save_teacher_file(
        teacher, "timm:dfkd_cnn_tiny", {"num_classes": 4}, model, (0.5,) * 3, (0.5,) * 3, 32, grayscale=True
    )
    config = SynthesisConfig(
        teacher=str(teacher),
        classes="0-1",
        per_class=2,
        classes_per_batch=2,
        images_per_class=2,
        threads=1,
        device="cpu",
        schedule=Schedule(resolutions=(16, 32), iterations=(2, 2)),
        losses=LossWeights(bn=1.0, ep=0.0, triplet=0.5),
    )
    synthesize(config, tmp_path / "set")
    card = (tmp_path / "set" / CARD).read_text()
    what = _what_it_is(card)
    assert "32x32 grayscale images (stored as 3 equal RGB channels, R = G = B)" in what and "RGB images" not in what
    assert "intra-divergence" not in card and "DF-DearKD's triplet loss" in what
    assert "2 iterations at 16 px, then 2 iterations at 32 px" in what
