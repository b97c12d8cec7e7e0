"""Setting up a distillation: the data, the teacher, the student, hidden-feature KD, the loss, the optimiser and
its schedule. Under DDP each process takes `batch_size` images per step, so the effective batch is batch_size x
world_size and lr = base lr x effective batch / 512."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch.utils.data import Dataset

from dfkd.data.image_folder import open_image_folder
from dfkd.distill.config import DistillConfig
from dfkd.distill.distiller import Distiller
from dfkd.distill.inputs.batch import BatchPrep
from dfkd.distill.inputs.decode import decode, folder_transform
from dfkd.distill.inputs.loaders import open_shards, set_transform, shard_roots, subset
from dfkd.distill.losses import DistillationLoss
from dfkd.distill.own_student import OwnStudent, build_own_student, is_own, own_input
from dfkd.distill.taps import BlockTaps, TeacherTaps, default_block, default_stage, parse_pairs, teacher_stages
from dfkd.models import Aligner  # importing dfkd.models registers the DearKD students with timm
from synth.common.errors import UserError
from synth.common.runtime import Progress
from synth.teachers.sources import load_teacher, teacher_options, with_recorded_preprocessing
from synth.teachers.teacher import Teacher


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


def setup(
    config: DistillConfig,
    device: torch.device,
    progress: Optional[Progress] = None,
    world_size: int = 1,
    preloaded: Optional[Teacher] = None,
) -> Run:
    """Open the data, load the teacher, build student, aligners, loss, optimiser and schedule; check they fit.
    Each of `world_size` DDP processes takes config.batch_size images per step; lr and steps per epoch follow."""
    progress = progress or Progress()
    stored = config.loss.distillation == "stored"
    teacher = None if stored else preloaded or load_distillation_teacher(config, device)
    dataset, num_classes, resolution = open_data(config, teacher, progress)
    student, size, mean, std = make_student(config, num_classes, resolution, teacher, progress)
    student = student.to(device)
    if resolution is not None and resolution != size:
        progress.message(f"resizing {resolution}-px shard images to the student's {size} px")
    if stored:
        progress.message(
            "stored distillation: the shards' teacher logits are the targets; no teacher runs, "
            "so hidden-feature KD is off"
        )
    set_transform(dataset, folder_transform(size, config.augment.interpolation) if config.images else None)
    effective_batch, steps = config.batch_size * world_size, steps_per_epoch(config, len(dataset), world_size)
    pairs, taps, block_taps, aligners = hidden_kd(config, teacher, student, size, progress)
    for note in teacher.notes if teacher is not None else ():  # once the inputs are checked
        progress.message(note)
    criterion = DistillationLoss(
        config.loss.distillation,
        taps,
        aligners,
        tau=config.loss.tau,
        w_cls=config.loss.w_cls,
        w_dist=config.loss.w_dist,
        a_hid=config.loss.a_hid,
        renorm=(mean, std, teacher.mean, teacher.std) if teacher is not None else None,
    ).to(device)
    optimizer, scheduler = make_optimizer(config, student, aligners, effective_batch, steps)
    return Run(
        dataset,
        num_classes,
        size,
        mean,
        std,
        student,
        aligners,
        pairs,
        block_taps,
        criterion,
        BatchPrep(mean, std, num_classes, config.augment, device, size, tau=config.loss.tau, seed=config.seed),
        optimizer,
        scheduler,
        steps,
        Distiller(student, criterion, block_taps),
        effective_batch,
    )


def steps_per_epoch(config: DistillConfig, images: int, world_size: int) -> int:
    """Optimiser steps per epoch (each rank's DistributedSampler share drops the tail); refused when none."""
    steps = images // world_size // config.batch_size
    if steps == 0:
        raise UserError(
            f"batch size {config.batch_size} is larger than the {images} training images"
            if world_size == 1
            else f"batch size {config.batch_size} per process x {world_size} "
            f"processes is larger than the {images} training images"
        )
    return steps


def load_distillation_teacher(config: DistillConfig, device: torch.device) -> Teacher:
    """The teacher of a distillation, as its shards were made: where no mean/std is stated, those the shards
    recorded (synth.teachers.sources.with_recorded_preprocessing)."""
    options = teacher_options(config)
    if config.shards is not None:
        options = with_recorded_preprocessing(config.teacher, options, shards_teacher_record(config.shards))
    return load_teacher(config.teacher, device=device, options=options)


def shards_teacher_record(shards: str) -> dict:
    """The teacher description the (first) shard directory recorded; {} when it cannot be read (open_data then says
    why)."""
    from synth.shards.format import ShardDataset

    roots = shard_roots(shards)
    try:
        return dict(ShardDataset(roots[0]).teacher) if roots else {}
    except Exception:  # noqa: BLE001 - reported by open_data with its own message
        return {}


def open_data(
    config: DistillConfig, teacher: Optional[Teacher], progress: Optional[Progress] = None
) -> tuple[Dataset, int, Optional[int]]:
    """The training images (shards or an image folder, subset as configured), their class count and the shards'
    resolution (None for an image folder)."""
    if config.shards is not None:
        dataset = open_shards(config.shards, stored_logits=config.loss.distillation == "stored")
        num_classes, resolution = dataset.num_classes, dataset.resolution
        if teacher is not None and teacher.num_classes != num_classes:
            raise UserError(
                f"teacher {config.teacher} has {teacher.num_classes} classes but the shards in "
                f"'{config.shards}' were made for {num_classes}; use the teacher they were made with"
            )
        if teacher is not None:
            check_shards_teacher(config, dataset.teacher, teacher, progress or Progress())
    else:
        dataset = open_image_folder(config.images, teacher.num_classes, class_map=config.class_map, loader=decode)
        num_classes, resolution = teacher.num_classes, None
    return subset(dataset, config.subset, config.subset_seed), num_classes, resolution


def check_shards_teacher(config: DistillConfig, made_by: dict, teacher: Teacher, progress: Progress) -> None:
    """Refuse a teacher whose weights (sha256) differ from those the shards were made with, unless
    --allow-other-teacher says so on purpose (then one line notes it)."""
    recorded = made_by.get("weights_sha256")
    if recorded is None or recorded == teacher.weights_sha256:
        return
    difference = (
        f"the shards in '{config.shards}' were made by {made_by.get('spec')} (weights sha256 {recorded[:12]}), "
        f"not by {config.teacher} ({teacher.weights_sha256[:12]})"
    )
    if not config.allow_other_teacher:
        raise UserError(f"{difference}; use the teacher they were made with, or pass --allow-other-teacher")
    progress.message(f"note: {difference}; distilling with the other teacher as --allow-other-teacher asks")


def make_student(
    config: DistillConfig, num_classes: int, resolution: Optional[int], teacher: Optional[Teacher], progress: Progress
) -> tuple[nn.Module, int, tuple[float, ...], tuple[float, ...]]:
    """The student with its input size, mean and std: a timm student's own; for one from the user's code, as
    own_input says (one note line)."""
    if not is_own(config):
        student = build_student(config, num_classes)
        cfg = student.pretrained_cfg
        return student, student.patch_embed.img_size[0], tuple(cfg["mean"]), tuple(cfg["std"])
    if teacher is not None:
        stats = (teacher.mean, teacher.std, teacher.input_size)
    else:  # stored distillation: what the shards' teacher recorded
        record = shards_teacher_record(config.shards) if config.shards else {}
        stats = (record.get("mean", (0.5,)), record.get("std", (0.5,)), record.get("input_size", 32))
    size, mean, std, note = own_input(config, resolution, stats)
    student = build_own_student(config, num_classes, size)
    progress.message(note)
    return student, size, mean, std


def build_student(config: DistillConfig, num_classes: int) -> nn.Module:
    """The timm student with class and distillation heads, distilled training on; its input size checked."""
    if not timm.is_model(config.student):
        raise UserError(
            f"unknown student '{config.student}'; DearKD students: {', '.join(timm.list_models('dearkd*'))}"
        )
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
        raise UserError(
            f"student input {height}x{width} px cannot be reconciled with square images and its "
            f"{patch}-px patch grid; choose an input size that is a multiple of {patch}"
        )
    student.set_distilled_training(True)
    return student


def hidden_kd(
    config: DistillConfig,
    teacher: Optional[Teacher],
    student: nn.Module,
    size: int,
    progress: Optional[Progress] = None,
) -> tuple[list[tuple[int, int]], Optional[TeacherTaps], Optional[BlockTaps], nn.ModuleList]:
    """The (student block, teacher stage) pairs of hidden-feature KD, the teacher's taps (None: no teacher runs),
    the student's block taps and one aligner per pair; no pairs when hidden KD is off (always for a student from the
    user's code: it has no DearKD block taps; one note line says so)."""
    pairs: list[tuple[int, int]] = []
    taps = block_taps = None
    aligners = nn.ModuleList()
    if teacher is not None:
        stages = teacher_stages(teacher, size)
        if config.hidden_kd and isinstance(student, OwnStudent):
            (progress or Progress()).message(
                f"note: hidden-layer KD is off: it needs a DearKD student's block taps, and {config.student} is your "
                "own network (a_hid unused)"
            )
        elif config.hidden_kd:
            pairs = (
                parse_pairs(config.loss.pairs, len(student.blocks), len(stages))
                if config.loss.pairs
                else [(default_block(student), default_stage(stages, student.patch_embed.patch_size[0]))]
            )
            aligners = nn.ModuleList(
                Aligner(student.embed_dim, stages[t].channels, stages[t].hw, stages[t].nonnegative) for _, t in pairs
            )
            block_taps = BlockTaps(student, [b for b, _ in pairs])
        taps = TeacherTaps(teacher, [stages[t] for _, t in pairs])
    return pairs, taps, block_taps, aligners


def make_optimizer(
    config: DistillConfig, student: nn.Module, aligners: nn.ModuleList, effective_batch: int, steps: int
) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """timm's optimiser over the student and the aligners (no weight decay on biases, norms and a timm student's
    no_weight_decay set), lr scaled to the effective batch; a per-step cosine schedule with linear warm-up."""
    weight_decay = config.optim.weight_decay
    skip = () if isinstance(student, OwnStudent) else student.no_weight_decay()
    groups = param_groups_weight_decay(student, weight_decay, no_weight_decay_list=skip) + param_groups_weight_decay(
        aligners, weight_decay
    )
    optimizer = create_optimizer_v2(
        groups, config.optim.opt, lr=config.optim.lr * effective_batch / 512, weight_decay=weight_decay
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=config.epochs * steps,
        lr_min=config.optim.min_lr,
        warmup_t=round(config.optim.warmup_epochs * steps),
        warmup_lr_init=config.optim.warmup_lr,
        t_in_epochs=False,
    )
    return optimizer, scheduler
