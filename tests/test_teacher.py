"""Teacher loading: specs, weights files, BN discovery, embedding, and one-line refusals."""

import time

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from synth.common.errors import UserError
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import EmbeddingTap, find_bn_layers


def test_teacher_file_round_trip(random_teacher):
    teacher = load_teacher(random_teacher)
    assert teacher.num_classes == 4 and teacher.class_names == ["zero", "one", "two", "three"]
    assert len(teacher.bn_layers) == 6 and not teacher.model.training
    low, high = teacher.pixel_bounds()
    assert torch.allclose(low, torch.full((1, 3, 1, 1), -1.0)) and torch.allclose(high, torch.ones(1, 3, 1, 1))


def test_embedding_tap_captures_classifier_input(random_teacher):
    teacher = load_teacher(random_teacher)
    tap = EmbeddingTap(teacher.classifier)
    x = torch.randn(2, 3, 32, 32)
    logits = teacher.model(x)
    assert torch.allclose(teacher.classifier(tap.value), logits)
    assert torch.allclose(tap.value, teacher.model.forward_head(teacher.model.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", "-wrapped.pth"])
def test_weights_file_sets_class_count(tmp_path, suffix):
    state = timm.create_model("resnet10t", num_classes=7).state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if "wrapped" in suffix else state, path)
    teacher = load_teacher("timm:resnet10t", str(path))
    assert teacher.num_classes == 7
    assert teacher.classifier is teacher.model.get_classifier()
    assert len(find_bn_layers(teacher.model)) > 10


def test_torchvision_teacher_with_weights(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    teacher = load_teacher("torchvision:resnet18", str(path))
    assert teacher.num_classes == 3 and teacher.classifier is teacher.model.fc


def test_timm_bn_act_layers_are_found():
    model = timm.create_model("efficientnet_b0", num_classes=2)
    layers = find_bn_layers(model)
    assert layers and any(type(layer).__name__ == "BatchNormAct2d" for layer in layers)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("timm:not_a_model", "unknown timm model"),
        ("torchvision:not_a_model", "unknown torchvision model"),
        ("timm:vit_tiny_patch16_224", "no BatchNorm layers"),
        ("missing-file.pt", "is not timm:<name>"),
    ],
)
def test_bad_teacher_specs_refused(spec, message):
    with pytest.raises(UserError, match=message):
        load_teacher(spec)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34", num_classes=5).state_dict(), path)
    with pytest.raises(UserError, match="do not fit"):
        load_teacher("timm:resnet18", str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_teacher("timm:resnet18", str(tmp_path / "nope.pth"))


def test_bn_without_running_stats_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(UserError, match="no running statistics"):
        find_bn_layers(model)


def test_offline_download_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    started = time.time()
    with pytest.raises(UserError, match="cannot download timm/resnet18"):
        load_teacher("timm:resnet18.a1_in1k")
    assert time.time() - started < 10
