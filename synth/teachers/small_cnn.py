"""Small BatchNorm CNNs for small images (digits, tests), registered with timm as `dfkd_cnn_*`."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallBNCNN(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU layers, each stage but the last followed by 2x2 max pooling."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__()
        self.num_classes = num_classes
        stages, cin = [], in_chans
        for i, width in enumerate(widths):
            layers = [_conv_bn(cin, width), _conv_bn(width, width)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.feature_info = [{"num_chs": w, "reduction": 2**i, "module": f"stages.{i}.1"} for i, w in enumerate(widths)]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)

    def get_classifier(self) -> nn.Module:
        """The final Linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier for `num_classes` classes."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling."""
        return self.stages(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Sequence[int]] = None, intermediates_only: bool = False
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the outputs of the `feature_info` stages that `indices` picks (all when None;
        negative from the end), each before its stage's pooling, in forward order; and unless `intermediates_only`
        the final feature map first."""
        take = range(len(self.stages)) if indices is None else {i % len(self.stages) for i in indices}
        intermediates = []
        for i, stage in enumerate(self.stages):
            x = stage[1](stage[0](x))
            if i in take:
                intermediates.append(x)
            x = stage[2:](x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, then classify (or return the pooled embedding)."""
        x = self.drop(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stages.0.0.0",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"dfkd_cnn_digits": _cfg(), "dfkd_cnn_tiny": _cfg()})


def _create(variant: str, pretrained: bool, **kwargs) -> SmallBNCNN:
    return build_model_with_cfg(SmallBNCNN, variant, pretrained, feature_cfg={"flatten_sequential": True}, **kwargs)


@register_model
def dfkd_cnn_digits(pretrained: bool = False, **kwargs) -> SmallBNCNN:
    """Six conv-BN-ReLU layers (16, 32, 64 channels) for 32-px digits: about 99% held out, fast to invert."""
    return _create("dfkd_cnn_digits", pretrained, **{"widths": (16, 32, 64), **kwargs})


@register_model
def dfkd_cnn_tiny(pretrained: bool = False, **kwargs) -> SmallBNCNN:
    """Six conv-BN-ReLU layers (8, 16, 16 channels) for fast tests."""
    return _create("dfkd_cnn_tiny", pretrained, **{"widths": (8, 16, 16), **kwargs})
