"""Adaptive DeepInversion's competitor: a frozen student, and the competition term that moves images to where it
still disagrees with the teacher (Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020).

term = 1 - clamp(JS(p_T, p_S), 0, 1), p = softmax(logits / 3) on the same jittered image,
JS(P, Q) = 0.5 KL(P || M) + 0.5 KL(Q || M), M = (P + Q) / 2, averaged over the batch.

The student file is `student.pth` with `student.json` beside it (synth.common.student_file; `dfkd distill` writes
it); its architecture must be registered with timm (`import dfkd.models` registers the DearKD students). Only the
image receives gradients: the student is in eval mode and none of its parameters requires a gradient.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synth.common.student_file import load_student
from synth.teachers import small_cnn  # noqa: F401  (registers the small BN CNNs, which may be students too)
from synth.teachers.teacher import normalization

TEMPERATURE = 3.0  # the reference code's temperature for the competition term


@dataclass
class Competitor:
    """A frozen student and how to feed it (its input size and normalisation)."""

    model: nn.Module
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    path: str
    sha256: str
    num_classes: int

    def input_affine(self, teacher_mean, teacher_std, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (1, 3, 1, 1) each: a teacher-normalised image * scale + shift is student-normalised."""
        t_mean, t_std = normalization(teacher_mean, teacher_std, device, torch.float32)
        s_mean, s_std = normalization(self.mean, self.std, device, torch.float32)
        return t_std / s_std, (t_mean - s_mean) / s_std

    def logits(self, view: torch.Tensor) -> torch.Tensor:
        """Student logits on student-normalised images of any size (resized to its input)."""
        if view.shape[-1] != self.input_size:
            view = F.interpolate(view, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.model(view)

    def describe(self) -> dict[str, str]:
        """What the shard config records: the file (absolute) and its sha256."""
        return {"file": self.path, "sha256": self.sha256}


def competition(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """1 - JS(p_T, p_S) (clamped to [0, 1]) at `temperature`, averaged over the batch: 1 where they agree."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_m = torch.logsumexp(torch.stack((log_p, log_q)), dim=0) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return 1 - (0.5 * kl_pm + 0.5 * kl_qm).mean().clamp(0, 1)


def load_competitor(path: str | Path, device: torch.device | str = "cpu") -> Competitor:
    """The frozen student of `path` (student.pth + student.json, read by synth.common.student_file), in eval mode,
    without weight gradients."""
    student = load_student(path)
    file = Path(path)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    model = student.model.eval().requires_grad_(False).to(device)
    return Competitor(
        model,
        student.input_size,
        tuple(student.mean),
        tuple(student.std),
        str(file.resolve()),
        digest,
        student.num_classes,
    )
