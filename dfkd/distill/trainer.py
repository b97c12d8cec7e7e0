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

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from dfkd.data.image_folder import open_image_folder
from dfkd.distill.config import DistillConfig
from dfkd.distill.data import (
    Batch,
    BatchPrep,
    eval_transform,
    make_loader,
    open_shards,
    set_transform,
    subset,
    train_transform,
)
from dfkd.distill.losses import DistillationLoss
from dfkd.distill.taps import (
    BlockTaps,
    TeacherTaps,
    default_block,
    default_stage,
    parse_pairs,
    teacher_stages,
)
from dfkd.models import (
    Aligner,  # importing dfkd.models registers the DearKD students with timm
)
from synth.distributed import Ranks
from synth.errors import UserError
from synth.runtime import Progress, available_cores, resolve_device, use_threads
from synth.teacher import Teacher
from synth.teacher_sources import load_teacher
from synth.weights import state_dict_sha256

CHECKPOINT_FORMAT = "dfkd-distill-checkpoint"
CHECKPOINT_VERSION = 1
# settings a run may be resumed with changed: they do not change what is trained (threads: up to float rounding)
RESUME_FREE = ("resume", "workers", "threads", "device", "val_data", "val_every")


class Output:
    """Every file a run writes; only the main process (rank 0 under DDP) writes."""

    def __init__(self, root: str | Path, main: bool = True):
        self.root, self.main = Path(root), main
        self.checkpoint = self.root / "checkpoint.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.student = self.root / "student.pth"
        self.student_json = self.root / "student.json"

    def prepare(self, resume: bool) -> Optional[dict]:
        """The checkpoint to resume from (None: a fresh run); refuses to start over an existing one."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output '{self.root}' exists and is not a directory")
        if self.checkpoint.is_file() and not resume:
            raise UserError(f"'{self.checkpoint}' exists; pass --resume to continue it or choose another --out")
        if not (resume and self.checkpoint.is_file()):
            # results without a checkpoint belong to another run (or a copy): never overwrite them
            others = [p.name for p in (self.student, self.student_json, self.metrics) if p.exists()]
            if others:
                raise UserError(f"'{self.root}' holds {', '.join(others)} of another run but no checkpoint.pt to "
                                "resume; choose another --out (dfkd does not overwrite them)")
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, overwritten or foreign files
            raise UserError(f"cannot read '{self.checkpoint}' ({type(exc).__name__}); it is damaged: continue "
                            "from a copy or choose another --out") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
                or state.get("version", 0) > CHECKPOINT_VERSION:
            raise UserError(f"'{self.checkpoint}' is not a dfkd distill checkpoint this version can read")
        if self.main and self.metrics.is_file():  # drop records of an epoch that ran after the last checkpoint
            kept = [line for line in self.metrics.read_text().splitlines()
                    if line and json.loads(line)["epoch"] <= state["epoch"]]
            self._atomic_text(self.metrics, "".join(line + "\n" for line in kept))
        return state

    def save_checkpoint(self, state: dict) -> None:
        """Write checkpoint.pt atomically (tmp + os.replace), creating the directory on the first write."""
        if self.main:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.checkpoint)

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    def export_student(self, student: nn.Module, info: dict) -> None:
        """student.pth (a plain state_dict, loadable with timm.create_model(checkpoint_path=...)) and student.json."""
        if self.main:
            tmp = self.student.with_name(self.student.name + ".tmp")
            torch.save({k: v.detach().cpu() for k, v in student.state_dict().items()}, tmp)
            os.replace(tmp, self.student)
            self._atomic_text(self.student_json, json.dumps(info, indent=2) + "\n")

    @staticmethod
    def _atomic_text(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def build_student(config: DistillConfig, num_classes: int) -> nn.Module:
    """The timm student with class and distillation heads, distilled training on; its input size checked."""
    if not timm.is_model(config.student):
        raise UserError(f"unknown student '{config.student}'; DearKD students: "
                        f"{', '.join(timm.list_models('dearkd*'))}")
    kwargs = dict(config.model_kwargs(), drop_path_rate=config.drop_path)
    if config.locality_strength is not None:
        kwargs["locality_strength"] = config.locality_strength
    try:
        student = timm.create_model(config.student, num_classes=num_classes, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise UserError(f"cannot build student '{config.student}' with {kwargs}: {str(exc).splitlines()[0]}") from None
    if not hasattr(student, "set_distilled_training"):
        raise UserError(f"student '{config.student}' has no distillation head (use a dearkd_* or *_distilled model)")
    height, width = student.patch_embed.img_size
    patch = student.patch_embed.patch_size[0]
    if height != width or height % patch:
        raise UserError(f"student input {height}x{width} px cannot be reconciled with square images and its "
                        f"{patch}-px patch grid; choose an input size that is a multiple of {patch}")
    student.set_distilled_training(True)
    return student


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The torch, CUDA, numpy and python RNG states (as weights_only-loadable data)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


class Distiller(nn.Module):
    """The student and the loss (which holds the aligners) as one module whose forward returns the loss, so under
    DDP one wrapper all-reduces the gradients of the student and of the aligners. The teacher is no submodule
    (TeacherTaps is a plain object): it stays outside DDP, under no_grad."""

    def __init__(self, student: nn.Module, criterion: DistillationLoss, block_taps: Optional[BlockTaps] = None):
        super().__init__()
        self.student, self.criterion, self.block_taps = student, criterion, block_taps

    def forward(self, inputs: torch.Tensor, target: torch.Tensor, stage: int,
                stored_probs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached parts on one prepared batch."""
        outputs = self.student(inputs)
        tokens = self.block_taps.take() if self.block_taps is not None and stage == 1 else ()
        return self.criterion(inputs, outputs, target, stage, tokens, self.student.patch_embed.grid_size,
                              stored_probs)


