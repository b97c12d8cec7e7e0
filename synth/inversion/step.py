"""One inversion iteration's loss terms on an augmented view: eager, or torch.compiled and cached per option."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from synth.config import LossWeights
from synth.inversion.objective import IterationView, objective
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.teacher import EmbeddingTap


@dataclass
class IterationStep:
    """The loss of one iteration on an augmented view: the compiled step when there is one, else the eager step
    (after a compilation failure: one warning, and later batches go eager without retrying)."""

    model: torch.nn.Module
    labels: torch.Tensor
    bn_loss: BNStatisticsLoss
    tap: EmbeddingTap
    weights: LossWeights
    autocast_dtype: Optional[torch.dtype]
    step: Optional[Callable]
    compile: bool | str
    student: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # a view size the teacher fails on -> the size it is shown at, upsampled (bilinear); other views as they are
    input_sizes: dict[int, int] = field(default_factory=dict)

    def __call__(self, augmented: torch.Tensor) -> dict[str, torch.Tensor]:
        arguments = (
            self.model,
            augmented,
            self.labels,
            self.bn_loss,
            self.tap,
            self.weights,
            self.autocast_dtype,
            self.student,
            self.input_sizes.get(augmented.shape[-1], 0),
        )
        if self.step is not None:
            try:
                return self.step(*arguments)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager
                warnings.warn(
                    f"torch.compile of the inversion step failed, running eagerly: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                self.step = None
                _COMPILED[_compile_key(self.compile)] = None  # later batches go eager without retrying
        return inversion_step(*arguments)


def inversion_step(
    model: torch.nn.Module,
    augmented: torch.Tensor,
    labels: torch.Tensor,
    bn_loss: BNStatisticsLoss,
    tap: EmbeddingTap,
    weights: LossWeights,
    autocast_dtype: Optional[torch.dtype],
    student: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    min_input: int = 0,
) -> dict[str, torch.Tensor]:
    """One iteration's loss terms on an augmented view (eager): one teacher forward (BN hooks and embedding tap
    fire), the frozen student's forward when competing, and the objective; "total" is the weighted sum, to
    backpropagate. This is the step `compile` compiles (see `compiled_inversion_step`); the GPU benchmark times it.
    A view smaller than `min_input` is shown to the teacher upsampled to it (the priors see the view itself)."""
    shown = augmented
    if augmented.shape[-1] < min_input:
        shown = F.interpolate(augmented, size=(min_input, min_input), mode="bilinear", align_corners=False)
    with _autocast(augmented.device, autocast_dtype):
        logits = model(shown)
        student_logits = student(augmented) if student is not None else None
    return objective(
        IterationView(logits.float(), tap.value.float(), augmented, labels, bn_loss, weights, student_logits)
    )


_COMPILED: dict[str, Optional[Callable]] = {}
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiled_inversion_step(option: bool | str) -> Optional[Callable]:
    """`inversion_step` compiled for a compile option of `invert_batch` (cached per option, so batches reuse the
    compiled graphs); None for False, or when torch.compile is unavailable here (one warning)."""
    if not option:
        return None
    key = _compile_key(option)
    if key not in _COMPILED:
        try:
            kwargs = {"mode": key} if key in _COMPILE_MODES else {"backend": key}
            _COMPILED[key] = torch.compile(inversion_step, dynamic=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - torch.compile unsupported here
            warnings.warn(f"torch.compile is unavailable, running eagerly: {type(exc).__name__}: {exc}")
            _COMPILED[key] = None
    return _COMPILED[key]


def _compile_key(option: bool | str) -> str:
    """The cache key of a compile option: True is torch.compile's default mode."""
    return "default" if option is True else str(option)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to `dtype` on the device's type, or no autocast when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
