"""Export shards as an ImageFolder tree of PNGs (OUT/<class id, zero-padded>/<sample id>.png)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from synth.engine import Progress
from synth.errors import UserError
from synth.shards import ShardDataset


def class_folder(label: int, num_classes: int) -> str:
    """Folder name of a class: its id zero-padded to the width of the largest id (num_classes - 1)."""
    return f"{label:0{len(str(num_classes - 1))}d}"


def export_imagefolder(shards: str | Path, out: str | Path, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Write every image as lossless PNG into OUT.tmp, then rename it to OUT (which must be new or empty)."""
    progress = progress or Progress()
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"'{out}' already exists and is not an empty folder; choose a new output folder")
    dataset = ShardDataset(shards, as_pil=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted export
    classes = np.unique(dataset.labels).tolist()
    for c in classes:
        (tmp / class_folder(c, dataset.num_classes)).mkdir(parents=True)
    progress.start(len(dataset))
    for index in range(len(dataset)):
        image, label = dataset[index]
        image.save(tmp / class_folder(label, dataset.num_classes) / f"{dataset.sample_ids[index]:08d}.png")
        progress.advance(1, {})
    progress.close()
    dataset.close()
    os.replace(tmp, out)
    return {"out": str(out), "format": "imagefolder", "images": len(dataset), "classes": len(classes)}
