"""Teacher fidelity: top-1 agreement of the teacher with the target labels on the stored (uint8) images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from dfkd.evaluate.config import EvaluateConfig
from synth.common.errors import UserError
from synth.common.runtime import Progress, resolve_device
from synth.shards.format import ShardDataset
from synth.teachers.teacher import Teacher


def measure_fidelity(
    shards: str | Path, teacher: Teacher, settings: Optional[EvaluateConfig] = None, progress: Optional[Progress] = None
) -> dict[str, Any]:
    """Re-run `teacher` on the shards' images at their stored resolution; agreement per class and overall."""
    progress = progress or Progress()
    dataset = ShardDataset(shards)
    if int(dataset.labels.max()) >= teacher.num_classes:
        raise UserError(
            f"shards in '{shards}' have class {int(dataset.labels.max())}, "
            f"but teacher {teacher.spec} has {teacher.num_classes} classes"
        )
    settings = settings or EvaluateConfig()
    device = resolve_device(settings.device)
    teacher.to(device)
    hits = torch.zeros(teacher.num_classes, dtype=torch.int64)
    counts = torch.bincount(torch.from_numpy(dataset.labels), minlength=teacher.num_classes)
    progress.start(len(dataset))
    with torch.inference_mode():
        for images, labels in DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers):
            predicted = teacher.model(teacher.normalize(images.to(device).float() / 255)).argmax(1).cpu()
            hits += torch.bincount(labels[predicted == labels], minlength=teacher.num_classes)
            progress.advance(len(labels), {})
    progress.close()
    dataset.close()
    present = counts.nonzero().flatten().tolist()
    return {
        "fidelity": hits.sum().item() / len(dataset),
        "per_class": {c: hits[c].item() / counts[c].item() for c in present},
        "counts": {c: counts[c].item() for c in present},
        "images": len(dataset),
        "teacher": teacher.spec,
        "same_teacher_weights": teacher.weights_sha256 == dataset.teacher.get("weights_sha256"),
    }
