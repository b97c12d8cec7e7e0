"""The demo's results page: `results.md` in its folder with the numbers, the teacher's and student's accuracy as
bars, the synthesized grid beside a grid of real held-out images of the same classes, and the student's curves.
Every picture sits in the demo's folder and is linked relatively, so the page shows in any Markdown viewer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from dfkd.evaluate.grid import draw_folder_grid
from dfkd.evaluate.plots import draw_bars
from synth.shards.format import ShardDataset
from synth.shards.pictures import display_cell, png_bytes, write_png

PAGE = "results.md"
BARS = "accuracy.png"
REAL_GRID = "real-grid.png"
PER_CLASS = 8  # as the demo's synthesized grid


def write_results_page(
    result: dict[str, Any],
    table: Sequence[str],
    out: str | Path,
    shards: str | Path,
    real_test: str | Path,
    curves: str | Path,
) -> Path:
    """Write OUT/results.md (and its accuracy bars and real-image grid) from the demo's `result` dict and its
    results `table` (Markdown lines); `result["dataset"]` names the data (default "digits"). Returns its path."""
    out, dataset = Path(out), result.get("dataset", "digits")
    bars = {
        f"teacher on held-out real {dataset}": result["teacher_accuracy"],
        f"student on held-out real {dataset}": result["student_accuracy"],
        "student on its synthesized training images": result["student_synthetic_accuracy"],
        "teacher fidelity on the synthesized images": result["fidelity"],
    }
    write_png(out / BARS, draw_bars(bars, "accuracy (top-1)"))
    write_png(out / REAL_GRID, png_bytes(_real_grid(shards, real_test)))

    def link(path: str | Path) -> str:
        return Path(os.path.relpath(path, out)).as_posix()

    lines = [
        f"# dfkd demo results: {dataset}",
        "",
        f"A teacher trained on real {dataset}; {result['synthesized_images']} images synthesized from the teacher "
        f"alone; a `{result['student']}` student distilled on those images only for {result['epochs']} epochs and "
        f"measured on {result['test_images']} held-out real images.",
        "",
        *table,
        "",
        f"![accuracy bars]({link(out / BARS)})",
        "",
        f"## Synthesized images beside real held-out {dataset}",
        "",
        f"The first {PER_CLASS} images of each class; the synthesized ones were made without any real image.",
        "",
        "| synthesized from the teacher | real, held out |",
        "|---|---|",
        f"| ![synthesized images, one row per class]({link(result['grid'])}) "
        f"| ![real held-out images, one row per class]({link(out / REAL_GRID)}) |",
        "",
        "## The student's training",
        "",
        f"![training loss as weighted terms stacked to the total, learning rate and real-data top-1 per epoch]({link(curves)})",
        "",
    ]
    page = out / PAGE
    page.write_text("\n".join(lines))
    return page


def _real_grid(shards: str | Path, real_test: str | Path) -> Image.Image:
    """Real held-out images of the shards' classes, in the layout and cell size of the synthesized grid
    (synth.shards.pictures.display_cell)."""
    dataset = ShardDataset(shards)
    classes, resolution = np.unique(dataset.labels).tolist(), dataset.resolution
    names, num_classes = dataset.class_names, dataset.num_classes
    dataset.close()
    return draw_folder_grid(real_test, classes, PER_CLASS, display_cell(resolution), num_classes, names)
