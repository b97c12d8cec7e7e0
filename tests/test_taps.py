"""Teacher taps: timm's feature API where the teacher has it, forward hooks otherwise; the same tensors either way."""

from contextlib import nullcontext
from unittest import mock

import pytest
import timm
import torch
import torchvision

from dfkd.distill.taps import TeacherTaps, teacher_stages
from synth.teachers.sources import IMAGENET_MEAN, IMAGENET_STD
from synth.teachers.teacher import teacher_from_model

torch.set_num_threads(1)

TEACHERS = {  # name: (random-init model, uses timm's feature API)
    "timm_resnet18": (lambda: timm.create_model("resnet18", num_classes=10), True),
    "dfkd_cnn_tiny": (lambda: timm.create_model("dfkd_cnn_tiny", num_classes=10), True),
    "torchvision_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), False),
}


def _teacher(name: str):
    torch.manual_seed(0)
    model = TEACHERS[name][0]().eval()
    return teacher_from_model(model, name, IMAGENET_MEAN, IMAGENET_STD, 32, "fc")


def _hooked(model: torch.nn.Module, names: list[str], x: torch.Tensor):
    """The reference: logits and the named modules' outputs from one forward with hooks."""
    outputs = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outputs.update({n: o})) for n in names]
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    return logits, [outputs[n] for n in names]


@pytest.mark.parametrize("name", TEACHERS)
def test_taps_give_the_hooked_tensors_from_one_forward(name):
    teacher = _teacher(name)
    stages = teacher_stages(teacher, 32)
    picked = [stages[-1], stages[0], stages[-1]]  # out of order and repeated, as --pairs may ask
    taps = TeacherTaps(teacher, picked)
    api = TEACHERS[name][1]
    assert taps.uses_feature_api is api
    runs = []
    first_conv = next(m for m in teacher.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda m, i: runs.append(1))
    x = torch.randn(2, 3, 32, 32)
    no_hooks = mock.patch.object(torch.nn.Module, "register_forward_hook", side_effect=AssertionError("hooked"))
    with no_hooks if api else nullcontext():
        logits, features = taps(x)
    assert len(runs) == 1  # one teacher forward for logits and features
    ref_logits, ref_features = _hooked(teacher.model, [s.module for s in picked], x)
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(f, r) for f, r in zip(features, ref_features, strict=True))
    assert [tuple(f.shape[1:]) for f in features] == [(s.channels, *s.hw) for s in picked]


def test_no_stage_tapped_is_the_plain_forward():
    teacher, x = _teacher("timm_resnet18"), torch.randn(2, 3, 32, 32)
    logits, features = TeacherTaps(teacher, [])(x)
    with torch.no_grad():
        assert torch.equal(logits, teacher.model(x)) and features == []


def test_an_api_that_disagrees_with_the_hooks_falls_back_to_them():
    teacher = _teacher("dfkd_cnn_tiny")
    stages = teacher_stages(teacher, 32)
    real = teacher.model.forward_intermediates
    teacher.model.forward_intermediates = lambda x, indices: real(x, indices=[(i + 1) % 3 for i in indices])
    taps = TeacherTaps(teacher, [stages[1]])
    assert not taps.uses_feature_api
    x = torch.randn(2, 3, 32, 32)
    features = taps(x)[1]
    assert torch.equal(features[0], _hooked(teacher.model, [stages[1].module], x)[1][0])
