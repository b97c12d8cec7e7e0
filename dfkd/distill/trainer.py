"""The distillation run: setup, the two-stage epoch loop, validation, checkpoints, resume and the student export.

Resume: `checkpoint.pt` (written atomically at the end of every epoch) holds the student, the aligners, the
optimiser, the scheduler, the epoch and stage, and the torch / CUDA / numpy / python RNG states; each epoch's
shuffle order comes from a generator seeded by (seed, epoch). A resumed run therefore repeats the
uninterrupted one exactly (on CPU at the same thread count).

Under torchrun (`ranks` from synth.distributed.init) the student and the aligners train inside one
DistributedDataParallel wrapper (`Distiller`; the teacher stays outside, under no_grad); each process takes
`batch_size` images of its DistributedSampler share per step, so the effective batch is batch_size x world_size
and lr = base lr x effective batch / 512. Every rank keeps its own RNG stream (augmentations, Mixup, drop path)
and the checkpoint holds each rank's RNG state, so a resume with the same number of processes is exact too.
Rank 0 alone writes files; every rank reads the checkpoint on --resume.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from dfkd.data.image_folder import open_image_folder
from dfkd.distill.batch import Batch, BatchPrep
from dfkd.distill.build import setup
from dfkd.distill.config import DistillConfig
from dfkd.distill.data import make_loader, set_transform
from dfkd.distill.distiller import for_stage
from dfkd.distill.output import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Output
from dfkd.distill.rng import rank_seed, rng_state, seed_all, set_rng_state
from dfkd.distill.transforms import eval_transform
from synth.distributed import Ranks
from synth.errors import UserError
from synth.runtime import Progress, available_cores, resolve_device, use_threads
from synth.teacher import state_dict_sha256

# settings a run may be resumed with changed: they do not change what is trained (threads: up to float rounding)
RESUME_FREE = ("resume", "workers", "threads", "device", "val_data", "val_every")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
               stage: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step of `model` (a Distiller or its DDP wrapper) on a prepared batch (bf16 autocast on CUDA);
    returns the loss and its parts, detached (no host sync)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if batch.inputs.is_cuda else nullcontext()
    with autocast:
        loss, parts = model(batch.inputs, batch.target, stage, batch.stored_probs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), parts


@torch.no_grad()
def evaluate(student: nn.Module, loader, prep: BatchPrep, ranks: Optional[Ranks] = None) -> float:
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


def _check_resume(saved: dict, config: DistillConfig) -> None:
    now = asdict(config)
    for key in sorted(set(saved) | set(now)):
        if key not in RESUME_FREE and saved.get(key) != now.get(key):
            raise UserError(f"cannot resume: the checkpoint was made with {key}={saved.get(key)!r}, "
                            f"now {key}={now.get(key)!r}; use the same settings or another --out")


def _check_world(state: dict, world_size: int, batch_size: int) -> None:
    """A checkpoint resumes only with the number of processes it was made with (that fixes the effective batch,
    the learning rate, the steps per epoch and each rank's share of the data and RNG states)."""
    saved = state.get("world_size", 1)
    if saved != world_size:
        raise UserError(f"cannot resume: the checkpoint was made with {saved} process(es) (effective batch "
                        f"{saved * batch_size}), now {world_size}; launch the same number of processes "
                        "or use another --out")


def distill(config: DistillConfig, out: str | Path, progress: Optional[Progress] = None,
            on_epoch: Optional[Callable[[dict], None]] = None, ranks: Optional[Ranks] = None) -> dict[str, Any]:
    """Train the student (stage 1 with early KD, then stage 2 without) and write its files to `out`.

    Under torchrun pass `ranks` (synth.distributed.init): DistributedDataParallel over ranks.world_size processes;
    every rank returns the summary, rank 0 alone writes files (and should alone report).
    """
    progress = progress or Progress()
    ranks = ranks or Ranks()
    started = time.time()
    # 1. Every rank checks the settings, reads the checkpoint and builds the run; all must succeed.
    error = None
    try:
        config.validate()
        threads = use_threads(config.threads)
        device = ranks.local_device(resolve_device(config.device))
        output = Output(out, main=ranks.rank == 0)
        saved = output.prepare(config.resume)
        if saved is not None:
            _check_resume(saved["config"], config)
            _check_world(saved, ranks.world_size, config.batch_size)
        elif config.resume:
            progress.message(f"no checkpoint in '{out}' yet; starting a fresh run")
        if ranks.distributed and ranks.local_world_size * threads > available_cores():
            progress.message(f"note: {ranks.local_world_size} processes x {threads} threads exceed this machine's "
                             f"{available_cores()} cores; set --threads")
        seed_all(config.seed)
        run = setup(config, device, progress, ranks.world_size)
        student, optimizer, scheduler, steps = run.student, run.optimizer, run.scheduler, run.steps
        if ranks.distributed:  # the same initial weights on every rank; then each its own augmentations, drop path
            seed_all(rank_seed(config.seed, ranks.rank))
        start, updates = 0, 0
        if saved is not None:
            student.load_state_dict(saved["student"])
            run.aligners.load_state_dict(saved["aligners"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            start, updates = saved["epoch"], saved["updates"]
            set_rng_state(saved["rng_ranks"][ranks.rank] if ranks.distributed else saved["rng"])
            progress.message(f"resuming after epoch {start} of {config.epochs}")

        val_loader = None
        if config.val_data:
            cfg = student.pretrained_cfg
            val_set = open_image_folder(config.val_data, run.num_classes)
            set_transform(val_set, eval_transform(run.size, cfg.get("crop_pct", 1.0),
                                                  cfg.get("interpolation", "bicubic")))
            val_loader = make_loader(val_set, config.batch_size, config.workers, train=False, seed=config.seed,
                                     rank=ranks.rank, world_size=ranks.world_size)
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
        error = exc
    ranks.check_all(error)
    if ranks.distributed:  # e.g. an --out that is not shared: rank 0 would resume while another rank starts afresh
        error = None
        seen = ranks.all_gather(start)
        if any(epoch != seen[0] for epoch in seen):
            error = UserError(f"the ranks see different checkpoints in '{out}' (epochs {seen}); --out must be a "
                              "directory every node shares")
        ranks.check_all(error)

    effective = run.effective_batch
    progress.start((config.epochs - start) * steps * effective)
    record: dict[str, Any] = saved["record"] if saved is not None else {}
    val_top1 = record.get("val_top1")
    model, model_stage = None, 0
    try:
        for epoch in range(start, config.epochs):
            stage = 1 if epoch < config.stage1 else 2
            if run.block_taps is not None:
                run.block_taps.enabled = stage == 1
            if stage != model_stage:
                model = None  # let the previous stage's DDP wrapper go before the next one is made
                model, model_stage = for_stage(run.model, stage, ranks, device), stage
            loader = make_loader(run.dataset, config.batch_size, config.workers, train=True, seed=config.seed,
                                 epoch=epoch, pin_memory=device.type == "cuda", rank=ranks.rank,
                                 world_size=ranks.world_size)
            sums = torch.zeros(4, device=device)
            epoch_start, shown = time.time(), 0
            for step, (images, labels, *logits) in enumerate(loader, 1):
                batch = run.prep(images, labels, logits[0] if logits else None)
                loss, parts = train_step(model, optimizer, batch, stage)
                updates += 1
                scheduler.step_update(updates)
                sums += torch.stack([loss, parts["cls"], parts["dist"], parts["hid"]])
                if step % 10 == 0 or step == steps:
                    progress.advance((step - shown) * effective,
                                     {"epoch": epoch + 1, "stage": stage, "loss": float(sums[0]) / step})
                    shown = step
            seconds = time.time() - epoch_start
            means = (sums / steps).tolist()
            if ranks.distributed:  # the mean over every rank's batches
                means = [sum(values) / ranks.world_size for values in zip(*ranks.all_gather(means))]
            record = {"epoch": epoch + 1, "stage": stage, "loss": means[0], "cls": means[1], "dist": means[2],
                      "hid": means[3], "lr": optimizer.param_groups[0]["lr"],
                      "img_s": round(steps * effective / seconds, 2), "seconds": round(seconds, 2)}
            if val_loader is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                val_top1 = record["val_top1"] = evaluate(student, val_loader, run.prep, ranks)
            rng = {"rng": rng_state()}
            if ranks.distributed:  # each rank's own stream, for an exact resume
                rng["rng_ranks"] = ranks.all_gather(rng["rng"])
            output.save_checkpoint({
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch + 1, "stage": stage,
                "updates": updates, "student": student.state_dict(), "aligners": run.aligners.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng,
                "world_size": ranks.world_size, "record": record, "config": asdict(config)})
            output.log(record)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        progress.close()
    model = None
    hashes = ranks.all_gather(state_dict_sha256(student.state_dict()))
    if any(h != hashes[0] for h in hashes):  # DDP keeps the replicas equal; anything else is a bug, not a result
        raise RuntimeError(f"the processes ended with different student weights (sha256 {hashes}); "
                           "student.pth was not written")
    output.export_student(student, {
        "model": config.student, "num_classes": run.num_classes, "input_size": run.size, "mean": list(run.mean),
        "std": list(run.std), "epochs": config.epochs, "model_kwargs": config.model_kwargs()})
    return {"out": str(out), "student": str(output.student), "student_json": str(output.student_json),
            "checkpoint": str(output.checkpoint), "metrics": str(output.metrics), "model": config.student,
            "num_classes": run.num_classes, "images": len(run.dataset), "epochs": config.epochs,
            "stage1_epochs": config.stage1, "distillation": config.loss.distillation, "hidden_kd": bool(run.pairs),
            "pairs": [f"{b}:{t}" for b, t in run.pairs], "final_loss": record.get("loss"), "val_top1": val_top1,
            "world_size": ranks.world_size, "batch_size": config.batch_size, "effective_batch": effective,
            "lr": config.optim.lr * effective / 512, "weights_sha256": hashes,
            "seconds": round(time.time() - started, 2)}


