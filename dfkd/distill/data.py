"""Training and validation data: shards or image folders, seeded subsets, timm transforms, and the batch step
on the device (normalise, random erasing, Mixup/CutMix, soft targets)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, auto_augment, create_transform
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dfkd.distill.config import AugmentConfig
from synth.errors import UserError
from synth.shards import ShardDataset


def shard_roots(root: str | Sequence[str]) -> list[str]:
    """The shard directories of `--shards`: one, several separated by commas, or a list."""
    return [str(r) for r in root] if isinstance(root, (list, tuple)) else [r for r in str(root).split(",") if r]


def open_shards(root: str | Sequence[str], stored_logits: bool = False) -> ShardDataset:
    """A shard directory, or several separated by commas (one combined set: same teacher, classes and
    resolution), as a dataset (with the stored teacher logits on request); square images only."""
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
    dataset.as_pil = True
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


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, keeping its 0-bit case (a black image) that Pillow >= 13 refuses with ValueError."""
    return Image.new(img.mode, img.size) if bits_to_keep < 1 else auto_augment.posterize(img, bits_to_keep)


def train_transform(size: int, augment: AugmentConfig, mean: Sequence[float]):
    """PIL image -> augmented uint8 CHW tensor at `size` (random resized crop, flip, RandAugment / colour jitter)."""
    transform = create_transform(size, is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
                                 color_jitter=augment.color_jitter or None, auto_augment=augment.rand_augment or None,
                                 interpolation=augment.interpolation, mean=tuple(mean), normalize=False,
                                 grayscale_prob=augment.grayscale)
    for op in (op for t in transform.transforms for op in getattr(t, "ops", ())):
        if op.name.startswith("Posterize"):  # inc1 keeps 0 bits at magnitude 10, which m9-mstd0.5 reaches
            op.aug_fn = _posterize
    return transform


def eval_transform(size: int, crop_pct: float, interpolation: str):
    """PIL image -> uint8 CHW tensor at `size` (resize, centre crop)."""
    return create_transform(size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            normalize=False)


def epoch_generator(seed: int, epoch: int, rank: Optional[int] = None) -> torch.Generator:
    """A generator seeded from (seed, epoch), and the rank under DDP: the epoch's order and worker seeds do not
    depend on earlier epochs, and each process's workers draw their own augmentations."""
    entropy = [seed, epoch] if rank is None else [seed, epoch, rank]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_loader(dataset: Dataset, batch_size: int, workers: int, train: bool, seed: int = 0, epoch: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The one place where loaders and their samplers are made; `batch_size` is per process.

    Training loaders shuffle with a per-epoch generator and drop the last incomplete batch (Mixup needs even
    batches). Under DDP (world_size > 1) training takes this rank's share of a DistributedSampler permutation
    (seeded by seed + epoch through `set_epoch`, the same on every rank; the tail is dropped so every rank takes
    the same number of steps), and validation takes images rank, rank + world_size, ... (no padding: each image
    is counted once when the ranks' hits are summed).
    """
    if world_size == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
                          generator=epoch_generator(seed, epoch), pin_memory=pin_memory)
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = range(rank, len(dataset), world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=workers,
                      generator=epoch_generator(seed, epoch, rank), pin_memory=pin_memory)


@dataclass
class Batch:
    """A training batch on the device: student-normalised inputs, soft class targets, mixed stored teacher probs."""

    inputs: torch.Tensor
    target: torch.Tensor
    stored_probs: Optional[torch.Tensor] = None


class BatchPrep:
    """uint8 images -> normalised (student statistics), randomly erased, Mixup/CutMix-ed batch with soft targets.

    Stored teacher logits, when present, become probabilities at `tau`, mixed with the same lambda and pairing.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], num_classes: int, augment: AugmentConfig,
                 device: torch.device, tau: float = 1.0):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.num_classes, self.smoothing, self.device, self.tau = num_classes, augment.smoothing, device, tau
        self.erasing = RandomErasing(augment.reprob, mode="pixel", max_count=1, device=device) \
            if augment.reprob > 0 else None
        self.mixup = Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, prob=augment.mix_prob,
                           switch_prob=augment.switch_prob, mode="batch", label_smoothing=augment.smoothing,
                           num_classes=num_classes) if augment.mixing else None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float, normalised with the student's mean and std, on the device."""
        return (images.to(self.device, non_blocking=True).float() / 255 - self.mean) / self.std

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 stored_logits: Optional[torch.Tensor] = None) -> Batch:
        """One training batch, augmented on the device."""
        x = self.normalize(images)
        labels = labels.to(self.device, non_blocking=True)
        if self.erasing is not None:
            x = self.erasing(x)
        lam = self.mixup._mix_batch(x) if self.mixup is not None else 1.0  # mixes x in place; x[i] with x[-1-i]
        target = mixup_target(labels, self.num_classes, lam, self.smoothing)
        stored = None
        if stored_logits is not None:
            probs = torch.softmax(stored_logits.to(self.device).float() / self.tau, dim=1)
            stored = lam * probs + (1 - lam) * probs.flip(0)
        return Batch(x, target, stored)
