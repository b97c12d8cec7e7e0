"""A student from the user's own code (`--student module:factory` or `file.py:factory`): built through
synth.teachers.user_code (this runs that code), checked on one probe batch and wrapped so that distillation sees
what it expects of a student: in training the same logits on both heads, (z, z), so the loss's class and
distillation terms both apply to the one head; in eval the logits. It trains at --input-size, else the shards'
resolution, normalised as --student-mean/--student-std say, else as the teacher's images were made. Hidden-layer KD
needs a DearKD student's block taps: for such a student it is off."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from dfkd.distill.config import DistillConfig
from synth.common.errors import UserError, first_line
from synth.common.student_file import build_code_net, code_record
from synth.teachers.channels import input_channels
from synth.teachers.preprocessing import parse_stats
from synth.teachers.user_code import is_code_spec, parse_code_spec, parse_kwargs


class OwnStudent(nn.Module):
    """The user's one-head network `net` (1 or 3 input channels; a 1-channel one runs on the channels' mean) as a
    distillation student: (z, z) in training mode, z in eval mode."""

    def __init__(self, net: nn.Module, channels: int, record: dict[str, Any]):
        super().__init__()
        self.net, self.channels, self.record = net, channels, record

    def forward(self, x: torch.Tensor):
        z = self.net(x.mean(1, keepdim=True) if self.channels == 1 else x)
        return (z, z) if self.training else z


def is_own(config: DistillConfig) -> bool:
    """Whether the student is the user's own code rather than a timm name."""
    return is_code_spec(config.student)


def build_own_student(config: DistillConfig, num_classes: int, size: int) -> OwnStudent:
    """The user's student for `num_classes` classes, checked on a zero batch at `size` px."""
    spec = parse_code_spec(config.student)
    kwargs = parse_kwargs(config.student_kwargs, "student_kwargs")
    net = build_code_net(spec, kwargs, num_classes)
    channels = input_channels(net)
    if channels not in (1, 3):
        raise UserError(f"student {spec.text} takes {channels} input channels; dfkd's images have 1 or 3")
    check_output(net, spec.text, channels, size, num_classes)
    return OwnStudent(net.train(), channels, code_record(spec, kwargs))


def check_output(net: nn.Module, spec: str, channels: int, size: int, num_classes: int) -> None:
    """Refuse a network that cannot run on two `size`-px images or does not return (batch, num_classes) logits."""
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, channels, size, size))
    except Exception as exc:  # noqa: BLE001 - the user's forward failed on this input
        raise UserError(
            f"student {spec} cannot run on {channels}x{size}x{size} input ({type(exc).__name__}: {first_line(exc)}); "
            "set --input-size to the size it takes"
        ) from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise UserError(
            f"student {spec} returned {shape} for 2 images; it must return one (batch, {num_classes}) tensor of "
            f"logits ({num_classes} classes)"
        )


def own_input(
    config: DistillConfig, resolution: Optional[int], teacher_stats: tuple[Sequence[float], Sequence[float], int]
) -> tuple[int, tuple[float, ...], tuple[float, ...], str]:
    """(input size, mean, std, the note line) of a user student: --input-size, else the shards' resolution, else
    the teacher's input size; --student-mean/--student-std, else the teacher's (what its images were made under)."""
    t_mean, t_std, t_size = teacher_stats
    size = config.input_size or resolution or t_size
    where = "--input-size" if config.input_size else "the shards' resolution" if resolution else "the teacher's"
    mean = three(parse_stats(config.student_mean, "student_mean", 0) or t_mean, "student_mean")
    std = three(parse_stats(config.student_std, "student_std", 1) or t_std, "student_std")
    stated = config.student_mean is not None or config.student_std is not None
    how = "as --student-mean/--student-std say" if stated else "as the teacher's images were made"
    note = (
        f"note: student {config.student} trains at {size} px ({where}), normalised with mean {_text(mean)}, std "
        f"{_text(std)} ({how})"
    )
    return size, mean, std, note


def three(values: Sequence[float], name: str) -> tuple[float, ...]:
    """One value for every channel, or three: the three values the RGB batches are normalised with."""
    values = tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise UserError(f"{name} has {len(values)} values; give one (every channel) or three (R, G, B)")
    return values * 3 if len(values) == 1 else values


def _text(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def exported(student: nn.Module) -> nn.Module:
    """The module student.pth holds: the user's network itself (loadable into factory(**kwargs)), else the
    student."""
    return student.net if isinstance(student, OwnStudent) else student
