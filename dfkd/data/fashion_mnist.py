"""Fashion-MNIST (Zalando, MIT licence): 60,000 + 10,000 grayscale 28x28 images of 10 clothing classes, read from
the four standard IDX files, as 32x32 RGB uint8 (2 px of black padding, the background colour)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from dfkd.data.idx import read_idx
from synth.common.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's package dataset-fashion-mnist
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN = (0.2190, 0.2190, 0.2190)  # of the 60,000 training images, padded to 32 px
STD = (0.3318, 0.3318, 0.3318)


def candidate_dirs(data_dir: Optional[str]) -> list[tuple[str, Path]]:
    """Where the files are looked for, in order: `--data-dir`, else `$DFKD_DATA` (the folder or its `fashion-mnist/`),
    else the Debian package's folder. An explicit `--data-dir` is the only place looked at."""
    if data_dir:
        return [("--data-dir", Path(data_dir))]
    found = []
    if os.environ.get("DFKD_DATA"):
        root = Path(os.environ["DFKD_DATA"])
        found += [("$DFKD_DATA", root / "fashion-mnist"), ("$DFKD_DATA", root)]
    return found + [("dataset-fashion-mnist", DEBIAN_DIR)]


def find_files(data_dir: Optional[str] = None) -> dict[str, Path]:
    """The four IDX files (each `NAME` or `NAME.gz`) from the first folder that holds all of them."""
    for _, folder in candidate_dirs(data_dir):
        files = {key: _existing(folder, name) for key, name in FILES.items()}
        if all(files.values()):
            return files
    looked = ", ".join(f"{label} {folder}" for label, folder in candidate_dirs(data_dir))
    raise UserError(
        f"Fashion-MNIST not found (looked in {looked}): install the Debian package dataset-fashion-mnist, or put "
        f"{', '.join(f'{name}.gz' for name in FILES.values())} in a folder given by --data-dir or $DFKD_DATA"
    )


def _existing(folder: Path, name: str) -> Optional[Path]:
    return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)


def load_fashion_mnist(data_dir: Optional[str] = None, size: int = 32) -> dict[str, np.ndarray]:
    """Train and test images as uint8 (N, size, size, 3), centred on black, and int64 labels."""
    arrays = {key: read_idx(path) for key, path in find_files(data_dir).items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.shape[1] > size:
            raise UserError(
                f"Fashion-MNIST {part} files do not match: images {images.shape}, labels {labels.shape} "
                f"(expected (N, 28, 28) uint8 images and (N,) labels)"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
            raise UserError(f"Fashion-MNIST {part} labels must lie in 0-9, found {labels.min()}-{labels.max()}")
        arrays[f"{part}_images"] = _pad_rgb(images.astype(np.uint8), size)
        arrays[f"{part}_labels"] = labels.astype(np.int64)
    return arrays


def _pad_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) gray -> (N, size, size, 3) RGB, centred on black."""
    top, left = (size - images.shape[1]) // 2, (size - images.shape[2]) // 2
    out = np.zeros((len(images), size, size), np.uint8)
    out[:, top : top + images.shape[1], left : left + images.shape[2]] = images
    return np.repeat(out[..., None], 3, axis=3)
