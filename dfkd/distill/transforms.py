"""Per-image transforms: PIL image -> uint8 CHW tensor, with DeiT's augmentations (timm) for training."""

from __future__ import annotations

import random
from typing import Sequence

from PIL import Image
from timm.data import auto_augment, create_transform

from dfkd.distill.config import AugmentConfig


def train_transform(size: int, augment: AugmentConfig, mean: Sequence[float]):
    """PIL image -> augmented uint8 CHW tensor at `size` (random resized crop, flip, RandAugment / colour jitter)."""
    transform = create_transform(
        size,
        is_training=True,
        scale=tuple(augment.scale),
        hflip=augment.hflip,
        color_jitter=augment.color_jitter or None,
        auto_augment=augment.rand_augment or None,
        interpolation=augment.interpolation,
        mean=tuple(mean),
        normalize=False,
        grayscale_prob=augment.grayscale,
    )
    for t in transform.transforms:
        if hasattr(t, "ops"):  # RandAugment, AugMix
            t.ops = [Posterize(op) if op.name.startswith("Posterize") else op for op in t.ops]
    return transform


def eval_transform(size: int, crop_pct: float, interpolation: str):
    """PIL image -> uint8 CHW tensor at `size` (resize, centre crop)."""
    return create_transform(size, is_training=False, crop_pct=crop_pct, interpolation=interpolation, normalize=False)


class Posterize:
    """A posterize op of RandAugment that keeps the 0-bit level: a black image, as Pillow < 13 gave; Pillow 13
    refuses 0 bits, which inc1 keeps at magnitude 10 (m9-mstd0.5 reaches it). It replaces timm's AugmentOp of the
    same name and draws exactly as that does (the same python `random` calls), so the augmentations stay the same.
    """

    def __init__(self, op: auto_augment.AugmentOp):
        self.name, self.prob, self.magnitude, self.hparams = op.name, op.prob, op.magnitude, op.hparams
        self.magnitude_std = op.hparams.get("magnitude_std", 0)
        self.magnitude_max = op.hparams.get("magnitude_max", None)

    def __call__(self, img: Image.Image) -> Image.Image:
        """Posterize `img` with probability `prob`, at a magnitude drawn around `magnitude`."""
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        magnitude = self.magnitude
        if self.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        magnitude = max(0.0, min(magnitude, self.magnitude_max or 10.0))  # timm's magnitude scale ends at 10
        (bits,) = auto_augment.LEVEL_TO_ARG[self.name](magnitude, self.hparams)
        return Image.new(img.mode, img.size) if bits < 1 else auto_augment.posterize(img, bits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"
