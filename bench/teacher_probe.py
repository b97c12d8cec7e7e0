"""What a teacher's synthesis priors say about its real data: does the data itself satisfy them?

    python bench/teacher_probe.py TEACHER.pt [TEACHER.pt ...] [--threads 1] [--dataset digits|fashion-mnist]
        [--limit 5000]

(`--limit`: a seeded subset of the training images, for large datasets.)

For each teacher file (from `dfkd train-teacher`), on the real training digits, no optimisation:
- the normalized BN term on 40 digits, on all of them, and on 40 digits with the BN layers normalising with the
  batch's own statistics (as when the running statistics were accumulated): a teacher whose running statistics
  do not describe its eval-mode activations shows a large gap between the first two and the third;
- in batches laid out as synthesis lays them out (10 classes x 4 images), the mean distance of each digit to its
  nearest same-class digit in the teacher's normalised embedding, and the intra-divergence and triplet terms
  those real batches would have (margins 0.5): a margin the real data barely meet is one the optimiser meets off
  the data.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfkd.data.real import DATASET_NAMES, real_dataset
from synth.inversion.terms import BNStatisticsLoss, intra_divergence, triplet
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import EmbeddingTap, Teacher

BATCHES = 20  # synthesis-shaped batches of real digits per teacher


@contextlib.contextmanager
def batch_statistics(teacher: Teacher):
    """The teacher's BN layers normalise with each batch's statistics, leaving their running ones untouched."""
    saved = [(layer.training, layer.track_running_stats) for layer in teacher.bn_layers]
    for layer in teacher.bn_layers:
        layer.training, layer.track_running_stats = True, False
    try:
        yield
    finally:
        for layer, (training, track) in zip(teacher.bn_layers, saved):
            layer.training, layer.track_running_stats = training, track


def bn_terms(teacher: Teacher, images: torch.Tensor) -> dict[str, float]:
    """The normalized BN term (first-layer multiplier 1) on 40 images, on all, and on 40 with batch statistics."""
    loss = BNStatisticsLoss(teacher.bn_layers, first_multiplier=1.0, norm="normalized")
    first = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:40]]
    terms = {}
    try:
        with torch.inference_mode():
            for name, batch, context in (
                ("bn_40", first, contextlib.nullcontext()),
                ("bn_all", images, contextlib.nullcontext()),
                ("bn_40_batch_stats", first, batch_statistics(teacher)),
            ):
                with context:
                    teacher.model(batch)
                terms[name] = float(loss.loss())
    finally:
        loss.remove()
    return terms


def embedding_terms(teacher: Teacher, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Nearest same-class distance and the intra-divergence / triplet terms of real 10 x 4 batches (means)."""
    tap = EmbeddingTap(teacher.embedding_module)
    try:
        with torch.inference_mode():
            teacher.model(images)
            embeddings = tap.value.float().clone()
    finally:
        tap.remove()
    rng = np.random.default_rng(0)
    nearest, ep, tri = [], [], []
    for _ in range(BATCHES):
        index = np.concatenate([rng.choice(np.flatnonzero(labels == c), 4, replace=False) for c in range(10)])
        batch, batch_labels = embeddings[index], torch.from_numpy(labels[index])
        distances = torch.cdist(F.normalize(batch, dim=1), F.normalize(batch, dim=1))
        same = (batch_labels[:, None] == batch_labels[None, :]) & ~torch.eye(len(index), dtype=torch.bool)
        nearest.append(float(distances.masked_fill(~same, float("inf")).min(dim=1).values.mean()))
        ep.append(float(intra_divergence(batch, batch_labels, 0.5)))
        tri.append(float(triplet(batch, batch_labels, 0.5)))
    return {"nearest_same_class": np.mean(nearest), "ep_term": np.mean(ep), "triplet_term": np.mean(tri)}


def main() -> None:
    """Probe every teacher file given and print one table row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teachers", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = real_dataset(args.dataset).load(0, args.data_dir)
    keep = np.arange(len(split.train_labels))
    if len(keep) > args.limit:  # the digits (1,400) are used whole, in order, as before
        keep = np.random.default_rng(0).permutation(len(keep))[: args.limit]
    train_images, train_labels = split.train_images[keep], split.train_labels[keep]
    print("| teacher | BN, 40 images | BN, all | BN, 40, batch statistics | nearest same class | L_ep | L_triplet |")
    print("|---|---|---|---|---|---|---|")
    for path in args.teachers:
        teacher = load_teacher(str(path))
        images = teacher.normalize(torch.from_numpy(train_images).permute(0, 3, 1, 2).float() / 255)
        row = {**bn_terms(teacher, images), **embedding_terms(teacher, images, train_labels)}
        print(f"| {path.stem} | " + " | ".join(f"{value:.3f}" for value in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
