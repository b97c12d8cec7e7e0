"""Distillation settings (the `distill:` section of a recipe); defaults are DeiT's / DearKD's ImageNet recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from dfkd.distill.losses import KINDS
from synth.errors import UserError


@dataclass
class LossConfig:
    """Distillation type and loss weights (docs/method.md, "Distillation: two stages")."""

    distillation: str = "hard"
    tau: float = 1.0
    w_cls: float = 1.0
    w_dist: float = 1.0
    a_hid: float = 1.0
    pairs: list[str] = field(default_factory=list)  # "block:stage"; empty: the last MHCA block + stride-matched stage


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay; lr is per 512 images (scaled by batch_size / 512, as DeiT)."""

    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5


@dataclass
class AugmentConfig:
    """DeiT's augmentations (timm.data); small-image recipes turn them down."""

    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.3  # timm applies it only without RandAugment
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    grayscale: float = 0.0  # probability of a grayscale copy (helps when the teacher's data were grayscale)
    interpolation: str = "bicubic"
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    reprob: float = 0.25
    smoothing: float = 0.1

    @property
    def mixing(self) -> bool:
        """True when Mixup or CutMix is on."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass
class DistillConfig:
    """Everything `dfkd distill` needs."""

    shards: Optional[str] = None
    images: Optional[str] = None
    subset: float = 1.0
    subset_seed: int = 0
    val_data: Optional[str] = None
    val_every: int = 1
    teacher: Optional[str] = None
    teacher_weights: Optional[str] = None
    student: str = "dearkd_tiny_patch16_224"
    num_mhca: Optional[int] = None
    locality_strength: Optional[float] = None
    input_size: Optional[int] = None
    drop_path: float = 0.1
    epochs: int = 300
    stage1_epochs: float = 5 / 6  # below 1: a fraction of epochs; else a count (250 of 300)
    batch_size: int = 256
    workers: int = 4
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    resume: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        """Check settings that need no files."""
        if (self.shards is None) == (self.images is None):
            raise UserError("give exactly one training source: --shards DIR (synthesized) or --images DIR (real)")
        if self.loss.distillation not in KINDS:
            raise UserError(f"distillation '{self.loss.distillation}' is not one of {', '.join(KINDS)}")
        if self.loss.distillation == "stored" and self.shards is None:
            raise UserError("stored distillation reads teacher logits from shards; it needs --shards, not --images")
        if self.loss.distillation != "stored" and not self.teacher:
            raise UserError(f"{self.loss.distillation} distillation needs --teacher (or use --distillation stored)")
        checks = [
            (0 < self.subset <= 1, f"subset must be in (0, 1], not {self.subset}"),
            (self.epochs >= 1, f"epochs must be >= 1, not {self.epochs}"),
            (self.stage1_epochs >= 0 and (self.stage1_epochs < 1 or self.stage1_epochs == int(self.stage1_epochs))
             and self.stage1_epochs <= self.epochs,
             f"stage1_epochs must be a fraction below 1 or a whole number of epochs up to {self.epochs}, "
             f"not {self.stage1_epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2, not {self.batch_size}"),
            (not (self.augment.mixing and self.batch_size % 2),
             f"batch_size must be even with Mixup/CutMix on (timm mixes image i with -1-i), not {self.batch_size}"),
            (self.val_every >= 1, f"val_every must be >= 1, not {self.val_every}"),
            (self.workers >= 0 and self.threads >= 0, "workers and threads must be >= 0"),
            (self.loss.tau > 0, f"tau must be > 0, not {self.loss.tau}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device '{self.device}' is not one of auto, cpu, cuda, cuda:N"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

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
