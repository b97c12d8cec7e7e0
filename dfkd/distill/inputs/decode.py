"""Real image folders as uint8 tensors: decode, resize the shorter side and centre-crop to a square, per image in
the loader; the batched path (dfkd.distill.inputs.augment) then treats them like shard images."""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import CenterCrop, Compose, InterpolationMode, Resize


def decode(path: str) -> torch.Tensor:
    """An image file -> uint8 (3, H, W) RGB tensor."""
    return decode_image(path, mode=ImageReadMode.RGB)


def folder_transform(size: int, interpolation: str, crop_pct: float = 1.0) -> Compose:
    """uint8 (3, H, W) -> uint8 (3, size, size): shorter side resized to size / crop_pct (antialiased), centre crop."""
    return Compose(
        [
            Resize(int(round(size / crop_pct)), interpolation=InterpolationMode(interpolation), antialias=True),
            CenterCrop(size),
        ]
    )
