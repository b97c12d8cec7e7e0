"""Teachers with one input channel (a LeNet-5 on MNIST): dfkd's images are RGB, so such a network is run on the mean of
the three channels, which for dfkd's grayscale images (R = G = B) is the gray image itself."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.preprocessing import per_channel
from synth.teachers.teacher import Teacher, find_classifier_name, teacher_from_model


def input_channels(model: nn.Module) -> int:
    """The channels the network takes: the in_channels of its first convolution (3 when it has none)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


class GrayInput(nn.Module):
    """Runs a one-channel network `net` on (B, 3, H, W) input in its normalised space: the channels' mean."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))


def adapt_channels(model: nn.Module, spec: str) -> tuple[nn.Module, int]:
    """(the model as dfkd runs it, the channels it takes): 3-channel networks as they are, 1-channel ones wrapped
    in GrayInput; other counts refused."""
    channels = input_channels(model)
    if channels == 3:
        return model, 3
    if channels == 1:
        return GrayInput(model), 1
    raise UserError(f"teacher {spec} takes {channels} input channels; dfkd synthesizes images for 1 or 3 channels")


def wrap_model(
    model: nn.Module,
    spec: str,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
    classifier_name: Optional[str] = None,
    class_names: Optional[list[str]] = None,
    head_name: Optional[str] = None,
) -> Teacher:
    """teacher_from_model for a network of 1 or 3 input channels: a 1-channel one runs on the channels' mean (its
    mean/std repeated for the 3 channels dfkd feeds it) and is marked grayscale; one mean/std value is repeated."""
    model, channels = adapt_channels(model, spec)
    mean, std = (per_channel(v, channels, name, spec) for v, name in ((mean, "mean"), (std, "std")))
    if channels == 1:
        mean, std = mean * 3, std * 3
        classifier_name = f"net.{classifier_name}" if classifier_name else None
        head_name = f"net.{head_name}" if head_name else None
    teacher = teacher_from_model(
        model, spec, mean, std, input_size, classifier_name or find_classifier_name(model), class_names, head_name
    )
    teacher.input_channels = channels
    teacher.grayscale = teacher.grayscale or channels == 1
    return teacher
