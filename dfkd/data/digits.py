"""scikit-learn's bundled handwritten digits as 32x32 RGB uint8 images with a fixed seeded train/test split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dfkd.data.split import RealSplit
from synth.common.errors import UserError

TEST_SIZE = 397
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)
CLASS_NAMES = [str(i) for i in range(10)]


def load_digits_split(size: int = 32, seed: int = 0) -> RealSplit:
    """The 1797 digits, upsampled (bilinear) from 8x8 to `size`, stratified split with 397 held out."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UserError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (images.repeat(1, 3, 1, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    return RealSplit(train_x, train_y, test_x, test_y)
