"""schedule.lowres: images optimised at 1/lowres of the stage resolution and shown to the teacher upsampled."""

import pytest
import timm
import torch
import torch.nn.functional as F

import synth  # noqa: F401  (registers dfkd_cnn_tiny)
from synth.common.errors import UserError
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.invert import invert_batch
from synth.run.identity import identity
from synth.teachers.teacher import find_classifier_name, teacher_from_model

torch.set_num_threads(1)


def _teacher():
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4).eval()
    return teacher_from_model(model, "timm:dfkd_cnn_tiny", (0.5,) * 3, (0.5,) * 3, 32, find_classifier_name(model))


def _invert(lowres: int) -> torch.Tensor:
    schedule = Schedule(resolutions=(16, 32), iterations=(3, 3), jitter=0.0, flip=False, lowres=lowres)
    result = invert_batch(
        _teacher(),
        torch.tensor([0, 0, 1, 1]),
        LossWeights(ep=0.0, triplet=0.0),
        schedule,
        torch.Generator().manual_seed(0),
    )
    return result.images.permute(0, 3, 1, 2).float() / 255


def test_lowres_images_are_upsampled_low_resolution_images():
    images = _invert(4)
    assert images.shape[-1] == 32
    low = F.interpolate(images, size=(8, 8), mode="area")
    again = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    detail = (images - again).abs().mean()  # what an 8-px image cannot hold
    assert (
        detail
        < 0.5
        * (
            _invert(1)
            - F.interpolate(
                F.interpolate(_invert(1), size=(8, 8), mode="area"), size=(32, 32), mode="bilinear", align_corners=False
            )
        )
        .abs()
        .mean()
    )


def test_lowres_joins_the_config_identity_only_when_set():
    teacher = _teacher()
    plain = identity(SynthesisConfig(teacher="t.pt", threads=1), teacher, [0, 1])
    banded = identity(SynthesisConfig(teacher="t.pt", threads=1, schedule=Schedule(lowres=4)), teacher, [0, 1])
    assert "lowres" not in plain["schedule"]  # sets made before the setting existed still resume
    assert banded["schedule"]["lowres"] == 4


def test_lowres_that_leaves_no_pixels_is_refused():
    with pytest.raises(UserError, match="lowres"):
        Schedule(resolutions=(16, 32), lowres=16).validate()
