"""Distillation settings (the `distill:` section of a recipe, the options of `dfkd distill`); defaults are DeiT's /
DearKD's ImageNet recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from synth.common.errors import UserError
from synth.common.settings import (
    check_choices,
    check_device,
    check_teacher_options,
    device_setting,
    setting,
    student_kwargs_setting,
    teacher_kwargs_setting,
    teacher_setting,
    teacher_weights_setting,
    threads_setting,
    trust_pickle_setting,
)
from synth.teachers.preprocessing import STATS_TEXT

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
KINDS = ("function_matching", "hard", "soft", "stored")  # distillation types (dfkd.distill.losses)


@dataclass
class LossConfig:
    """Distillation type and loss weights (docs/method.md, "Distillation: two stages")."""

    distillation: str = setting(
        "hard",
        flag=True,
        choices=KINDS,
        help="function_matching: both heads match the teacher's distribution (KL at tau) on "
        "the very mixed view they train on, labels unused (the data-free default); hard: "
        "CE to the teacher's argmax; soft: KL at tau on the distillation head; stored: "
        "the shards' teacher logits, no teacher run (hidden KD off).",
    )
    tau: float = setting(1.0, help="Temperature of soft/function_matching/stored distillation.", flag=True)
    w_cls: float = setting(1.0, help="Weight of the class-head term.", flag=True)
    w_dist: float = setting(1.0, help="Weight of the distillation-head term.")
    a_hid: float = setting(1.0, help="Weight of the hidden-feature MSE (0: off).", flag=True)
    pairs: list[str] = setting(
        help="Hidden KD pairs block:stage, e.g. 7:3,3:2.",
        flag=True,
        factory=list,
        default_text="last MHCA block with the teacher stage whose stride matches the patch size",
    )


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay; lr is per 512 images (scaled by batch_size / 512, as DeiT)."""

    opt: str = setting("adamw", help="timm optimizer name.")
    lr: float = setting(5e-4, help="Learning rate per 512 images (scaled by effective batch/512).", flag=True)
    weight_decay: float = setting(0.05, help="AdamW weight decay.", flag=True)
    warmup_epochs: float = setting(5.0, help="Linear warm-up epochs.", flag=True)
    warmup_lr: float = setting(1e-6, help="Learning rate at the start of the warm-up.")
    min_lr: float = setting(1e-5, help="Final cosine learning rate.", flag=True)


