"""`distill`: one distillation run, from its settings to the student's files (stage 1 with early KD, then stage 2
without), resumable after any epoch (dfkd.distill.resume).

Under torchrun (`ranks` from synth.common.distributed.init) every rank checks the settings, reads the checkpoint and builds
the run; each trains on its DistributedSampler share inside one DDP wrapper (dfkd.distill.distiller) with its own
RNG streams (augmentations and Mixup seeded per batch with the rank; drop path). Rank 0 alone writes files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dfkd.data.image_folder import open_image_folder
from dfkd.distill.build import Run, setup
from dfkd.distill.config import DistillConfig, stage_of
from dfkd.distill.distiller import for_stage
from dfkd.distill.epoch import measure_top1, train_one_epoch
from dfkd.distill.inputs.decode import decode, folder_transform
from dfkd.distill.inputs.loaders import make_loader, set_transform
from dfkd.distill.output import Output
from dfkd.distill.own_student import OwnStudent, exported
from dfkd.distill.resume import check_resume, check_world, checkpoint, restore
from dfkd.distill.rng import rank_seed, seed_all
from synth.common import output_lock
from synth.common.distributed import Ranks
from synth.common.errors import UserError
from synth.common.runtime import Progress, available_cores, resolve_device, use_threads
from synth.teachers.teacher import Teacher, state_dict_sha256


def train_student(
    config: DistillConfig,
    out: str | Path,
    progress: Optional[Progress] = None,
    on_epoch: Optional[Callable[[dict], None]] = None,
    ranks: Optional[Ranks] = None,
    teacher: Optional[Teacher] = None,
) -> dict[str, Any]:
    """Train the student (stage 1 with early KD, then stage 2 without) and write its files to `out`. `teacher`: one
    already loaded (the Python API's in-memory network), else config.teacher is loaded.

    Under torchrun pass `ranks` (synth.common.distributed.init): DistributedDataParallel over ranks.world_size processes;
    every rank returns the summary, rank 0 alone writes files (and should alone report).
    """
    progress, ranks, started = progress or Progress(), ranks or Ranks(), time.time()
    with output_lock.held(out, ranks, progress.message):  # one run per directory: rank 0 holds it for every rank
        return _train(config, out, progress, on_epoch, ranks, started, teacher)


def _train(
    config: DistillConfig,
    out: str | Path,
    progress: Progress,
    on_epoch: Optional[Callable[[dict], None]],
    ranks: Ranks,
    started: float,
    teacher: Optional[Teacher] = None,
) -> dict[str, Any]:
    """`train_student` once the output directory is this run's alone."""
    with ranks.together():  # every rank checks the settings, reads the checkpoint and builds the run
        device, output, saved = _open(config, out, progress, ranks)
        run, start, updates = _start(config, device, saved, progress, ranks, teacher)
        val_loader = _val_loader(config, run, ranks)
    _check_same_start(ranks, start, out)
    record: dict[str, Any] = saved["record"] if saved is not None else {}
    val_top1 = record.get("val_top1")
    progress.start((config.epochs - start) * run.steps * run.effective_batch)
    model, model_stage = None, 0
    try:
        for epoch in range(start, config.epochs):
            stage = stage_of(epoch, config)
            if stage != model_stage:
                model = None  # let the previous stage's DDP wrapper go before the next one is made
                model, model_stage = for_stage(run.model, stage, ranks, device), stage
            loader = _train_loader(config, run, epoch, device, ranks)
            record, updates = train_one_epoch(model, run, loader, epoch, stage, updates, progress, ranks)
            if val_loader is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                val_top1 = record["val_top1"] = measure_top1(run.student, val_loader, run.prep, ranks)
            output.save_checkpoint(checkpoint(config, run, epoch + 1, stage, updates, record, ranks))
            output.log(record)
            if (epoch + 1) % config.val_every == 0 and epoch + 1 < config.epochs:
                output.draw_curves()
            if on_epoch is not None:
                on_epoch(record)
    finally:
        progress.close()
    model = None
    _same_buffers(run.student, ranks)
    hashes = _same_weights(run.student, ranks)
    output.export_student(exported(run.student), _student_info(config, run))
    output.draw_curves(final=True)
    return _summary(config, out, output, run, record, val_top1, hashes, ranks.world_size, started)


def _open(
    config: DistillConfig, out: str | Path, progress: Progress, ranks: Ranks
) -> tuple[torch.device, Output, Optional[dict]]:
    """Check the settings; this rank's device, the run's files and the checkpoint to resume (None: a fresh run)."""
    config.validate()
    threads = use_threads(config.threads, ranks.local_world_size)
    device = ranks.local_device(resolve_device(config.device))
    output = Output(out, main=ranks.rank == 0, message=progress.message)
    saved = output.prepare(config.resume)
    if saved is not None:
        check_resume(saved["config"], config)
        check_world(saved, ranks.world_size, config.batch_size)
    elif config.resume:
        progress.message(f"no checkpoint in '{out}' yet; starting a fresh run")
    if ranks.distributed and ranks.local_world_size * threads > available_cores():
        progress.message(
            f"note: {ranks.local_world_size} processes x {threads} threads exceed this machine's "
            f"{available_cores()} cores; set --threads"
        )
    return device, output, saved


def _start(
    config: DistillConfig,
    device: torch.device,
    saved: Optional[dict],
    progress: Progress,
    ranks: Ranks,
    teacher: Optional[Teacher] = None,
) -> tuple[Run, int, int]:
    """The seeded run, restored from `saved` when resuming, with the epochs and optimiser updates already done."""
    seed_all(config.seed)
    run = setup(config, device, progress, ranks.world_size, teacher.to(device) if teacher is not None else None)
    if ranks.distributed:  # the same initial weights on every rank; then each its own augmentations, drop path
        seed_all(rank_seed(config.seed, ranks.rank))
    if saved is None:
        return run, 0, 0
    start, updates = restore(run, saved, ranks)
    progress.message(f"resuming after epoch {start} of {config.epochs}")
    return run, start, updates


def _val_loader(config: DistillConfig, run: Run, ranks: Ranks) -> Optional[DataLoader]:
    """This rank's share of the validation images (--val-data) at the student's input size; None without them."""
    if not config.val_data:
        return None
    cfg = getattr(run.student, "pretrained_cfg", {})  # a student from the user's code: bicubic, no centre crop
    val_set = open_image_folder(config.val_data, run.num_classes, class_map=config.class_map, loader=decode)
    set_transform(val_set, folder_transform(run.size, cfg.get("interpolation", "bicubic"), cfg.get("crop_pct", 1.0)))
    return make_loader(
        val_set,
        config.batch_size,
        config.workers,
        train=False,
        seed=config.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )


def _train_loader(config: DistillConfig, run: Run, epoch: int, device: torch.device, ranks: Ranks) -> DataLoader:
    """This rank's shuffled share of the shards for `epoch` (pinned memory on CUDA)."""
    return make_loader(
        run.dataset,
        config.batch_size,
        config.workers,
        train=True,
        seed=config.seed,
        epoch=epoch,
        pin_memory=device.type == "cuda",
        rank=ranks.rank,
        world_size=ranks.world_size,
    )


def _student_info(config: DistillConfig, run: Run) -> dict[str, Any]:
    """What student.json records beside the weights: the model, its input and the settings to rebuild it (for a
    student from the user's code: its spec, student_kwargs and the sha256 of that code)."""
    own = isinstance(run.student, OwnStudent)
    model = run.student.record if own else {"model": config.student}
    return {
        **model,
        "num_classes": run.num_classes,
        "input_size": run.size,
        "mean": list(run.mean),
        "std": list(run.std),
        "epochs": config.epochs,
        **({} if own else {"model_kwargs": config.model_kwargs()}),
    }


def _check_same_start(ranks: Ranks, start: int, out: str | Path) -> None:
    """Every rank must start from the same epoch (e.g. with an --out that is not shared, rank 0 would resume while
    another rank starts afresh)."""
    if ranks.distributed:
        seen = ranks.all_gather(start)
        with ranks.together():
            if any(epoch != seen[0] for epoch in seen):
                raise UserError(
                    f"the ranks see different checkpoints in '{out}' (epochs {seen}); --out must be a "
                    "directory every node shares"
                )


def _same_buffers(student: nn.Module, ranks: Ranks) -> None:
    """Under DDP, rank 0's buffers on every rank for a student from the user's code (its BN statistics are
    broadcast before each forward, then each rank's last batch updates them its own way)."""
    if ranks.distributed and isinstance(student, OwnStudent):
        for buffer in student.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _same_weights(student: nn.Module, ranks: Ranks) -> list[str]:
    """Every rank's sha256 of the student weights; they must be equal (DDP keeps the replicas equal: anything else
    is a bug, not a result)."""
    hashes = ranks.all_gather(state_dict_sha256(student.state_dict()))
    if any(h != hashes[0] for h in hashes):
        raise RuntimeError(
            f"the processes ended with different student weights (sha256 {hashes}); student.pth was not written"
        )
    return hashes


def _summary(
    config: DistillConfig,
    out: str | Path,
    output: Output,
    run: Run,
    record: dict[str, Any],
    val_top1: Optional[float],
    hashes: list[str],
    world_size: int,
    started: float,
) -> dict[str, Any]:
    """What `distill` returns: the files, the settings that shaped the run and its results."""
    effective = run.effective_batch
    return {
        "out": str(out),
        "student": str(output.student),
        "student_json": str(output.student_json),
        "checkpoint": str(output.checkpoint),
        "metrics": str(output.metrics),
        "curves": str(output.curves_png),
        "model": config.student,
        "num_classes": run.num_classes,
        "images": len(run.dataset),
        "epochs": config.epochs,
        "stage1_epochs": config.stage1,
        "distillation": config.loss.distillation,
        "hidden_kd": bool(run.pairs),
        "pairs": [f"{b}:{t}" for b, t in run.pairs],
        "final_loss": record.get("loss"),
        "val_top1": val_top1,
        "world_size": world_size,
        "batch_size": config.batch_size,
        "effective_batch": effective,
        "lr": config.optim.lr * effective / 512,
        "weights_sha256": hashes,
        "seconds": round(time.time() - started, 2),
    }
