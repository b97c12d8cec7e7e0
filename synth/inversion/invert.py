"""One batch of multi-resolution DeepInversion with DF-DearKD's intra-divergence and triplet losses (docs/method.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from synth.config import LossWeights, Schedule
from synth.inversion.competitor import Competitor
from synth.inversion.step import IterationStep, compiled_inversion_step
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.teacher import EmbeddingTap, Teacher


@dataclass
class InversionResult:
    """Final images (uint8 NHWC, CPU), teacher logits on them (fp32, CPU), the last iteration's loss terms,
    and each stage's (first, last) total loss."""

    images: torch.Tensor
    logits: torch.Tensor
    losses: dict[str, float]
    stage_totals: list[tuple[float, float]]


def learning_rate(base: float, iteration: int, iterations: int) -> float:
    """Linear warm-up over min(100, iterations/20) iterations, then cosine to 0 (the reference's lr_cosine_policy)."""
    warmup = max(1, min(100, iterations // 20))
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / max(1, iterations - warmup))) * base


def jitter_pixels(fraction: float, resolution: int) -> int:
    """Maximum circular shift at a resolution: round(fraction * r) (30 px at 224 with the default fraction)."""
    return int(round(fraction * resolution))


def invert_batch(
    teacher: Teacher,
    labels: torch.Tensor,
    weights: LossWeights,
    schedule: Schedule,
    generator: torch.Generator,
    channels_last: bool = False,
    autocast_dtype: Optional[torch.dtype] = None,
    model: Optional[torch.nn.Module] = None,
    compile: bool | str = False,
    competitor: Optional[Competitor] = None,
) -> InversionResult:
    """Optimise noise into images the teacher classifies as `labels`; random draws come from `generator` (CPU).

    `compile`: False (eager), True (torch.compile the per-iteration step: teacher forward, BN hooks and all
    losses, forward and backward), or a torch.compile mode ("reduce-overhead" adds CUDA graphs,
    "max-autotune") or backend name ("aot_eager", for tests). Augmentation and the Adam step stay eager. If
    compilation fails the batch runs eagerly (one warning). A `model` that is already `torch.compile`d is used
    as given. With a `competitor` (a frozen student) and `weights.adi` > 0 the objective adds Adaptive
    DeepInversion's competition term on the same jittered view."""
    device = labels.device
    space = PixelSpace.of(teacher, device)
    iteration = IterationStep(
        model=teacher.model if model is None else model,  # not `or`: a compiled module has no truth value
        labels=labels,
        bn_loss=BNStatisticsLoss(teacher.bn_layers, weights.bn_first, weights.bn_norm),
        tap=EmbeddingTap(teacher.embedding_module),
        weights=weights,
        autocast_dtype=autocast_dtype,
        step=compiled_inversion_step(compile),
        compile=compile,
        student=competing_student(teacher, competitor, weights, device),
        input_sizes=dict(teacher.stage_inputs),
    )
    final = schedule.resolutions[-1]
    start = (final if schedule.multires == "pool" else schedule.resolutions[0]) // schedule.lowres
    x = torch.randn((len(labels), 1 if space.gray else 3, start, start), generator=generator).to(device)
    stage = _Stage(terms={}, first_total=None)
    stage_totals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for resolution, iterations in zip(schedule.resolutions, schedule.iterations):
            size = resolution // schedule.lowres
            if schedule.multires == "upsample" and x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = x.detach().clamp(min=space.low, max=space.high).requires_grad_(True)
            stage = _optimise_stage(
                x, resolution, iterations, schedule, generator, iteration, space, channels_last, stage
            )
            stage_totals.append((stage.first_total, stage.terms["total"].detach().clone()))
    finally:
        iteration.bn_loss.remove()
        iteration.tap.remove()
    return unit_result(teacher, view_at(x.detach(), final, schedule.lowres), space, stage.terms, stage_totals)


