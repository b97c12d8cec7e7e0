"""The module distillation trains: the student and the loss (with the aligners) as one, wrapped in
DistributedDataParallel under torchrun; the teacher stays outside it, under no_grad."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dfkd.distill.config import distils
from dfkd.distill.losses import DistillationLoss
from dfkd.distill.own_student import OwnStudent
from dfkd.distill.taps import BlockTaps
from synth.common.distributed import Ranks


class Distiller(nn.Module):
    """The student and the loss (which holds the aligners) as one module whose forward returns the loss, so under
    DDP one wrapper all-reduces the gradients of the student and of the aligners. The teacher is no submodule
    (TeacherTaps is a plain object): it stays outside DDP, under no_grad."""

    def __init__(self, student: nn.Module, criterion: DistillationLoss, block_taps: Optional[BlockTaps] = None):
        super().__init__()
        self.student, self.criterion, self.block_taps = student, criterion, block_taps
        embed = getattr(student, "patch_embed", None)  # the patch grid the aligners fold tokens into (DearKD students)
        self.grid_size = embed.grid_size if embed is not None else None

    def forward(
        self, inputs: torch.Tensor, target: torch.Tensor, stage: int, stored_probs: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached parts on one prepared batch."""
        outputs = self.student(inputs)
        tokens = self.block_taps.take() if self.block_taps is not None and distils(stage) else ()
        return self.criterion(inputs, outputs, target, stage, tokens, self.grid_size, stored_probs)


def for_stage(model: Distiller, stage: int, ranks: Ranks, device: torch.device) -> nn.Module:
    """The module a stage trains through. The aligners learn in stage 1 only; in stage 2 they are frozen. Under
    DDP each stage gets its own wrapper over the parameters that learn in it, so every parameter it holds gets a
    gradient at every step: no `find_unused_parameters` graph search per step, and DDP's check stays strict."""
    for p in model.criterion.aligners.parameters():
        p.requires_grad_(distils(stage))
    if not ranks.distributed:
        return model
    # broadcast_buffers off for the DearKD students: their buffers are constants (relative positions; no BN running
    # statistics). A student from the user's code may have BN: every forward starts from rank 0's statistics.
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=isinstance(model.student, OwnStudent),
    )