def for_stage(model: Distiller, stage: int, ranks: Ranks, device: torch.device) -> nn.Module:
    """The module a stage trains through. The aligners learn in stage 1 only; in stage 2 they are frozen. Under
    DDP each stage gets its own wrapper over the parameters that learn in it, so every parameter it holds gets a
    gradient at every step: no `find_unused_parameters` graph search per step, and DDP's check stays strict."""
    for p in model.criterion.aligners.parameters():
        p.requires_grad_(stage == 1)
    if not ranks.distributed:
        return model
    # broadcast_buffers off: the students' buffers are constants (relative positions; no BN running statistics)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


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


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own RNG stream under DDP."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


@dataclass
class Run:
    """What a distillation trains with: data, student, aligners, loss, batch step, optimiser and schedule."""

    dataset: Dataset
    num_classes: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    student: nn.Module
    aligners: nn.ModuleList
    pairs: list[tuple[int, int]]
    block_taps: Optional[BlockTaps]
    criterion: DistillationLoss
    prep: BatchPrep
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    steps: int
    model: Distiller
    effective_batch: int


def setup(config: DistillConfig, device: torch.device, progress: Optional[Progress] = None,
          world_size: int = 1) -> Run:
    """Open the data, load the teacher, build student, aligners, loss, optimiser and schedule; check they fit.
    Each of `world_size` DDP processes takes config.batch_size images per step; lr and steps per epoch follow."""
    progress = progress or Progress()
    stored = config.loss.distillation == "stored"
    teacher: Optional[Teacher] = None if stored else load_teacher(config.teacher, config.teacher_weights, device)
    if config.shards is not None:
        dataset = open_shards(config.shards, stored_logits=stored)
        num_classes, resolution = dataset.num_classes, dataset.resolution
        if teacher is not None and teacher.num_classes != num_classes:
            raise UserError(f"teacher {config.teacher} has {teacher.num_classes} classes but the shards in "
                            f"'{config.shards}' were made for {num_classes}; use the teacher they were made with")
    else:
        dataset = open_image_folder(config.images, teacher.num_classes)
        num_classes, resolution = teacher.num_classes, None
    dataset = subset(dataset, config.subset, config.subset_seed)

    student = build_student(config, num_classes).to(device)
    size = student.patch_embed.img_size[0]
    mean, std = tuple(student.pretrained_cfg["mean"]), tuple(student.pretrained_cfg["std"])
    if resolution is not None and resolution != size:
        progress.message(f"resizing {resolution}-px shard images to the student's {size} px")
    if stored:
        progress.message("stored distillation: the shards' teacher logits are the targets; no teacher runs, "
                         "so hidden-feature KD is off")
    set_transform(dataset, train_transform(size, config.augment, mean))
    effective_batch = config.batch_size * world_size
    steps = len(dataset) // world_size // config.batch_size  # each rank's DistributedSampler share drops the tail
    if steps == 0:
        raise UserError(f"batch size {config.batch_size} is larger than the {len(dataset)} training images"
                        if world_size == 1 else f"batch size {config.batch_size} per process x {world_size} "
                        f"processes is larger than the {len(dataset)} training images")

    pairs: list[tuple[int, int]] = []
    taps = block_taps = None
    aligners = nn.ModuleList()
    if teacher is not None:
        stages = teacher_stages(teacher, size)
        if config.hidden_kd:
            pairs = parse_pairs(config.loss.pairs, len(student.blocks), len(stages)) if config.loss.pairs \
                else [(default_block(student), default_stage(stages, student.patch_embed.patch_size[0]))]
            aligners = nn.ModuleList(Aligner(student.embed_dim, stages[t].channels, stages[t].hw, stages[t].nonnegative)
                                     for _, t in pairs)
            block_taps = BlockTaps(student, [b for b, _ in pairs])
        taps = TeacherTaps(teacher, [stages[t] for _, t in pairs])
    criterion = DistillationLoss(
        config.loss.distillation, taps, aligners, tau=config.loss.tau, w_cls=config.loss.w_cls,
        w_dist=config.loss.w_dist, a_hid=config.loss.a_hid,
        renorm=(mean, std, teacher.mean, teacher.std) if teacher is not None else None).to(device)

    weight_decay = config.optim.weight_decay
    groups = param_groups_weight_decay(student, weight_decay, no_weight_decay_list=student.no_weight_decay()) \
        + param_groups_weight_decay(aligners, weight_decay)
    optimizer = create_optimizer_v2(groups, config.optim.opt, lr=config.optim.lr * effective_batch / 512,
                                    weight_decay=weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=config.epochs * steps, lr_min=config.optim.min_lr,
                                  warmup_t=round(config.optim.warmup_epochs * steps),
                                  warmup_lr_init=config.optim.warmup_lr, t_in_epochs=False)
    return Run(dataset, num_classes, size, mean, std, student, aligners, pairs, block_taps, criterion,
               BatchPrep(mean, std, num_classes, config.augment, device, tau=config.loss.tau), optimizer, scheduler,
               steps, Distiller(student, criterion, block_taps), effective_batch)


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
            seed_all(_rank_seed(config.seed, ranks.rank))
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


