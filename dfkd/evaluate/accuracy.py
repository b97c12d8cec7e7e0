"""Top-1 / top-5 accuracy of a student (or the teacher) on a real labelled image folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

import dfkd.models  # noqa: F401  (registers the DearKD students, so that load_student can build them)
from dfkd.data.image_folder import LabelledFolder, open_image_folder
from dfkd.evaluate.config import EvaluateConfig
from synth.common.runtime import Progress, resolve_device
from synth.common.student_file import Classifier, load_student  # noqa: F401  (re-exported by dfkd.evaluate)
from synth.shards.format import ShardDataset
from synth.teachers import small_cnn  # noqa: F401  (registers the small BN CNNs, which may be students too)
from synth.teachers.teacher import Teacher


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