@dataclass
class AugmentConfig:
    """DeiT's augmentations, batched on the training device (dfkd.distill.inputs.augment); small-image recipes turn them
    down."""

    rand_augment: Optional[str] = setting("rand-m9-mstd0.5-inc1", help="timm RandAugment string, or none.", flag=True)
    color_jitter: float = setting(0.3, help="Colour jitter strength (timm applies it only without RandAugment).")
    scale: tuple[float, float] = setting((0.08, 1.0), help="RandomResizedCrop area range.")
    hflip: float = setting(0.5, help="Horizontal flip probability.", flag=True)
    grayscale: float = setting(0.0, help="Probability of a grayscale copy (teachers of grayscale data).", flag=True)
    interpolation: str = setting(
        "bicubic", choices=INTERPOLATIONS, help="Interpolation of the crop's resize and RandAugment's warps."
    )
    mixup: float = setting(0.8, help="Mixup alpha (0: off).", flag=True)
    cutmix: float = setting(1.0, help="CutMix alpha (0: off).", flag=True)
    mix_prob: float = setting(1.0, help="Probability that a batch is mixed.", flag=True)
    switch_prob: float = setting(0.5, help="Probability of CutMix instead of Mixup when both are on.")
    reprob: float = setting(0.25, help="Random erasing probability.", flag=True)
    smoothing: float = setting(0.1, help="Label smoothing.", flag=True)

    def __post_init__(self) -> None:
        if self.rand_augment == "none":  # the word users type for "off"
            self.rand_augment = ""

    @property
    def mixing(self) -> bool:
        """True when Mixup or CutMix is on."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass
class DistillConfig:
    """Everything `dfkd distill` needs."""

    shards: Optional[str] = setting(
        None,
        flag=True,
        help="Synthesized shard directory to train on; several sets of "
        "the same teacher combine as one: a,b (comma-separated).",
    )
    images: Optional[str] = setting(
        None,
        flag=True,
        path="dir",
        help="Real image folder (<dir>/<class>/<image>; folders named by class id or ImageNet WNID) instead of shards.",
    )
    subset: float = setting(1.0, help="Seeded class-stratified fraction of the training images.", flag=True)
    subset_seed: int = setting(0, help="Seed of the subset.", flag=True)
    val_data: Optional[str] = setting(None, help="Real image folder for top-1 validation.", flag=True, path="dir")
    val_every: int = setting(1, help="Validate every N epochs (and after the last).", flag=True)
    class_map: Optional[str] = setting(
        None,
        flag=True,
        path="file",
        help="Class id of each folder of --images / --val-data: JSON {folder: id}, 'folder id' lines, or one "
        "folder per line (line k is class k).",
    )
    teacher: Optional[str] = teacher_setting()
    teacher_weights: Optional[str] = teacher_weights_setting()
    teacher_kwargs: Optional[Union[str, dict]] = teacher_kwargs_setting()
    trust_pickle: bool = trust_pickle_setting()
    allow_other_teacher: bool = setting(
        False,
        flag=True,
        help="Distill shards with another teacher than the one that made them (sha256 of the weights differ).",
    )
    student: str = setting(
        "dearkd_tiny_patch16_224",
        flag=True,
        help="timm student with a distillation head, e.g. dearkd_tiny_patch16_224 (see timm.list_models('dearkd*')), "
        "or your own network as module:factory or file.py:factory (this imports and runs that code; one head, 1 or 3 "
        "input channels; hidden-layer KD is off for it).",
    )
    student_kwargs: Optional[Union[str, dict]] = student_kwargs_setting()
    student_mean: Optional[Union[str, list[float]]] = setting(
        None, flag=True, help=f"Your own student's input mean: {STATS_TEXT}.", default_text="the teacher's"
    )
    student_std: Optional[Union[str, list[float]]] = setting(
        None, flag=True, help=f"Your own student's input std: {STATS_TEXT}.", default_text="the teacher's"
    )
    num_mhca: Optional[int] = setting(None, help="MHCA blocks of the student.", flag=True, default_text="the model's")
    locality_strength: Optional[float] = setting(
        None, help="MHCA local-init strength alpha (0: plain MHSA start).", flag=True
    )
    input_size: Optional[int] = setting(
        None,
        help="Student input px, a multiple of its patch (your own student: any size it takes).",
        flag=True,
        default_text="the model's; your own student: the shards'",
    )
    drop_path: float = setting(0.1, help="Student stochastic depth rate.", flag=True)
    epochs: int = setting(300, help="Total epochs.", flag=True)
    stage1_epochs: float = setting(
        5 / 6, help="Stage-1 epochs: a count, or a fraction of --epochs below 1.", flag=True, default_text="5/6"
    )
    batch_size: int = setting(
        256,
        flag=True,
        help="Images per step and process (under torchrun the effective batch is this x the number of processes).",
    )
    workers: int = setting(4, help="DataLoader worker processes.", flag=True)
    seed: int = setting(0, help="Seed.", flag=True)
    threads: int = threads_setting()
    device: str = device_setting()
    resume: bool = setting(False, help="Continue from out/checkpoint.pt.", flag=True)
    loss: LossConfig = setting(factory=LossConfig, help="Distillation type and loss weights.")
    optim: OptimConfig = setting(factory=OptimConfig, help="Optimiser and learning-rate schedule.")
    augment: AugmentConfig = setting(factory=AugmentConfig, help="Training augmentations.")

    def validate(self) -> None:
        """Check settings that need no files."""
        if (self.shards is None) == (self.images is None):
            raise UserError("give exactly one training source: --shards DIR (synthesized) or --images DIR (real)")
        check_teacher_options(self)
        check_student_options(self)
        check_choices(self.loss, "loss")
        check_choices(self.augment, "augment")
        if self.loss.distillation == "stored" and self.shards is None:
            raise UserError("stored distillation reads teacher logits from shards; it needs --shards, not --images")
        if self.loss.distillation != "stored" and not self.teacher:
            raise UserError(f"{self.loss.distillation} distillation needs --teacher (or use --distillation stored)")
        checks = [
            (0 < self.subset <= 1, f"subset must be in (0, 1], not {self.subset}"),
            (self.epochs >= 1, f"epochs must be >= 1, not {self.epochs}"),
            (
                self.stage1_epochs >= 0
                and (self.stage1_epochs < 1 or self.stage1_epochs == int(self.stage1_epochs))
                and self.stage1_epochs <= self.epochs,
                f"stage1_epochs must be a fraction below 1 or a whole number of epochs up to {self.epochs}, "
                f"not {self.stage1_epochs}",
            ),
            (self.batch_size >= 2, f"batch_size must be >= 2, not {self.batch_size}"),
            (
                not (self.augment.mixing and self.batch_size % 2),
                f"batch_size must be even with Mixup/CutMix on (timm mixes image i with -1-i), not {self.batch_size}",
            ),
            (self.val_every >= 1, f"val_every must be >= 1, not {self.val_every}"),
            (self.workers >= 0 and self.threads >= 0, "workers and threads must be >= 0"),
            (self.loss.tau > 0, f"tau must be > 0, not {self.loss.tau}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        check_device(self.device)
        self._check_numbers()
        if self.augment.rand_augment:  # last: it imports kornia and torch, which the checks above need not wait for
            from dfkd.distill.inputs.rand_augment import parse

            parse(self.augment.rand_augment)

    def _check_numbers(self) -> None:
        """Refuse non-finite or out-of-range optimiser numbers as typed (before any batch scaling)."""
        optim = self.optim
        for name, value, least in (
            ("lr", optim.lr, None),
            ("min-lr", optim.min_lr, 0),
            ("warmup-lr", optim.warmup_lr, 0),
            ("weight-decay", optim.weight_decay, 0),
            ("warmup-epochs", optim.warmup_epochs, 0),
        ):
            if not math.isfinite(value) or (least is None and value <= 0) or (least is not None and value < least):
                accepted = "a finite number > 0" if least is None else f"a finite number >= {least}"
                raise UserError(f"{name} {value} is not accepted; give {accepted}")
        for name, value in (("tau", self.loss.tau), ("a-hid", self.loss.a_hid), ("drop-path", self.drop_path)):
            if not math.isfinite(value) or value < 0:
                raise UserError(f"{name} {value} is not accepted; give a finite number >= 0")

    @property
    def stage1(self) -> int:
        """Number of stage-1 epochs."""
        return round(self.stage1_epochs * self.epochs) if self.stage1_epochs < 1 else int(self.stage1_epochs)

    @property
    def hidden_kd(self) -> bool:
        """Whether the hidden-feature term is on (needs a teacher forward, so not with stored logits)."""
        return self.loss.distillation != "stored" and self.loss.a_hid > 0 and self.stage1 > 0

    def model_kwargs(self) -> dict:
        """timm.create_model keyword arguments that change the student's architecture (kept in student.json)."""
        return {k: v for k, v in {"num_mhca": self.num_mhca, "img_size": self.input_size}.items() if v is not None}


