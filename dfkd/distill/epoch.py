"""The training step, one training epoch and validation (top-1 accuracy)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dfkd.distill.build import Run
from dfkd.distill.config import distils
from dfkd.distill.inputs.batch import Batch, BatchPrep
from synth.common.distributed import Ranks
from synth.common.runtime import Progress


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, stage: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step of `model` (a Distiller or its DDP wrapper) on a prepared batch (bf16 autocast on CUDA);
    returns the loss and its parts, detached (no host sync)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if batch.inputs.is_cuda else nullcontext()
    with autocast:
        loss, parts = model(batch.inputs, batch.target, stage, batch.stored_probs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), parts


def train_one_epoch(
    model: nn.Module,
    run: Run,
    loader: DataLoader,
    epoch: int,
    stage: int,
    updates: int,
    progress: Progress,
    ranks: Ranks,
) -> tuple[dict[str, Any], int]:
    """Train `model` (run.model or its DDP wrapper for `stage`) on one epoch of batches, stepping the schedule per
    update. Returns the epoch's record (mean losses over every rank's batches, lr, speed) and the updates so far."""
    if run.block_taps is not None:  # the student's hidden tokens are taken in stage 1 only
        run.block_taps.enabled = distils(stage)
    steps, images = run.steps, run.effective_batch
    sums = torch.zeros(4, device=run.prep.device)
    started, shown = time.time(), 0
    for step, (inputs, labels, *logits) in enumerate(loader, 1):
        batch = run.prep(inputs, labels, logits[0] if logits else None, key=(epoch, step, ranks.rank))
        loss, parts = train_step(model, run.optimizer, batch, stage)
        updates += 1
        run.scheduler.step_update(updates)
        sums += torch.stack([loss, parts["cls"], parts["dist"], parts["hid"]])
        if step % 10 == 0 or step == steps:
            progress.advance(
                (step - shown) * images, {"epoch": epoch + 1, "stage": stage, "loss": float(sums[0]) / step}
            )
            shown = step
    seconds = time.time() - started
    means = (sums / steps).tolist()
    if ranks.distributed:  # the mean over every rank's batches
        means = [sum(values) / ranks.world_size for values in zip(*ranks.all_gather(means))]
    return {
        "epoch": epoch + 1,
        "stage": stage,
        "loss": means[0],
        "cls": means[1],
        "dist": means[2],
        "hid": means[3],
        "lr": run.optimizer.param_groups[0]["lr"],
        "img_s": round(steps * images / seconds, 2),
        "seconds": round(seconds, 2),
    }, updates


@torch.no_grad()
def measure_top1(student: nn.Module, loader, prep: BatchPrep, ranks: Optional[Ranks] = None) -> float:
    """Top-1 accuracy of the student (eval mode: mean of its two heads). Under DDP each rank runs the plain
    student (no collective inside) on its share of the images, then the ranks' hits and counts are summed."""
    student.eval()
    hits = total = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if prep.device.type == "cuda" else nullcontext()
    for images, labels, *_ in loader:
        with autocast:
            logits = student(prep.normalize(images))
        hits += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    student.train()
    if ranks is not None and ranks.distributed:
        hits, total = (sum(v) for v in zip(*ranks.all_gather((hits, total))))
    return hits / max(total, 1)
