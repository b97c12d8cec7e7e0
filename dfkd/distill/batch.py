"""The training batch step on the device: normalise, random erasing, Mixup/CutMix, soft targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing

from dfkd.distill.config import AugmentConfig


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
