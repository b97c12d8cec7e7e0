"""Aligners end in ReLU only where the tapped teacher stage cannot output negative values."""

import timm
import torch

from dfkd.distill.taps import teacher_stages
from dfkd.models import Aligner
from synth.teachers.sources import IMAGENET_MEAN, IMAGENET_STD
from synth.teachers.teacher import teacher_from_model


def _teacher(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    return teacher_from_model(
        model, f"timm:{name}", IMAGENET_MEAN, IMAGENET_STD, 64, model.pretrained_cfg["classifier"]
    )


def test_linear_bottleneck_stages_get_an_aligner_that_can_go_negative():
    stages = teacher_stages(_teacher("mobilenetv2_050"), 64)
    assert any(not s.nonnegative for s in stages[1:])  # blocks end in a 1x1 conv + BN, no activation
    stage = next(s for s in stages if not s.nonnegative)
    aligner = Aligner(32, stage.channels, stage.hw, stage.nonnegative)
    target = torch.randn(2, stage.channels, *stage.hw)
    optimizer = torch.optim.Adam(aligner.parameters(), lr=0.05)
    tokens = torch.randn(2, 16, 32)
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(aligner(tokens, (4, 4)), target)
        loss.backward()
        optimizer.step()
    out = aligner(tokens, (4, 4))
    assert (out < 0).any()
    relu = Aligner(32, stage.channels, stage.hw)
    assert (relu(tokens, (4, 4)) >= 0).all()  # the old default could never match target < 0


def test_post_relu_stages_keep_the_relu():
    stages = teacher_stages(_teacher("resnet10t"), 64)
    assert stages and all(s.nonnegative for s in stages)
