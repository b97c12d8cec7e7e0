"""One work unit of the generator engine: a few Adam steps of the generator on the synthesis objective (the pixel
engine's terms, teacher and view augmentation), then the adapted generator's images with the teacher's logits."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from synth.config import SynthesisConfig
from synth.generator.network import ConditionalGenerator
from synth.inversion.competitor import Competitor
from synth.inversion.invert import InversionResult, PixelSpace, competing_student, jitter_pixels, unit_result, view_at
from synth.inversion.step import IterationStep, compiled_inversion_step
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.teacher import EmbeddingTap, Teacher, normalization


def adapt_unit(
    network: ConditionalGenerator,
    teacher: Teacher,
    labels: torch.Tensor,
    config: SynthesisConfig,
    steps: int,
    rng: torch.Generator,
    competitor: Optional[Competitor] = None,
) -> InversionResult:
    """Adapt `network` (in place) to the batch of `labels` in `steps` Adam steps from its current weights; random draws
    (noise, then the views) come from `rng`. On CUDA the generator and the teacher run under bf16 autocast."""
    device, settings = labels.device, config.generator
    cuda = device.type == "cuda"
    space = PixelSpace.of(teacher, device)
    iteration = _iteration(teacher, labels, config, competitor, cuda)
    noise = torch.randn((len(labels), settings.noise_dim), generator=rng).to(device)
    views = _Views(config, space, steps, rng)
    groups: list[dict] = [{"params": list(network.parameters())}]
    if settings.noise_lr:
        noise.requires_grad_(True)
        groups.append({"params": [noise], "lr": settings.noise_lr})
    optimizer = torch.optim.Adam(groups, lr=settings.lr, betas=tuple(settings.betas))
    network.train()
    terms: dict[str, torch.Tensor] = {}
    first = None
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, cuda):
                images = network(noise, labels)
            augmented = views(_teacher_view(images.float(), teacher, space, config), step)
            terms = iteration(augmented.contiguous(memory_format=torch.channels_last) if cuda else augmented)
            terms["total"].backward()
            first = terms["total"].detach().clone() if first is None else first
            optimizer.step()
    finally:
        iteration.bn_loss.remove()
        iteration.tap.remove()
    with torch.no_grad(), _autocast(device, cuda):
        images = network(noise, labels).float()
    final = view_at(_space_coordinates(images, teacher, space), config.schedule.resolutions[-1], config.schedule.lowres)
    return unit_result(teacher, final, space, terms, [(first, terms["total"].detach())])


def _iteration(
    teacher: Teacher, labels: torch.Tensor, config: SynthesisConfig, competitor: Optional[Competitor], cuda: bool
) -> IterationStep:
    """The pixel engine's per-iteration objective (synth.inversion.step) for this batch."""
    weights = config.losses
    return IterationStep(
        model=teacher.model,
        labels=labels,
        bn_loss=BNStatisticsLoss(teacher.bn_layers, weights.bn_first, weights.bn_norm),
        tap=EmbeddingTap(teacher.embedding_module),
        weights=weights,
        autocast_dtype=torch.bfloat16 if cuda else None,
        step=compiled_inversion_step(config.compile),
        compile=config.compile,
        student=competing_student(teacher, competitor, weights, labels.device),
        input_sizes=dict(teacher.stage_inputs),
    )


def _space_coordinates(images: torch.Tensor, teacher: Teacher, space: PixelSpace) -> torch.Tensor:
    """Generator images in [0, 1] as the pixel engine's optimised tensor: normalised (a gray image by the first
    channel's statistics, as synth.inversion.invert.PixelSpace keeps it)."""
    mean, std = normalization(teacher.mean, teacher.std, images.device)
    if space.gray:
        mean, std = mean[:, :1], std[:, :1]
    return (images - mean) / std


def _teacher_view(images: torch.Tensor, teacher: Teacher, space: PixelSpace, config: SynthesisConfig) -> torch.Tensor:
    """What the teacher sees before augmentation: the images at the final resolution, normalised, 3 channels."""
    x = _space_coordinates(images, teacher, space)
    return space.to_teacher(view_at(x, config.schedule.resolutions[-1], config.schedule.lowres))


class _Views:
    """Each step's augmentation, drawn up front from the unit's generator: the pixel engine's circular shift and
    flip (`jitter`), or a random crop of the image padded with black by the same number of pixels, and a flip
    (`crop`, kornia's RandomCrop(padding) + RandomHorizontalFlip as Fast-DFKD uses them)."""

    def __init__(self, config: SynthesisConfig, space: PixelSpace, steps: int, rng: torch.Generator):
        self.pad = jitter_pixels(config.schedule.jitter, config.schedule.resolutions[-1])
        self.crop, self.flip = config.generator.augment == "crop", config.schedule.flip
        low = 0 if self.crop else -self.pad
        self.offsets = torch.randint(low, self.pad + 1, (steps, 2), generator=rng).tolist()
        self.flips = (torch.rand(steps, generator=rng) < 0.5).tolist()
        self.black = space.to_teacher(space.low) if self.crop else None

    def __call__(self, view: torch.Tensor, step: int) -> torch.Tensor:
        dy, dx = self.offsets[step]
        if self.crop and self.pad:
            size, p = view.shape[-1], self.pad
            padded = F.pad(view - self.black, (p, p, p, p)) + self.black
            view = padded[..., dy : dy + size, dx : dx + size]
        elif self.pad:
            view = torch.roll(view, shifts=(dy, dx), dims=(2, 3))
        return view.flip(3) if self.flip and self.flips[step] else view


def _autocast(device: torch.device, cuda: bool):
    """bf16 autocast on CUDA (as the pixel engine), none elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
