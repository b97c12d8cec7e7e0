"""ZSKD's Fashion-MNIST networks as a user would write them (not part of dfkd): LeNet-5 (the teacher) and
LeNet-5-Half (the student), on 1 x 32 x 32 inputs.

ZSKD (Nayak et al., ICML 2019) used the classic LeNet-5 (conv 6 -> conv 16 -> fc 120 -> fc 84) and LeNet-5-Half (half
the filters and units). DeepInversion matches BatchNorm statistics, so this LeNet-5 has a BatchNorm layer after each
convolution (the only change; ZSKD itself needs none). The student is plain LeNet-5-Half with the same BN layers."""

from __future__ import annotations

import torch
import torch.nn as nn


class LeNet5(nn.Module):
    """LeNet-5 with BN after each convolution; `width` 0.5 is LeNet-5-Half."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, f1, f2 = round(6 * width), round(16 * width), round(120 * width), round(84 * width)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 25, f1),
            nn.ReLU(inplace=True),
            nn.Linear(f1, f2),
            nn.ReLU(inplace=True),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lenet5_half(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    """LeNet-5-Half: half the filters and units of LeNet-5."""
    return LeNet5(num_classes, in_chans, width=0.5)
