"""Image grids, one row per class with its class name or id as a label: of synthesized shards (drawn by
synth.shards.pictures, which the dataset card's preview uses too) and of real labelled image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from dfkd.data.image_folder import open_image_folder
from synth.shards.pictures import class_label, draw_class_grid, grid_image

__all__ = ["draw_class_grid", "draw_folder_grid"]


def draw_folder_grid(
    folder: str | Path,
    classes: Sequence[int],
    per_class: int,
    size: int,
    num_classes: int,
    names: Optional[Sequence[str]] = None,
) -> Image.Image:
    """The first k images of each class of a real image folder (`<root>/<class id>/<image>`), drawn at size x size
    px in the layout of `draw_class_grid` (give it the same cell size, `display_cell` of the shards' resolution), so
    the two grids compare row by row."""
    dataset = open_image_folder(folder, num_classes)
    targets = np.asarray(dataset.targets)
    rows = []
    for c in classes:
        paths = [dataset.samples[int(i)][0] for i in np.flatnonzero(targets == c)[:per_class]]
        rows.append((class_label(c, names), [_rgb(path) for path in paths]))
    return grid_image(rows, per_class, size)


def _rgb(path: str) -> np.ndarray:
    """An image file as HWC uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
