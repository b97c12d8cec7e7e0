"""One batch of multi-resolution DeepInversion with DF-DearKD's intra-divergence and triplet losses (docs/method.md)."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from synth.competitor import Competitor, competition
from synth.config import LossWeights, Schedule
from synth.losses import BNStatisticsLoss, intra_divergence, l2_prior, triplet, tv_prior
from synth.teacher import EmbeddingTap, Teacher


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


def invert_batch(teacher: Teacher, labels: torch.Tensor, weights: LossWeights, schedule: Schedule,
                 generator: torch.Generator, channels_last: bool = False,
                 autocast_dtype: Optional[torch.dtype] = None, model: Optional[torch.nn.Module] = None,
                 compile: bool | str = False, competitor: Optional[Competitor] = None) -> InversionResult:
    """Optimise noise into images the teacher classifies as `labels`; random draws come from `generator` (CPU).

    `compile`: False (eager), True (torch.compile the per-iteration step: teacher forward, BN hooks and all
    losses, forward and backward), or a torch.compile mode ("reduce-overhead" adds CUDA graphs,
    "max-autotune") or backend name ("aot_eager", for tests). Augmentation and the Adam step stay eager. If
    compilation fails the batch runs eagerly (one warning). A `model` that is already `torch.compile`d is used
    as given. With a `competitor` (a frozen student) and `weights.adi` > 0 the objective adds Adaptive
    DeepInversion's competition term on the same jittered view."""
    device = labels.device
    model = teacher.model if model is None else model  # not `or`: a compiled module has no truth value
    low, high = teacher.pixel_bounds(device)
    gray = teacher.grayscale  # optimise one channel; the teacher sees it replicated (R = G = B)
    if gray:
        low, high = low[:, :1], high[:, :1]
        gray_scale, gray_shift = teacher.gray_affine(device)
    bn_loss = BNStatisticsLoss(teacher.bn_layers, weights.bn_first, weights.bn_norm)
    tap = EmbeddingTap(teacher.embedding_module)
    step = _compiled_step(compile)
    student = None
    if competitor is not None and weights.adi > 0:
        scale, shift = competitor.input_affine(teacher.mean, teacher.std, device)
        student = lambda view: competitor.logits(view * scale + shift)  # noqa: E731
    final = schedule.resolutions[-1]
    start = final if schedule.multires == "pool" else schedule.resolutions[0]
    x = torch.randn((len(labels), 1 if gray else 3, start, start), generator=generator).to(device)
    terms: dict[str, torch.Tensor] = {}
    stage_totals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for resolution, iterations in zip(schedule.resolutions, schedule.iterations):
            if schedule.multires == "upsample" and x.shape[-1] != resolution:
                x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
            x = x.detach().clamp(min=low, max=high).requires_grad_(True)
            optimizer = _adam(x, schedule)
            shifts = jitter_pixels(schedule.jitter, resolution)
            offsets = torch.randint(-shifts, shifts + 1, (iterations, 2), generator=generator).tolist()
            flips = (torch.rand(iterations, generator=generator) < 0.5).tolist()
            for it in range(iterations):
                optimizer.param_groups[0]["lr"] = learning_rate(schedule.lr, it, iterations)
                x.grad = None
                view = x if x.shape[-1] == resolution else F.interpolate(x, size=(resolution, resolution), mode="area")
                if gray:
                    view = view * gray_scale + gray_shift
                augmented = torch.roll(view, shifts=tuple(offsets[it]), dims=(2, 3))
                if schedule.flip and flips[it]:
                    augmented = augmented.flip(3)
                if channels_last:
                    augmented = augmented.contiguous(memory_format=torch.channels_last)
                if step is not None:
                    try:
                        terms = step(model, augmented, labels, bn_loss, tap, weights, autocast_dtype, student)
                    except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager
                        warnings.warn(f"torch.compile of the inversion step failed, running eagerly: "
                                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                        step = None
                        _COMPILED[_compile_key(compile)] = None  # later batches go eager without retrying
                if step is None:
                    terms = _step(model, augmented, labels, bn_loss, tap, weights, autocast_dtype, student)
                terms["total"].backward()
                if it == 0:
                    first_total = terms["total"].detach().clone()  # clone: CUDA-graph outputs are reused
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(min=low, max=high)
            stage_totals.append((first_total, terms["total"].detach().clone()))
    finally:
        bn_loss.remove()
        tap.remove()
    final_x = x.detach() * gray_scale + gray_shift if gray else x.detach()
    images = (teacher.denormalize(final_x) * 255).round().to(torch.uint8)
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


def _step(model: torch.nn.Module, augmented: torch.Tensor, labels: torch.Tensor, bn_loss: BNStatisticsLoss,
          tap: EmbeddingTap, weights: LossWeights, autocast_dtype: Optional[torch.dtype],
          student: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """One teacher forward (BN hooks and embedding tap fire), the frozen student's forward when competing, and the
    objective: what `compile` compiles."""
    with _autocast(augmented.device, autocast_dtype):
        logits = model(augmented)
        student_logits = student(augmented) if student is not None else None
    return _objective(logits.float(), tap.value.float(), augmented, labels, bn_loss, weights, student_logits)


_COMPILED: dict[str, Optional[Callable]] = {}
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compiled_step(option: bool | str) -> Optional[Callable]:
    """The compiled `_step` for a compile option (cached per option, so batches reuse the compiled graphs)."""
    if not option:
        return None
    key = _compile_key(option)
    if key not in _COMPILED:
        try:
            kwargs = {"mode": key} if key in _COMPILE_MODES else {"backend": key}
            _COMPILED[key] = torch.compile(_step, dynamic=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - torch.compile unsupported here
            warnings.warn(f"torch.compile is unavailable, running eagerly: {type(exc).__name__}: {exc}")
            _COMPILED[key] = None
    return _COMPILED[key]


def _compile_key(option: bool | str) -> str:
    return "default" if option is True else str(option)


def _objective(logits: torch.Tensor, embedding: torch.Tensor, augmented: torch.Tensor, labels: torch.Tensor,
               bn_loss: BNStatisticsLoss, w: LossWeights,
               student_logits: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """All loss terms of one iteration (unweighted) and their weighted total; no host synchronisation."""
    terms = {"ce": F.cross_entropy(logits, labels), "bn": bn_loss.loss()}
    if w.tv:
        terms["tv"] = tv_prior(augmented)
    if w.l2:
        terms["l2"] = l2_prior(augmented)
    if w.ep:
        terms["ep"] = intra_divergence(embedding, labels, w.ep_margin, w.ep_form)
    if w.triplet:
        terms["triplet"] = triplet(embedding, labels, w.triplet_margin)
    if w.adi and student_logits is not None:
        terms["adi"] = competition(logits, student_logits)
    scale = {"ce": w.ce, "bn": w.bn, "tv": w.tv, "l2": w.l2, "ep": w.ep, "triplet": w.triplet, "adi": w.adi}
    terms["total"] = sum(scale[name] * value for name, value in terms.items())
    return {name: value.detach() if name != "total" else value for name, value in terms.items()}


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
