"""DearKD's two-stage distillation loss (docs/method.md), one small module in the manner of DeiT's DistillationLoss.

Stage 1: w_cls * C(z_cls) + w_dist * D(z_dist) + a_hid * sum_k MSE(aligner_k(tokens_k), teacher stage_k)
  C = CE(z_cls, target), except for function_matching, where C = D(z_cls): labels are not used
  D = hard:   CE(z_dist, argmax T(x))                       (x: the student's augmented, possibly mixed input)
      soft:   tau^2 * KL(softmax(T(x)/tau) || softmax(z_dist/tau))
      function_matching: as soft, on both heads (Beyer et al., "Knowledge distillation: A good teacher is
              patient and consistent", CVPR 2022): the student matches the teacher's whole distribution on
              exactly the mixed view it trains on
      stored: tau^2 * KL(p || softmax(z_dist/tau)), p = the shards' stored teacher probabilities at tau,
              mixed like the images (no teacher forward, so no hidden term)
Stage 2: w_cls * CE(z_cls, target) + w_dist * CE(z_dist, target); no teacher forward, no aligner.
`target` is the soft (label-smoothed, mixed) class target; CE against it is timm's SoftTargetCrossEntropy.
Every KL is reduced per sample (`batchmean`: summed over classes, averaged over the batch), the textbook KL;
DeiT's soft loss divides the same sum by batch x classes, i.e. it is this one / C.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from dfkd.distill.config import KINDS, distils
from dfkd.distill.taps import TeacherTaps
from synth.teachers.teacher import normalization


def soft_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(teacher_probs || softmax(student_logits / tau)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits / tau, dim=1), teacher_probs, reduction="batchmean") * tau * tau


def teacher_affine(
    student_mean: Sequence[float],
    student_std: Sequence[float],
    teacher_mean: Sequence[float],
    teacher_std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), (1, 3, 1, 1) each, mapping a student-normalised image to the same image teacher-normalised."""
    s_mean, s_std = normalization(student_mean, student_std, dtype=torch.float32)
    t_mean, t_std = normalization(teacher_mean, teacher_std, dtype=torch.float32)
    return s_std / t_std, (s_mean - t_mean) / t_std


class DistillationLoss(nn.Module):
    """Stage-1 / stage-2 DearKD loss; the teacher runs here, once per stage-1 call, under no_grad.

    `renorm` = (student mean, student std, teacher mean, teacher std): the teacher sees the student's input
    re-normalised with its own statistics.
    """

    def __init__(
        self,
        kind: str = "hard",
        teacher: Optional[TeacherTaps] = None,
        aligners: Sequence[nn.Module] = (),
        tau: float = 1.0,
        w_cls: float = 1.0,
        w_dist: float = 1.0,
        a_hid: float = 1.0,
        renorm: Optional[tuple[Sequence[float], ...]] = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"distillation kind {kind!r} is not one of {KINDS}")
        if kind != "stored" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher")
        self.kind, self.teacher, self.tau = kind, teacher, tau
        self.aligners = nn.ModuleList(aligners)
        self.w_cls, self.w_dist, self.a_hid = w_cls, w_dist, a_hid
        scale, shift = teacher_affine(*renorm) if renorm else (torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", scale, persistent=False)  # student input * scale + shift = teacher input
        self.register_buffer("shift", shift, persistent=False)
        self.ce = SoftTargetCrossEntropy()

    def forward(
        self,
        inputs: torch.Tensor,
        outputs: tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        stage: int,
        tokens: Sequence[torch.Tensor] = (),
        grid_size: Optional[tuple[int, int]] = None,
        stored_probs: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached parts (cls, dist, hid) for student `outputs` = (z_cls, z_dist) on `inputs`."""
        z_cls, z_dist = (o.float() for o in outputs)
        hid = z_cls.new_zeros(())
        if not distils(stage):
            cls, dist = self.ce(z_cls, target), self.ce(z_dist, target)
        elif self.kind == "stored":
            cls, dist = self.ce(z_cls, target), soft_kl(z_dist, stored_probs, self.tau)
        else:
            logits, features = self.teacher(inputs * self.scale + self.shift)
            if self.kind == "hard":
                dist = F.cross_entropy(z_dist, logits.argmax(dim=1))
            else:
                probs = F.softmax(logits / self.tau, dim=1)
                dist = soft_kl(z_dist, probs, self.tau)
            cls = soft_kl(z_cls, probs, self.tau) if self.kind == "function_matching" else self.ce(z_cls, target)
            for aligner, token, feature in zip(self.aligners, tokens, features):
                hid = hid + F.mse_loss(aligner(token, grid_size).float(), feature)
        total = self.w_cls * cls + self.w_dist * dist + self.a_hid * hid
        return total, {"cls": cls.detach(), "dist": dist.detach(), "hid": hid.detach()}
