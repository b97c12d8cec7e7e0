"""Intra-class diversity of a shard set: the mean pairwise distance of the teacher's L2-normalised embeddings, and how
many images have a near-duplicate of their class (the collapse a generator can fall into)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from synth.shards.format import ShardDataset
from synth.teachers.teacher import EmbeddingTap, Teacher

NEAR_DUPLICATE_RMS = 0.05  # two images of a class closer than this pixel RMS distance (in [0, 1]) are near-duplicates
COMPARED_SIZE = 32  # images are compared at most this many pixels a side (area-averaged), so large sets fit in memory


def measure_embedding_diversity(shards: str | Path, teacher: Teacher, batch_size: int = 256) -> dict[str, Any]:
    """Per class and mean over classes: the mean distance over all pairs of its images' normalised embeddings; and
    over the set, `near_duplicates`: the share of images with another image of their class within
    NEAR_DUPLICATE_RMS (pixel RMS, at most COMPARED_SIZE px a side)."""
    dataset = ShardDataset(shards)
    tap = EmbeddingTap(teacher.embedding_module)
    embeddings, pixels = [], []
    try:
        with torch.inference_mode():
            for images, _ in DataLoader(dataset, batch_size=batch_size):
                x = images.float() / 255
                teacher.model(teacher.normalize(x))
                embeddings.append(F.normalize(tap.value.float(), dim=1))
                small = F.adaptive_avg_pool2d(x, COMPARED_SIZE) if x.shape[-1] > COMPARED_SIZE else x
                pixels.append(small.flatten(1))
    finally:
        tap.remove()
        dataset.close()
    features, flat, labels = torch.cat(embeddings), torch.cat(pixels), torch.from_numpy(dataset.labels)
    per_class, duplicated = {}, 0
    for c in labels.unique().tolist():
        members = labels == c
        if int(members.sum()) < 2:
            continue
        distances = torch.cdist(features[members], features[members])
        per_class[c] = float(distances.sum() / (len(distances) * (len(distances) - 1)))
        rms = torch.cdist(flat[members], flat[members]) / flat.shape[1] ** 0.5
        rms.fill_diagonal_(float("inf"))
        duplicated += int((rms.min(dim=1).values < NEAR_DUPLICATE_RMS).sum())
    return {
        "mean": sum(per_class.values()) / len(per_class) if per_class else None,
        "per_class": per_class,
        "near_duplicates": duplicated / len(labels) if len(labels) else None,
    }
