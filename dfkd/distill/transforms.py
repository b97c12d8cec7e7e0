"""Per-image transforms: PIL image -> uint8 CHW tensor, with DeiT's augmentations (timm) for training."""
from __future__ import annotations

from typing import Sequence

from PIL import Image
from timm.data import auto_augment, create_transform

from dfkd.distill.config import AugmentConfig


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, keeping its 0-bit case (a black image) that Pillow >= 13 refuses with ValueError."""
    return Image.new(img.mode, img.size) if bits_to_keep < 1 else auto_augment.posterize(img, bits_to_keep)


def train_transform(size: int, augment: AugmentConfig, mean: Sequence[float]):
    """PIL image -> augmented uint8 CHW tensor at `size` (random resized crop, flip, RandAugment / colour jitter)."""
    transform = create_transform(size, is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
                                 color_jitter=augment.color_jitter or None, auto_augment=augment.rand_augment or None,
                                 interpolation=augment.interpolation, mean=tuple(mean), normalize=False,
                                 grayscale_prob=augment.grayscale)
    for op in (op for t in transform.transforms for op in getattr(t, "ops", ())):
        if op.name.startswith("Posterize"):  # inc1 keeps 0 bits at magnitude 10, which m9-mstd0.5 reaches
            op.aug_fn = _posterize
    return transform


def eval_transform(size: int, crop_pct: float, interpolation: str):
    """PIL image -> uint8 CHW tensor at `size` (resize, centre crop)."""
    return create_transform(size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            normalize=False)
