"""DeiT's per-image augmentations, batched on the training device: uint8 (B, 3, H, W) in, uint8 (B, 3, size, size)
out; random resized crop (kornia draws the boxes), horizontal flip, RandAugment or colour jitter, grayscale. Every
draw comes from torch's global CPU generator, which dfkd.distill.rng.batch_rng seeds per batch."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from kornia.augmentation import ColorJitter
from kornia.augmentation.random_generator import ResizedCropGenerator
from kornia.color import rgb_to_grayscale

from dfkd.distill.config import AugmentConfig
from dfkd.distill.inputs.rand_augment import BatchRandAugment, put, take

RATIO = (3 / 4, 4 / 3)  # the crop's width/height range (timm's and torchvision's default)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0-255 -> uint8, rounded and clipped."""
    return x.clamp(0, 255).round_().to(torch.uint8)


def resize(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> uint8 (B, 3, size, size), antialiased as PIL (CUDA has no uint8 kernel: float there)."""
    if image.shape[-2:] == (size, size):
        return image
    if mode == "nearest":
        return F.interpolate(image, size=(size, size), mode="nearest-exact")
    if image.device.type == "cpu":
        return F.interpolate(image, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return to_uint8(F.interpolate(image.float(), size=(size, size), mode=mode, antialias=True, align_corners=False))


class BatchAugment:
    """Per-sample random resized crop to `size`, flip, RandAugment (or colour jitter when RandAugment is off, as
    timm) and grayscale of a uint8 batch, on the batch's device."""

    def __init__(self, size: int, augment: AugmentConfig, mean: Sequence[float]):
        self.size, self.mode, self.hflip, self.grayscale = size, augment.interpolation, augment.hflip, augment.grayscale
        self.crop = ResizedCropGenerator((size, size), tuple(augment.scale), RATIO)
        self.crop.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)
        self.rand_augment = BatchRandAugment(augment.rand_augment, mean) if augment.rand_augment else None
        jitter = augment.color_jitter
        self.jitter = ColorJitter(jitter, jitter, jitter, 0.0, p=1.0) if jitter > 0 and not self.rand_augment else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The augmented batch (uint8, a new tensor)."""
        x = self.resized_crop(images)
        flip = torch.nonzero(torch.rand(len(x)) < self.hflip).squeeze(1).tolist()
        put(x, flip, take(x, flip).flip(-1))
        if self.rand_augment is not None:
            x = self.rand_augment(x)
        if self.jitter is not None:
            x = to_uint8(self.jitter(x.float() / 255) * 255)
        gray = torch.nonzero(torch.rand(len(x)) < self.grayscale).squeeze(1).tolist()
        put(x, gray, to_uint8(rgb_to_grayscale(take(x, gray).float())).expand(-1, 3, -1, -1))
        return x

    def resized_crop(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's own crop (area fraction in `scale`, width/height in RATIO, as torchvision draws them),
        resized to `size`."""
        corners = self.crop(images.shape)["src"].long().tolist()  # (x0, y0), (x1, y0), (x1, y1), (x0, y1), inclusive
        crops = [
            resize(image[None, :, y0 : y1 + 1, x0 : x1 + 1], self.size, self.mode)
            for image, ((x0, y0), _, (x1, y1), _) in zip(images, corners)
        ]
        return torch.cat(crops)
