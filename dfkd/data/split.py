"""A real dataset's images and labels, split into the training part and the held-out test part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RealSplit:
    """uint8 images (N, 32, 32, 3) and int64 labels for the train and held-out test parts."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
