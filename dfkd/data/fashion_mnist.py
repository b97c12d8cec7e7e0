"""Fashion-MNIST (Zalando, MIT licence): 60,000 + 10,000 grayscale 28x28 images of 10 clothing classes, read from
the four standard IDX files, as 32x32 RGB uint8 (2 px of black padding, the background colour)."""

from __future__ import annotations

import contextlib
import os
import sys
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
GZ_NAMES = ", ".join(f"{name}.gz" for name in FILES.values())  # as upstream ships them
TORCHVISION_RAW = Path("FashionMNIST", "raw")  # where torchvision's downloader puts the files under its root
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN = (0.2190, 0.2190, 0.2190)  # of the 60,000 training images, padded to 32 px
STD = (0.3318, 0.3318, 0.3318)


def cache_dir() -> Path:
    """Where `--download` puts the files when neither `--data-dir` nor `$DFKD_DATA` names a folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dfkd" / "fashion-mnist"


def candidate_dirs(data_dir: Optional[str]) -> list[tuple[str, Path]]:
    """Where the files are looked for, in order: `--data-dir`, else `$DFKD_DATA` (the folder or its `fashion-mnist/`),
    else the Debian package's folder, else the download cache. An explicit `--data-dir` is the only place looked at.
    Each folder may also hold them in torchvision's layout (`FashionMNIST/raw/`)."""
    if data_dir:
        return [("--data-dir", Path(data_dir))]
    found = []
    if os.environ.get("DFKD_DATA"):
        root = Path(os.environ["DFKD_DATA"])
        found += [("$DFKD_DATA", root / "fashion-mnist"), ("$DFKD_DATA", root)]
    return found + [("dataset-fashion-mnist", DEBIAN_DIR), ("the download cache", cache_dir())]


def find_files(data_dir: Optional[str] = None) -> dict[str, Path]:
    """The four IDX files (each `NAME` or `NAME.gz`) from the first folder that holds all of them."""
    for _, folder in candidate_dirs(data_dir):
        for where in (folder, folder / TORCHVISION_RAW):
            files = {key: _existing(where, name) for key, name in FILES.items()}
            if all(files.values()):
                return files
    looked = ", ".join(f"{label} {folder}" for label, folder in candidate_dirs(data_dir))
    raise UserError(
        f"Fashion-MNIST not found (looked in {looked}): install the Debian package dataset-fashion-mnist, or put "
        f"{GZ_NAMES} in a folder given by --data-dir or $DFKD_DATA, or add --download"
    )


def download_files(data_dir: Optional[str] = None) -> dict[str, Path]:
    """The four files; where none are found, fetched by torchvision's Fashion-MNIST downloader (its mirrors, each
    file MD5-checked) into `--data-dir`, else `$DFKD_DATA/fashion-mnist`, else the cache. Offline: one line, at once."""
    try:
        return find_files(data_dir)
    except UserError:
        pass
    from torchvision.datasets import FashionMNIST

    from synth.teachers.downloads import require_network

    env = os.environ.get("DFKD_DATA")
    root = Path(data_dir) if data_dir else Path(env) / "fashion-mnist" if env else cache_dir()
    mirror = FashionMNIST.mirrors[0]
    require_network(
        mirror, "Fashion-MNIST", f"({GZ_NAMES}) in {root}", "install the Debian package dataset-fashion-mnist"
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its progress; stdout may be --json's
            FashionMNIST(str(root), train=False, download=True)
    except (RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())  # torchvision's message spans lines: one per mirror tried
        raise UserError(f"could not download Fashion-MNIST into {root / TORCHVISION_RAW}: {reason}") from None
    return find_files(data_dir)


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
