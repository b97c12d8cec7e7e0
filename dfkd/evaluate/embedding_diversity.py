"""Intra-class diversity in the teacher's embedding space: mean pairwise distance of L2-normalised embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from synth.shards.format import ShardDataset
from synth.teachers.teacher import EmbeddingTap, Teacher


def measure_embedding_diversity(shards: str | Path, teacher: Teacher, batch_size: int = 256) -> dict[str, Any]:
    """Per class and mean over classes: the mean distance over all pairs of its images' normalised embeddings."""
    dataset = ShardDataset(shards)
    tap = EmbeddingTap(teacher.embedding_module)
    embeddings = []
    try:
        with torch.inference_mode():
            for images, _ in DataLoader(dataset, batch_size=batch_size):
                teacher.model(teacher.normalize(images.float() / 255))
                embeddings.append(F.normalize(tap.value.float(), dim=1))
    finally:
        tap.remove()
        dataset.close()
    features, labels = torch.cat(embeddings), torch.from_numpy(dataset.labels)
    per_class = {}
    for c in labels.unique().tolist():
        members = features[labels == c]
        if len(members) < 2:
            continue
        distances = torch.cdist(members, members)
        per_class[c] = float(distances.sum() / (len(members) * (len(members) - 1)))
    return {"mean": sum(per_class.values()) / len(per_class) if per_class else None, "per_class": per_class}
