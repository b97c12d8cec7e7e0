"""Top-1 / top-5 accuracy of a student (or the teacher) on a real labelled image folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from dfkd.data.image_folder import LabelledFolder, open_image_folder
from dfkd.evaluate.config import EvaluateConfig
from synth.errors import UserError, first_line
from synth.runtime import Progress, resolve_device
from synth.shards import ShardDataset
from synth.teacher import Teacher

STUDENT_META_KEYS = ("model", "num_classes", "input_size", "mean", "std")


@dataclass
class Classifier:
    """A model in eval mode with the input size and normalisation it expects."""

    model: torch.nn.Module
    num_classes: int
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]


def load_student(checkpoint: str | Path) -> Classifier:
    """A student state_dict (`student.pth`) built as the timm model its `student.json` names."""
    import timm

    import dfkd.models  # noqa: F401  (registers the DearKD students with timm)
    import synth.small_cnn  # noqa: F401  (and the small BN CNNs)

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"student checkpoint '{path}' does not exist")
    meta_path = next((p for p in (path.with_suffix(".json"), path.parent / "student.json") if p.is_file()), None)
    if meta_path is None:
        raise UserError(
            f"no {path.stem}.json or student.json next to '{path}' "
            f"(written by dfkd distill: {', '.join(STUDENT_META_KEYS)})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or any(key not in meta for key in STUDENT_META_KEYS):
        raise UserError(f"'{meta_path}' is not a student description (needs {', '.join(STUDENT_META_KEYS)})")
    if not timm.is_model(meta["model"]):
        raise UserError(f"'{meta_path}' names unknown model '{meta['model']}'")
    try:
        model = timm.create_model(
            meta["model"],
            num_classes=int(meta["num_classes"]),
            checkpoint_path=str(path),
            **meta.get("model_kwargs", {}),
        )
    except Exception as exc:  # noqa: BLE001 - unreadable or mismatched weights are a user problem
        raise UserError(f"checkpoint '{path}' does not load into {meta['model']}: {first_line(exc)}") from None
    return Classifier(model.eval(), int(meta["num_classes"]), int(meta["input_size"]), meta["mean"], meta["std"])


def teacher_classifier(teacher: Teacher) -> Classifier:
    """The teacher as a Classifier (its own input size and normalisation)."""
    return Classifier(teacher.model, teacher.num_classes, teacher.input_size, teacher.mean, teacher.std)


def image_folder(
    data: str | Path, classifier: Classifier, crop_pct: float = 1.0, class_map: Optional[str] = None
) -> LabelledFolder:
    """The labelled folder (class ids as `dfkd.data.image_folder` maps them): shorter side resized to
    input_size / crop_pct, centre crop, [0, 1], normalised."""
    transform = transforms.Compose(
        [
            transforms.Resize(int(round(classifier.input_size / crop_pct))),
            transforms.CenterCrop(classifier.input_size),
            transforms.ToTensor(),
            transforms.Normalize(classifier.mean, classifier.std),
        ]
    )
    return open_image_folder(data, classifier.num_classes, transform, class_map)


def measure_accuracy(
    classifier: Classifier,
    data: str | Path,
    settings: Optional[EvaluateConfig] = None,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Top-1 and top-5 (top-k, k = min(5, classes)) of `classifier` on the image folder `data` (device, batch size,
    workers and crop from `settings`)."""
    settings = settings or EvaluateConfig()
    dataset = image_folder(data, classifier, settings.crop_pct, settings.class_map)
    return {**_topk(classifier, dataset, settings, progress), "classes": len(dataset.classes)}


def measure_shard_accuracy(
    classifier: Classifier, shards: str | Path, settings: Optional[EvaluateConfig] = None
) -> dict[str, Any]:
    """Top-1 / top-5 of `classifier` against the target labels of synthesized shards (how well it fits them)."""
    normalize = transforms.Normalize(classifier.mean, classifier.std)
    resize = transforms.Resize(classifier.input_size, antialias=True)
    dataset = ShardDataset(shards, transform=lambda image: normalize(resize(image).float() / 255))
    return _topk(classifier, dataset, replace(settings or EvaluateConfig(), workers=0), None)


def _topk(classifier: Classifier, dataset, settings: EvaluateConfig, progress: Optional[Progress]) -> dict[str, Any]:
    progress = progress or Progress()
    device = resolve_device(settings.device)
    model = classifier.model.to(device)
    k = min(5, classifier.num_classes)
    top1 = topk = 0
    progress.start(len(dataset))
    with torch.inference_mode():
        for images, labels in DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers):
            ranked = model(images.to(device)).topk(k, dim=1).indices.cpu()
            top1 += (ranked[:, 0] == labels).sum().item()
            topk += (ranked == labels[:, None]).any(1).sum().item()
            progress.advance(len(labels), {})
    progress.close()
    return {"top1": top1 / len(dataset), "top5": topk / len(dataset), "k": k, "images": len(dataset)}
