"""The real labelled datasets dfkd trains teachers on and measures students with: one entry per `--dataset` name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dfkd.data.split import RealSplit
from synth.common.errors import UserError


@dataclass(frozen=True)
class RealDataset:
    """A dataset's name, class names, normalisation, whether its classes survive a mirror flip, its loader (seed of
    the split where the dataset has none, `--data-dir`), its check that the files are there and its download of
    missing files (`--download`)."""

    name: str
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool
    load: Callable[[int, Optional[str]], RealSplit]
    check: Callable[[Optional[str]], object] = lambda data_dir: None  # one error line when the files are missing
    download: Callable[[Optional[str]], object] = lambda data_dir: None  # fetch what is missing (offline: one line)


def _digits(seed: int, data_dir: Optional[str]) -> RealSplit:
    from dfkd.data.digits import load_digits_split

    return load_digits_split(seed=seed)


def _fashion(seed: int, data_dir: Optional[str]) -> RealSplit:
    from dfkd.data.fashion_mnist import load_fashion_mnist

    arrays = load_fashion_mnist(data_dir)
    return RealSplit(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])


def _datasets() -> dict[str, RealDataset]:
    from dfkd.data import fashion_mnist
    from dfkd.data.digits import CLASS_NAMES, DIGITS_MEAN, DIGITS_STD

    return {
        "digits": RealDataset("digits", tuple(CLASS_NAMES), DIGITS_MEAN, DIGITS_STD, False, _digits),
        "fashion-mnist": RealDataset(
            "fashion-mnist",
            tuple(fashion_mnist.CLASS_NAMES),
            fashion_mnist.MEAN,
            fashion_mnist.STD,
            True,
            _fashion,
            fashion_mnist.find_files,
            fashion_mnist.download_files,
        ),
    }


DATASET_NAMES = ("digits", "fashion-mnist")


def real_dataset(name: str) -> RealDataset:
    """The dataset called `name`, or one error line naming the accepted ones."""
    datasets = _datasets()
    if name not in datasets:
        raise UserError(f"unknown dataset '{name}'; accepted: {', '.join(DATASET_NAMES)}")
    return datasets[name]


def seeded_subset(images: np.ndarray, labels: np.ndarray, count: Optional[int], seed: int = 0):
    """A seeded random `count` of the images with their labels (all of them, in order, without a count)."""
    if count is None:
        return images, labels
    keep = np.random.default_rng(seed).permutation(len(labels))[:count]
    return images[keep], labels[keep]


def write_real_images(
    name: str, part: str, out: str | Path, count: Optional[int] = None, seed: int = 0, data_dir: Optional[str] = None
) -> dict:
    """Write dataset `name`'s `part` ('test': held out, 'train'), or a seeded `count` of it, as a class folder at
    `out` (never over an existing one); returns what was written."""
    from dfkd.data.image_folder import write_image_folder

    out = Path(out)
    if out.exists():
        raise UserError(f"--out '{out}' exists; give a new folder (an existing one is never written over)")
    split = real_dataset(name).load(seed, data_dir)
    images, labels = (
        (split.test_images, split.test_labels) if part == "test" else (split.train_images, split.train_labels)
    )
    if count is not None and count > len(labels):
        raise UserError(f"--count {count} is more than the {len(labels)} {part} images of {name}")
    images, labels = seeded_subset(images, labels, count, seed)
    write_image_folder(images, labels, out)
    return {"out": str(out), "dataset": name, "split": part, "images": len(labels), "classes": len(np.unique(labels))}
