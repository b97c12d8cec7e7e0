"""Image grids of synthesized shards: one row per class, its first k images, the class name or id as a label."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from synth.shards import ShardDataset

PADDING = 2
LABEL_WIDTH = 128


def draw_class_grid(
    shards: str | Path | Sequence[str | Path], per_class: int = 8, classes: Optional[Sequence[int]] = None
) -> Image.Image:
    """Grid of the first k images per class: (128 + k*(R+2) + 2) x (rows*(R+2) + 2) px for R-px images."""
    dataset = ShardDataset(shards)
    classes = np.unique(dataset.labels).tolist() if classes is None else list(classes)
    size = dataset.resolution
    cells = []
    for c in classes:
        members = np.flatnonzero(dataset.labels == c)[:per_class]
        cells += [dataset[int(i)][0] for i in members]
        cells += [torch.zeros(3, size, size, dtype=torch.uint8)] * (per_class - len(members))
    dataset.close()
    grid = make_grid(torch.stack(cells), nrow=per_class, padding=PADDING)
    canvas = Image.new("RGB", (LABEL_WIDTH + grid.shape[2], grid.shape[1]))
    canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (LABEL_WIDTH, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for row, c in enumerate(classes):
        name = dataset.class_names[c] if dataset.class_names else None
        text = f"{c} {name}" if name and name != str(c) else str(c)
        while len(text) > 1 and draw.textlength(text, font=font) > LABEL_WIDTH - 2 * PADDING:
            text = text[:-1]
        top = PADDING + row * (size + PADDING)
        height = draw.textbbox((0, 0), text, font=font)[3]
        draw.text((PADDING, top + max(0, (size - height) // 2)), text, fill="white", font=font)
    return canvas
