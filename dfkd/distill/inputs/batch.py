"""The training batch step on the device: per-sample augmentation of the uint8 batch (dfkd.distill.inputs.augment),
normalise, random erasing, Mixup/CutMix, soft targets; every draw from the batch's own seeded stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from kornia.augmentation import RandomErasing
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

from dfkd.distill.config import AugmentConfig
from dfkd.distill.inputs.augment import BatchAugment
from dfkd.distill.rng import batch_rng, batch_seed
from synth.teachers.teacher import normalization


@dataclass
class Batch:
    """A training batch on the device: student-normalised inputs, soft class targets, mixed stored teacher probs."""

    inputs: torch.Tensor
    target: torch.Tensor
    stored_probs: Optional[torch.Tensor] = None


class BatchMix:
    """Mixup or CutMix of a whole batch, image i with image B-1-i, with one lambda (timm's Mixup in "batch" mode,
    drawing the same numpy random numbers in the same order). Unlike timm's Mixup it returns lambda, so that stored
    teacher probabilities can be mixed alike."""

    def __init__(self, mixup: float, cutmix: float, prob: float, switch_prob: float):
        self.mixup, self.cutmix, self.prob, self.switch_prob = mixup, cutmix, prob, switch_prob

    def draw(self) -> tuple[float, bool]:
        """Lambda (1: no mixing this batch) and whether to cut and paste (CutMix) instead of blending (Mixup)."""
        lam, use_cutmix = 1.0, False
        if np.random.rand() < self.prob:
            if self.mixup > 0 and self.cutmix > 0:
                use_cutmix = np.random.rand() < self.switch_prob
                lam = np.random.beta(self.cutmix, self.cutmix) if use_cutmix else np.random.beta(self.mixup, self.mixup)
            elif self.mixup > 0:
                lam = np.random.beta(self.mixup, self.mixup)
            else:
                use_cutmix, lam = True, np.random.beta(self.cutmix, self.cutmix)
            lam = float(lam)
        return lam, use_cutmix

    def __call__(self, x: torch.Tensor) -> float:
        """Mix `x` (B, C, H, W) in place; returns lambda, the share of each image's own pixels (for CutMix the box
        area clipped at the borders decides it)."""
        lam, use_cutmix = self.draw()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
            x[:, :, yl:yh, xl:xh] = x[:, :, yl:yh, xl:xh].flip(0)
        else:
            flipped = x.index_select(0, torch.arange(len(x) - 1, -1, -1, device=x.device)).mul_(1.0 - lam)
            x.mul_(lam).add_(flipped)
        return lam


class BatchPrep:
    """uint8 images -> augmented at the student's `size`, normalised (student statistics), randomly erased,
    Mixup/CutMix-ed batch with soft targets, on the device.

    Each batch draws from its own stream, seeded by (seed, *key) (train_one_epoch: epoch, step, rank), so a rerun
    and a resumed run see the same augmentations. Stored teacher logits, when present, become probabilities at
    `tau`, mixed with the same lambda and pairing.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        augment: AugmentConfig,
        device: torch.device,
        size: int,
        tau: float = 1.0,
        seed: int = 0,
    ):
        mean_t, std_t = normalization(mean, std, device)
        self.scale, self.shift = 1 / (255 * std_t), -mean_t / std_t
        self.num_classes, self.smoothing, self.device, self.tau, self.seed = (
            num_classes,
            augment.smoothing,
            device,
            tau,
            seed,
        )
        self.augment = BatchAugment(size, augment, mean)
        self.erasing = (
            RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), p=augment.reprob) if augment.reprob > 0 else None
        )
        self.mix = (
            BatchMix(augment.mixup, augment.cutmix, augment.mix_prob, augment.switch_prob) if augment.mixing else None
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float, normalised with the student's mean and std, on the device."""
        return images.to(self.device, non_blocking=True).float().mul_(self.scale).add_(self.shift)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        stored_logits: Optional[torch.Tensor] = None,
        key: Sequence[int] = (0,),
    ) -> Batch:
        """One training batch, augmented on the device with the draws of batch `key`."""
        seed = batch_seed(self.seed, *key)
        with batch_rng(seed):
            x = self.normalize(self.augment(images.to(self.device, non_blocking=True)))
            if self.erasing is not None:
                self.erase(x, torch.Generator(self.device).manual_seed(seed))
            lam = self.mix(x) if self.mix is not None else 1.0  # mixes x in place
        labels = labels.to(self.device, non_blocking=True)
        target = mixup_target(labels, self.num_classes, lam, self.smoothing)
        stored = None
        if stored_logits is not None:
            probs = torch.softmax(stored_logits.to(self.device).float() / self.tau, dim=1)
            stored = lam * probs + (1 - lam) * probs.flip(0)
        return Batch(x, target, stored)

    def erase(self, x: torch.Tensor, noise: torch.Generator) -> None:
        """Random erasing in place: kornia draws each image's box (with probability reprob), filled with normal
        noise in normalised units (timm's 'pixel' mode, as DeiT)."""
        params = self.erasing.forward_parameters(x.shape)
        boxes = torch.stack([params[k] for k in ("xs", "ys", "widths", "heights")], 1).long()
        for i in torch.nonzero(params["batch_prob"]).squeeze(1).tolist():
            x0, y0, w, h = boxes[i].tolist()
            x[i, :, y0 : y0 + h, x0 : x0 + w] = torch.randn((x.shape[1], h, w), generator=noise, device=x.device)
