"""Aligner: maps student patch tokens onto a CNN teacher's feature map shape (docs/method.md, "Aligners")."""

from typing import Optional, Tuple, Union

import torch
from timm.layers import LayerNorm2d, to_2tuple
from torch import nn
from torch.nn import functional as F

__all__ = ["Aligner", "patch_tokens"]


def patch_tokens(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Drop the leading class/distillation tokens of (B, N, D) tokens."""
    return x[:, num_prefix_tokens:]


class Aligner(nn.Module):
    """Tokens -> (B, D, h, w) -> depth-wise 3x3 -> 1x1 to c -> LayerNorm2d -> ReLU -> bilinear to teacher (h, w).

    `nonnegative=False` replaces the final ReLU with the identity: a teacher stage that ends without an activation
    (the linear bottleneck of MobileNetV2 / EfficientNet blocks) outputs negative values that a ReLU could never
    match. The trainer sets it from what the tapped stage outputs (`dfkd.distill.taps.Stage.nonnegative`)."""

    def __init__(
        self,
        student_dim: int,
        teacher_channels: int,
        teacher_hw: Optional[Union[int, Tuple[int, int]]] = None,
        nonnegative: bool = True,
    ) -> None:
        super().__init__()
        self.teacher_hw = to_2tuple(teacher_hw) if teacher_hw is not None else None
        self.dw = nn.Conv2d(student_dim, student_dim, 3, padding=1, groups=student_dim)
        self.pw = nn.Conv2d(student_dim, teacher_channels, 1)
        self.norm = LayerNorm2d(teacher_channels)
        self.act = nn.ReLU() if nonnegative else nn.Identity()

    def forward(self, tokens: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Patch tokens (B, L, D) on grid (h, w), or a (B, D, h, w) map, -> (B, c, H_T, W_T)."""
        if tokens.ndim == 3:
            B, L, D = tokens.shape
            tokens = tokens.transpose(1, 2).reshape(B, D, *grid_size)
        x = self.act(self.norm(self.pw(self.dw(tokens))))
        if self.teacher_hw is not None and tuple(x.shape[-2:]) != self.teacher_hw:
            x = F.interpolate(x, size=self.teacher_hw, mode="bilinear", align_corners=False)
        return x
