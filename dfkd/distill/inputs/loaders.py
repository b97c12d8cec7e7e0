"""Training and validation data: shards or image folders as uint8 tensors, seeded subsets, and the loaders that
batch them (per-epoch seeded order; DistributedSampler shares under DDP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from synth.common.errors import UserError
from synth.shards.format import ShardDataset


def shard_roots(root: str | Sequence[str]) -> list[str]:
    """The shard directories of `--shards`: one, several separated by commas, or a list."""
    return [str(r) for r in root] if isinstance(root, (list, tuple)) else [r for r in str(root).split(",") if r]


def open_shards(root: str | Sequence[str], stored_logits: bool = False) -> ShardDataset:
    """A shard directory, or several separated by commas (one combined set: same teacher, classes and
    resolution), as a dataset of uint8 (3, H, W) images (with the stored teacher logits on request); square only."""
    roots = shard_roots(root)
    if not roots:
        raise UserError(f"--shards '{root}' names no shard directory")
    for directory in roots:
        if not Path(directory).is_dir():
            raise UserError(f"shard directory '{directory}' does not exist")
    dataset = ShardDataset(roots[0] if len(roots) == 1 else roots, return_logits=stored_logits)
    if len(dataset) == 0:
        raise UserError(f"shard directory '{root}' holds no images")
    height, width = dataset[0][0].shape[-2:]
    if height != width:
        raise UserError(f"shards in '{root}' hold {height}x{width} images; distillation needs square images")
    return dataset


def labels_of(dataset: Dataset) -> np.ndarray:
    """Class label of every sample of a ShardDataset, ImageFolder or a Subset of one, without reading images."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray(dataset.labels if isinstance(dataset, ShardDataset) else dataset.targets)


def subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded class-stratified subset: round(fraction * n_c) (at least 1) images of each class c, in index order."""
    if fraction >= 1:
        return dataset
    labels = labels_of(dataset)
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        keep.append(rng.choice(index, max(1, round(fraction * len(index))), replace=False))
    return Subset(dataset, np.sort(np.concatenate(keep)).tolist())


def set_transform(dataset: Dataset, transform) -> None:
    """Set the per-image transform of a dataset or of the dataset under a Subset."""
    (dataset.dataset if isinstance(dataset, Subset) else dataset).transform = transform


def epoch_generator(seed: int, epoch: int, rank: Optional[int] = None) -> torch.Generator:
    """A generator seeded from (seed, epoch), and the rank under DDP: the epoch's order (and worker seeds) do not
    depend on earlier epochs."""
    entropy = [seed, epoch] if rank is None else [seed, epoch, rank]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """The one place where loaders and their samplers are made; `batch_size` is per process.

    Training loaders shuffle with a per-epoch generator and drop the last incomplete batch (Mixup needs even
    batches). Under DDP (world_size > 1) training takes this rank's share of a DistributedSampler permutation
    (seeded by seed + epoch through `set_epoch`, the same on every rank; the tail is dropped so every rank takes
    the same number of steps), and validation takes images rank, rank + world_size, ... (no padding: each image
    is counted once when the ranks' hits are summed).
    """
    if world_size == 1:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            generator=epoch_generator(seed, epoch),
            pin_memory=pin_memory,
        )
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        sampler = range(rank, len(dataset), world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        generator=epoch_generator(seed, epoch, rank),
        pin_memory=pin_memory,
    )