def check_student_options(config: DistillConfig) -> None:
    """The student options that need no files: a timm student takes no student_kwargs/mean/std, a student from the
    user's code no DearKD settings nor --pairs (hidden-layer KD needs a DearKD student's block taps)."""
    from synth.teachers.preprocessing import parse_stats
    from synth.teachers.user_code import is_code_spec, parse_code_spec, parse_kwargs

    kwargs = parse_kwargs(config.student_kwargs, "student_kwargs")
    stats = parse_stats(config.student_mean, "student_mean", 0), parse_stats(config.student_std, "student_std", 1)
    if not is_code_spec(config.student):
        given = [n for n, v in (("student_kwargs", kwargs), ("student_mean", stats[0]), ("student_std", stats[1])) if v]
        if given:
            raise UserError(
                f"{', '.join(given)} is for your own student (module:factory or file.py:factory), not timm's "
                f"{config.student}"
            )
        return
    parse_code_spec(config.student)
    dearkd = [
        n for n, v in (("num_mhca", config.num_mhca), ("locality_strength", config.locality_strength)) if v is not None
    ]
    if dearkd:
        raise UserError(f"{', '.join(dearkd)} is for a DearKD student, not for your own {config.student}")
    if config.loss.pairs:
        raise UserError(
            f"--pairs needs a DearKD student's block taps; hidden-layer KD is off for your own student {config.student}"
        )
    if config.input_size is not None and config.input_size < 4:
        raise UserError(f"input_size must be at least 4 px, not {config.input_size}")


def stage_of(epoch: int, config: DistillConfig) -> int:
    """The training stage of the (0-based) `epoch`: 1 for the first `config.stage1` epochs, then 2 (see `distils`)."""
    return 1 if epoch < config.stage1 else 2


def distils(stage: int) -> bool:
    """What a stage turns on. Stage 1 distils: the teacher's predictions (or the shards' stored ones) are the
    targets and, with hidden KD, the student's block taps feed aligners that learn. Stage 2 trains on the labels
    alone: no teacher forward, the block taps off, the aligners frozen."""
    return stage == 1


def rescale_epochs(recipe: dict, overrides: dict) -> tuple[dict, Optional[str]]:
    """Shrinking or stretching a recipe with --epochs: the recipe's stage-1 epochs (a whole count) and warm-up
    epochs keep their share of the run, unless they are given on the command line too. Returns the extra overrides
    and a one-line note saying what changed (None when nothing did)."""
    old, new = recipe.get("epochs", DistillConfig.epochs), overrides.get("epochs")
    if not _is_number(old) or not _is_number(new) or new == old or old <= 0:
        return {}, None
    optim = recipe.get("optim")
    counts = {
        "stage1_epochs": recipe.get("stage1_epochs"),
        "optim.warmup_epochs": optim.get("warmup_epochs") if isinstance(optim, dict) else None,
    }
    scaled = {
        name: round(value * new / old) if name == "stage1_epochs" else value * new / old
        for name, value in counts.items()
        if name not in overrides and _is_number(value) and (name != "stage1_epochs" or value >= 1)
    }
    if not scaled:
        return {}, None
    changes = ", ".join(f"{name} {counts[name]:g} -> {value:.3g}" for name, value in scaled.items())
    flags = " / ".join("--" + name.split(".")[-1].replace("_", "-") for name in scaled)
    return (
        scaled,
        f"note: --epochs {new} keeps the recipe's proportions of {old} epochs: {changes} (set {flags} to choose)",
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