@dataclass
class PixelSpace:
    """Where the optimised pixels live: per-channel bounds of valid pixels and, for a grayscale teacher (one
    channel optimised, R = G = B), the affine map into the teacher's 3-channel normalised space."""

    low: torch.Tensor
    high: torch.Tensor
    gray: bool
    gray_scale: Optional[torch.Tensor] = None
    gray_shift: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, teacher: Teacher, device: torch.device) -> "PixelSpace":
        """The pixel space of `teacher` on `device`."""
        low, high = teacher.pixel_bounds(device)
        if not teacher.grayscale:
            return cls(low, high, gray=False)
        gray_scale, gray_shift = teacher.gray_affine(device)
        return cls(low[:, :1], high[:, :1], gray=True, gray_scale=gray_scale, gray_shift=gray_shift)

    def to_teacher(self, x: torch.Tensor) -> torch.Tensor:
        """Optimised pixels as the teacher's 3-channel normalised input."""
        return x * self.gray_scale + self.gray_shift if self.gray else x


@dataclass
class _Stage:
    """The state one stage hands to the next: the last iteration's loss terms and the first iteration's total."""

    terms: dict[str, torch.Tensor]
    first_total: Optional[torch.Tensor]


def competing_student(
    teacher: Teacher, competitor: Optional[Competitor], weights: LossWeights, device: torch.device
) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The frozen student's logits on a teacher-normalised view, when the competition term is on; else None."""
    if competitor is None or not weights.adi > 0:
        return None
    scale, shift = competitor.input_affine(teacher.mean, teacher.std, device)
    return lambda view: competitor.logits(view * scale + shift)


def _optimise_stage(
    x: torch.Tensor,
    resolution: int,
    iterations: int,
    schedule: Schedule,
    generator: torch.Generator,
    iteration: IterationStep,
    space: PixelSpace,
    channels_last: bool,
    stage: _Stage,
) -> _Stage:
    """Run one stage's Adam iterations on `x` (in place) at `resolution`, jittered and flipped by `generator`."""
    optimizer = _adam(x, schedule)
    shifts = jitter_pixels(schedule.jitter, resolution)
    offsets = torch.randint(-shifts, shifts + 1, (iterations, 2), generator=generator).tolist()
    flips = (torch.rand(iterations, generator=generator) < 0.5).tolist()
    terms, first_total = stage.terms, stage.first_total
    for it in range(iterations):
        optimizer.param_groups[0]["lr"] = learning_rate(schedule.lr, it, iterations)
        x.grad = None
        view = view_at(x, resolution, schedule.lowres)
        augmented = torch.roll(space.to_teacher(view), shifts=tuple(offsets[it]), dims=(2, 3))
        if schedule.flip and flips[it]:
            augmented = augmented.flip(3)
        if channels_last:
            augmented = augmented.contiguous(memory_format=torch.channels_last)
        terms = iteration(augmented)
        terms["total"].backward()
        if it == 0:
            first_total = terms["total"].detach().clone()  # clone: CUDA-graph outputs are reused
        optimizer.step()
        with torch.no_grad():
            x.clamp_(min=space.low, max=space.high)
    return _Stage(terms, first_total)


def view_at(x: torch.Tensor, resolution: int, lowres: int) -> torch.Tensor:
    """The optimised pixels at `resolution`: as they are, area-pooled (multires pool) or, with lowres > 1, upsampled
    bilinearly (the band-limited parameterisation)."""
    if x.shape[-1] == resolution:
        return x
    if lowres > 1:
        return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return F.interpolate(x, size=(resolution, resolution), mode="area")


def unit_result(
    teacher: Teacher,
    x: torch.Tensor,
    space: PixelSpace,
    terms: dict[str, torch.Tensor],
    stage_totals: list[tuple[torch.Tensor, torch.Tensor]],
) -> InversionResult:
    """The final images as uint8, the teacher's logits on exactly those, and the losses as floats."""
    images = (teacher.denormalize(space.to_teacher(x.detach())) * 255).round().to(torch.uint8)
    with torch.no_grad():
        final_logits = teacher.model(teacher.normalize(images.float() / 255))
    return InversionResult(
        images=images.permute(0, 2, 3, 1).contiguous().cpu(),
        logits=final_logits.float().cpu(),
        losses={name: float(value.detach()) for name, value in terms.items()},
        stage_totals=[(float(a), float(b)) for a, b in stage_totals],
    )


def _adam(x: torch.Tensor, schedule: Schedule) -> torch.optim.Optimizer:
    """Adam over the one image tensor: the fused kernel (one pass instead of about ten) where this torch has it."""
    kwargs = dict(lr=schedule.lr, betas=tuple(schedule.betas), eps=schedule.eps)
    try:
        return torch.optim.Adam([x], fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam([x], foreach=x.device.type == "cuda", **kwargs)
