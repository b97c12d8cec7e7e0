"""The smallest input a teacher takes: a dry forward of one blank image per size, for the stages of a schedule."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.teacher import Teacher


def fit_resolutions(teacher: Teacher, resolutions: Sequence[int], spec: str) -> None:
    """Find the smallest input the teacher takes (a dry forward of one blank image per size, under no_grad) when a
    stage resolution is below it: pooling windows that outgrow the feature map (e.g. DenseNet's transitions at
    16 px). Sets `teacher.min_input` (the stages below it show the teacher their view upsampled to it); refuses,
    in one line, a final resolution the teacher cannot take (the stored images must be readable by it)."""
    lowest, final = min(resolutions), max(resolutions)
    if _takes(teacher.model, lowest):
        return
    needed = smallest_input(teacher.model, lowest, max(final, teacher.input_size))
    if needed is None:
        raise UserError(f"teacher {spec} fails on a blank {teacher.input_size}-px image, its own input size")
    if needed > final:
        raise UserError(
            f"teacher {spec} takes inputs of at least {needed} px (its pooling outgrows smaller feature maps); the "
            f"schedule's final resolution {final} px is smaller: end --resolutions at {needed} px or more"
        )
    teacher.min_input = needed


def smallest_input(model: nn.Module, lowest: int, highest: int) -> Optional[int]:
    """The smallest square size in [lowest, highest] that `model` takes, by bisection (a network that takes a size
    takes every larger one); None when it does not take `highest`."""
    if not _takes(model, highest):
        return None
    fails, works = lowest - 1, highest
    while works - fails > 1:
        middle = (fails + works) // 2
        fails, works = (fails, middle) if _takes(model, middle) else (middle, works)
    return works


def _takes(model: nn.Module, size: int) -> bool:
    """Whether a forward pass in eval mode accepts one blank size x size image."""
    param = next(model.parameters(), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu"))
        return True
    except (RuntimeError, ValueError):  # e.g. a pooling window larger than the feature map
        return False
    finally:
        model.train(was_training)
