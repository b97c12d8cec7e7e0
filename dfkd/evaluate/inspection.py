"""Inspect a shard directory (counts per class, resolution, teacher, config, format version, verify result) or a
distillation run folder (its epochs and results; curves.png redrawn from metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dfkd.evaluate.grid import draw_class_grid
from dfkd.evaluate.plots import METRICS, read_metrics, write_curves
from synth.common.errors import UserError
from synth.run.units import parse_classes
from synth.shards.card import CARD
from synth.shards.format import ShardDataset, list_shards
from synth.shards.manifest import read_manifest
from synth.shards.verify import verify


def inspect_shards(
    shards: str | Path,
    grid: Optional[str | Path] = None,
    per_class_grid: int = 8,
    grid_classes: Optional[Sequence[int] | str] = None,
) -> dict[str, Any]:
    """Describe the shards that verify (and report those that do not); optionally write a class grid PNG.
    `grid_classes` is a list of class ids or a spec like "0-9" (checked against the shards' class count)."""
    report = verify(shards)
    good = [p for p in list_shards(shards) if p.name not in report.problems]
    if not good and report.problems:
        name, problem = next(iter(report.problems.items()))
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise UserError(
            f"no shard in '{shards}' verifies: {name} is damaged: {problem}{more}; rerun the same `dfkd synthesize` "
            "command to regenerate the damaged shards"
        )
    if not good:
        raise UserError(f"no readable shards (shard-XXXXXX.h5) in '{shards}'")
    dataset = ShardDataset(good)
    classes, counts = np.unique(dataset.labels, return_counts=True)
    manifest = read_manifest(shards) or {}
    result = {
        "path": str(shards),
        "format_version": dataset.format_version,
        "resolution": dataset.resolution,
        "num_classes": dataset.num_classes,
        "images": len(dataset),
        "shards": len(good),
        "per_class": dict(zip(classes.tolist(), counts.tolist())),
        "class_names": dataset.class_names,
        "mean": dataset.mean,
        "std": dataset.std,
        "teacher": dataset.teacher,
        "config": dataset.config,
        "complete": manifest.get("complete"),
        "verify": report.as_dict(),
        "card": str(Path(shards) / CARD) if (Path(shards) / CARD).is_file() else None,
    }
    if isinstance(grid_classes, str):
        grid_classes = parse_classes(grid_classes, dataset.num_classes)
    if grid:
        image = draw_class_grid(good, per_class_grid, grid_classes)
        image.save(grid)
        result["grid"] = {"path": str(grid), "width": image.width, "height": image.height}
    return result


def is_run_dir(path: str | Path) -> bool:
    """True for a distillation run folder: metrics.jsonl and no shards."""
    return (Path(path) / METRICS).is_file() and not list_shards(path)


def inspect_run(run_dir: str | Path, message: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Describe a distillation run from its metrics.jsonl and redraw its curves.png."""
    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"'{Path(run_dir) / METRICS}' records no epoch yet")
    validated = [r for r in records if r.get("val_top1") is not None]
    return {
        "path": str(run_dir),
        "epochs": records[-1]["epoch"],
        "stage2_from": next((r["epoch"] for r in records if r.get("stage") == 2), None),
        "final_loss": records[-1].get("loss"),
        "val_top1": validated[-1]["val_top1"] if validated else None,
        "student": str(Path(run_dir) / "student.pth") if (Path(run_dir) / "student.pth").is_file() else None,
        "curves": str(write_curves(run_dir, message)),
    }
