"""The input sizes a teacher takes, stage by stage: a dry forward of one blank image per size.

Sizes need not be monotone: networks that merge branches (DLA, HRNet) take 31, 32, 63 and 64 px but fail on 33 to
62 px, where the branches' feature maps disagree. So each stage's own size is tried as it is; a stage the teacher fails
on is shown to it upsampled to the smallest size above it that it takes, found by trying every size upward (exact, and
for a network whose sizes are monotone the same size the earlier bisection found, so existing sets keep their config).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.teacher import Teacher

_NEAR = 64  # how far from a refused final resolution to look for sizes the teacher takes (px)


def fit_resolutions(teacher: Teacher, resolutions: Sequence[int], spec: str) -> None:
    """Try each stage resolution (a dry forward under no_grad). A stage the teacher fails on (a pooling window that
    outgrows the feature map, DenseNet at 16 px; branches that disagree, DLA at 24 px) is shown its view upsampled to
    the smallest size above it that the teacher takes: `teacher.stage_inputs` maps it to that size, and
    `teacher.min_input` is set when one size serves every stage below it (the rule earlier sets recorded). Refuses, in
    one line, a final resolution the teacher fails on (the stored images must be readable by it)."""
    takes = _memo(teacher.model)
    final = max(resolutions)
    if not takes(final):
        raise UserError(_refusal(teacher, final, spec, takes))
    teacher.stage_inputs = {
        resolution: smallest_input(teacher.model, resolution + 1, final, takes)
        for resolution in sorted(set(resolutions))
        if resolution < final and not takes(resolution)
    }
    teacher.min_input = _one_size(teacher.stage_inputs, resolutions)


def smallest_input(
    model: nn.Module, lowest: int, highest: int, takes: Optional[Callable[[int], bool]] = None
) -> Optional[int]:
    """The smallest square size in [lowest, highest] that `model` takes, trying every size upward (a network that
    takes a size need not take a larger one); None when it takes none."""
    takes = takes or (lambda size: _takes(model, size))
    return next((size for size in range(lowest, highest + 1) if takes(size)), None)


def input_note(teacher: Teacher, resolutions: Sequence[int]) -> Optional[str]:
    """The line telling the user which stages are shown to the teacher upsampled, and to what size; None if none."""
    if not teacher.stage_inputs:
        return None
    if teacher.min_input:
        below = [r for r in resolutions if r < teacher.min_input]
        return (
            f"note: the teacher takes no input from {min(below)} to {teacher.min_input - 1} px; the stage(s) at "
            f"{', '.join(map(str, below))} px show it their view upsampled (bilinear) to {teacher.min_input} px, the "
            "smallest size it takes above them (recorded as teacher_min_input)"
        )
    shown = ", ".join(f"{stage} px -> {size} px" for stage, size in sorted(teacher.stage_inputs.items()))
    return (
        f"note: the teacher fails on some stage resolutions; each shows it its view upsampled (bilinear) to the "
        f"smallest size above it that it takes: {shown} (recorded as teacher_input_sizes)"
    )


def _one_size(stage_inputs: dict[int, int], resolutions: Sequence[int]) -> Optional[int]:
    """The one size M when the stages shown upsampled are exactly those below M, all shown at M; else None."""
    sizes = set(stage_inputs.values())
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size if set(stage_inputs) == {r for r in resolutions if r < size} else None


def _refusal(teacher: Teacher, final: int, spec: str, takes: Callable[[int], bool]) -> str:
    """The one line refusing a final resolution the teacher fails on, with the nearest sizes it takes."""
    if final != teacher.input_size and not takes(teacher.input_size):
        return f"teacher {spec} fails on a blank {teacher.input_size}-px image, its own input size"
    below = next((size for size in range(final - 1, max(final - _NEAR, 0), -1) if takes(size)), None)
    above = smallest_input(teacher.model, final + 1, final + _NEAR, takes)
    near = " or ".join(f"{size} px" for size in (below, above) if size is not None)
    advice = f"{near}, the nearest size(s) it takes" if near else f"a size it takes (none within {_NEAR} px)"
    return (
        f"teacher {spec} fails on the schedule's final resolution {final} px (its feature maps do not fit that "
        f"size; the stored images are that size and must be readable by it): end --resolutions at {advice}; earlier "
        "stages may be any size"
    )


def _memo(model: nn.Module) -> Callable[[int], bool]:
    """`_takes` for `model`, each size tried once."""
    seen: dict[int, bool] = {}

    def takes(size: int) -> bool:
        if size not in seen:
            seen[size] = _takes(model, size)
        return seen[size]

    return takes


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
