"""Synthesis settings: the `synthesize:` section of a recipe and the options of `dfkd synthesize`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

from synth.common.errors import UserError
from synth.common.settings import (
    check_choices,
    check_device,
    check_teacher_options,
    device_setting,
    setting,
    teacher_kwargs_setting,
    teacher_setting,
    teacher_weights_setting,
    threads_setting,
    trust_pickle_setting,
)
from synth.teachers.preprocessing import Preprocessing

BN_NORMS = ("normalized", "paper")  # forms of the BN-statistics term (synth.inversion.terms.BNStatisticsLoss)
COMPRESSIONS = ("none", "lzf", "gzip")  # HDF5 compression of the images (synth.shards.writer)
ENGINES = ("pixels", "generator")  # how a unit's images are made (synth.run.image_engines)
GENERATOR_AUGMENTS = ("jitter", "crop")  # the generator engine's view of its images (synth.generator.adapt)
MAX_SHARD_IMAGES = 100_000  # a shard is assembled in memory before it is written


@dataclass
class LossWeights:
    """Weights of the synthesis objective: the papers' values, except the BN term, whose default is the normalized
    form (one weight for any teacher, see synth.inversion.terms.BNStatisticsLoss); bn_norm="paper" with bn=0.05 is
    DeepInversion's."""

    ce: float = setting(1.0, help="Cross-entropy weight.", flag="--a-ce")
    bn: float = setting(10.0, help="BN-statistics weight (0.05 is the paper's with --bn-norm paper).", flag="--a-bn")
    bn_first: float = setting(10.0, help="Multiplier of the first BN layer.", flag="--bn-first")
    bn_norm: str = setting(
        "normalized",
        flag=True,
        choices=BN_NORMS,
        help="normalized: each layer's distance relative to its running statistics, averaged "
        "over layers (one --a-bn fits any teacher); paper: DeepInversion's sum of absolute "
        "distances.",
    )
    tv: float = setting(1e-4, help="Total-variation prior weight.", flag="--a-tv")
    l2: float = setting(1e-5, help="L2 prior weight.", flag="--a-l2")
    ep: float = setting(50.0, help="Intra-divergence weight.", flag="--a-ep")
    ep_margin: float = setting(0.5, help="Intra-divergence margin m_ep.", flag=True)
    ep_form: str = setting(
        "saturating",
        flag=True,
        choices=("saturating", "unbounded"),
        help="Intra-divergence form: saturating mean max(0, m_ep - d) (stops at the margin) or "
        "unbounded -mean d (the paper's literal form; needs a small --a-ep).",
    )
    triplet: float = setting(0.5, help="Triplet weight.", flag="--a-triplet")
    triplet_margin: float = setting(0.5, help="Triplet margin.", flag=True)
    adi: float = setting(
        0.0,
        help="Weight of the competition term 1 - JS(teacher, student) (Adaptive DeepInversion; needs --student).",
        flag="--a-adi",
    )

    def validate(self) -> None:
        """Refuse an unknown intra-divergence form or negative weights."""
        check_choices(self, "losses")
        for name, value in asdict(self).items():
            if isinstance(value, float) and value < 0:
                raise UserError(f"losses.{name} must be >= 0, not {value}")


@dataclass
class Schedule:
    """Resolutions and iterations per stage (low to high), optimiser and augmentation settings."""

    resolutions: tuple[int, ...] = setting((112, 224), help="Stage resolutions, low to high.", flag=True)
    iterations: tuple[int, ...] = setting((2000, 2000), help="Iterations per stage.", flag=True)
    lr: float = setting(0.25, help="Adam learning rate.", flag=True)
    betas: tuple[float, ...] = setting((0.5, 0.9), help="Adam betas.")
    eps: float = setting(1e-8, help="Adam epsilon.")
    jitter: float = setting(
        30 / 224,
        flag=True,
        default_text="30/224, 30 px at 224",
        help="Largest random circular shift of the teacher's view, as a fraction of the "
        "resolution (small inputs of deep teachers need less: the digits recipe uses 1/32).",
    )
    flip: bool = setting(True, help="Random horizontal flips of the teacher's view.", flag="--flip/--no-flip")
    multires: str = setting(
        "upsample",
        flag=True,
        choices=("upsample", "pool"),
        help="upsample: optimise at low res then upsample; pool: optimise full res, pool it in early stages.",
    )
    lowres: int = setting(
        1,
        flag=True,
        added=True,
        help="Optimise each image at 1/lowres of the stage resolution and show the teacher its "
        "bilinear upsampling: a band limit that keeps images near the data of teachers "
        "trained on upsampled small images (the digits are 8x8: lowres 4 at 32 px).",
    )

    def validate(self) -> None:
        """Check stage lists and option values."""
        if not self.resolutions or len(self.resolutions) != len(self.iterations):
            raise UserError(
                f"schedule.resolutions {list(self.resolutions)} and schedule.iterations "
                f"{list(self.iterations)} must list the same number of stages (at least one)"
            )
        if list(self.resolutions) != sorted(self.resolutions) or min(self.resolutions) < 4:
            raise UserError(f"schedule.resolutions {list(self.resolutions)} must increase from low to high, each >= 4")
        if min(self.iterations) < 1:
            raise UserError(f"schedule.iterations {list(self.iterations)} must each be >= 1")
        check_choices(self, "schedule")
        if len(self.betas) != 2:
            raise UserError(f"schedule.betas must hold two numbers, not {list(self.betas)}")
        if self.lowres < 1 or min(self.resolutions) // self.lowres < 2:
            raise UserError(
                f"schedule.lowres {self.lowres} must be >= 1 and leave at least 2 px of the lowest "
                f"resolution {min(self.resolutions)}"
            )


@dataclass
class GeneratorSettings:
    """The generator engine (`--engine generator`, docs/method.md "The generator engine"): a class-conditional
    generator, adapted to each work unit in a few steps from a meta-learned initialisation (Fast-DFKD's Reptile)."""

    steps: int = setting(5, flag="--generator-steps", help="Adam steps of the generator per work unit.")
    lr: float = setting(1e-2, flag="--generator-lr", help="Adam learning rate of the generator's steps.")
    betas: tuple[float, ...] = setting((0.5, 0.999), help="Adam betas of the generator's steps.")
    meta: bool = setting(
        True,
        flag="--meta/--no-meta",
        help="Start each unit from the meta-learned initialisation (Reptile); --no-meta: every unit from the same "
        "seeded initialisation (the ablation).",
    )
    meta_lr: float = setting(
        1.0,
        flag="--meta-lr",
        help="Reptile step: the meta weights move this share of the way to each unit's adapted weights (1: they "
        "become them).",
    )
    warmup_units: int = setting(
        1, flag=True, help="The first units of each meta chain take --warmup-steps steps (with --meta)."
    )
    warmup_steps: int = setting(50, flag=True, help="Steps of each warm-up unit.")
    chains: int = setting(
        1,
        flag="--generator-chains",
        help="Independent meta chains (shard k belongs to chain k mod chains, one process each): the processes "
        "of a torchrun share the chains, so give at least as many as processes.",
    )
    noise_dim: int = setting(128, help="Noise (and label embedding) size of the generator.")
    noise_lr: float = setting(
        0.0,
        flag="--noise-lr",
        help="Adam learning rate of each unit's noise, optimised beside the generator's weights (Fast-DFKD's "
        "learned z); 0: the drawn noise stays fixed.",
    )
    width: int = setting(
        32, flag="--generator-width", help="Channels of the generator's last block (twice that before)."
    )
    augment: str = setting(
        "jitter",
        flag="--generator-augment",
        choices=GENERATOR_AUGMENTS,
        help="The teacher's view: jitter (the pixel engine's circular shift and flip) or crop (kornia's random "
        "crop of the zero-padded image and flip; the padding is the jitter).",
    )

    def validate(self) -> None:
        """Refuse counts below 1, rates outside their ranges and unknown choices."""
        check_choices(self, "generator")
        for name in ("steps", "warmup_steps", "chains", "noise_dim", "width"):
            if getattr(self, name) < 1:
                raise UserError(f"generator.{name} must be >= 1, not {getattr(self, name)}")
        if self.warmup_units < 0:
            raise UserError(f"generator.warmup_units must be >= 0, not {self.warmup_units}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"generator.lr must be a finite number > 0, not {self.lr}")
        if not (math.isfinite(self.noise_lr) and self.noise_lr >= 0):
            raise UserError(f"generator.noise_lr must be a finite number >= 0 (0: fixed noise), not {self.noise_lr}")
        if not (0 < self.meta_lr <= 1):
            raise UserError(
                f"generator.meta_lr must be in (0, 1] (1: the adapted weights themselves), not {self.meta_lr}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"generator.betas must be two numbers in [0, 1), not {list(self.betas)}")


@dataclass
class SynthesisConfig:
    """Everything `dfkd synthesize` needs; `identity()` is the part that changes the images."""

    teacher: Optional[str] = teacher_setting()
    teacher_weights: Optional[str] = teacher_weights_setting()
    teacher_kwargs: Optional[Union[str, dict]] = teacher_kwargs_setting()
    trust_pickle: bool = trust_pickle_setting()
    preprocessing: Preprocessing = setting(
        factory=Preprocessing, help="The teacher's input normalisation, size and class names, where you state them."
    )
    classes: Union[str, list[int]] = setting("all", help="Classes to synthesize: all, 0-99, or 1,5,7-9.", flag=True)
    per_class: int = setting(8, help="Images per class in total (a multiple of --images-per-class).", flag=True)
    classes_per_batch: int = setting(8, help="Classes in one batch (>= 2; divides the number of classes).", flag=True)
    images_per_class: int = setting(4, help="Images of each class in one batch (>= 2).", flag=True)
    units_per_shard: int = setting(16, help="Batches (work units) per shard file.", flag=True)
    schedule: Schedule = setting(factory=Schedule, help="Resolutions, iterations, optimiser and view augmentation.")
    losses: LossWeights = setting(factory=LossWeights, help="Weights of the synthesis objective.")
    engine: str = setting(
        "pixels",
        flag=True,
        choices=ENGINES,
        added=True,
        help="pixels: optimise every image (DeepInversion, the schedule's iterations); generator: adapt a "
        "meta-learned generator to each batch in --generator-steps steps (Fast-DFKD; far fewer teacher passes).",
    )
    generator: GeneratorSettings = setting(factory=GeneratorSettings, help="The generator engine's settings.")
    student: Optional[str] = setting(
        None,
        flag=True,
        path="file",
        help="Adaptive DeepInversion: a student.pth from `dfkd distill`; new images go "
        "where it still disagrees with the teacher (needs --a-adi). Its file and "
        "sha256 join the shard config.",
    )
    seed: int = setting(0, help="Global seed.", flag=True)
    threads: int = threads_setting("CPU threads (part of the config).")
    device: str = device_setting()
    compression: str = setting("none", help="HDF5 compression of the images.", flag=True, choices=COMPRESSIONS)
    store_logits: bool = setting(True, help="Store teacher logits.", flag="--logits/--no-logits")
    compile: bool = setting(False, help="torch.compile the teacher.", flag="--compile/--no-compile")

    def validate(self) -> None:
        """Check settings that need no teacher."""
        if not self.teacher:
            raise UserError("no teacher given: pass --teacher timm:<name>, torchvision:<name> or a teacher file")
        check_teacher_options(self)
        for name in ("classes_per_batch", "images_per_class"):
            if getattr(self, name) < 2:
                raise UserError(
                    f"{name} must be >= 2 (the intra-divergence and triplet losses need "
                    f"two classes and two images of each per batch), not {getattr(self, name)}"
                )
        if self.per_class < 1 or self.per_class % self.images_per_class:
            raise UserError(
                f"per_class {self.per_class} must be a positive multiple of images_per_class {self.images_per_class}"
            )
        if self.units_per_shard < 1:
            raise UserError(f"units_per_shard must be >= 1, not {self.units_per_shard}")
        check_choices(self)
        check_device(self.device)
        if self.threads < 0:
            raise UserError(f"threads must be >= 0 (0 = the idle cores), not {self.threads}")
        if bool(self.student) != (self.losses.adi > 0):
            raise UserError(
                "the competition term needs both a student (--student runs/x/student.pth) and a weight "
                f"(--a-adi > 0); got student {self.student!r} and a_adi {self.losses.adi}"
            )
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, not {self.seed}")
        self.losses.validate()
        self.schedule.validate()
        self.generator.validate()
        for name, value in [
            *(("losses." + k, v) for k, v in asdict(self.losses).items()),
            *(("schedule." + k, v) for k, v in asdict(self.schedule).items()),
        ]:
            for number in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise UserError(f"{name} must be a finite number, not {number}")
        if not self.schedule.lr > 0:
            raise UserError(f"schedule.lr (--lr) must be > 0, not {self.schedule.lr}")
        if not self.schedule.eps > 0 or not all(0 <= b < 1 for b in self.schedule.betas):
            raise UserError(
                f"schedule.eps must be > 0 and schedule.betas in [0, 1), not {self.schedule.eps}, "
                f"{list(self.schedule.betas)}"
            )
        resolutions = list(self.schedule.resolutions)
        if any(low >= high for low, high in zip(resolutions, resolutions[1:])):
            raise UserError(
                f"schedule.resolutions (--resolutions) {resolutions} must strictly increase "
                "(one stage per resolution, low to high)"
            )
        if self.batch_size * self.units_per_shard > MAX_SHARD_IMAGES:
            raise UserError(
                f"units_per_shard {self.units_per_shard} x {self.batch_size} images per unit = "
                f"{self.batch_size * self.units_per_shard} images per shard; a shard is built in "
                f"memory, keep it at most {MAX_SHARD_IMAGES} images"
            )

    @property
    def batch_size(self) -> int:
        """Images per work unit."""
        return self.classes_per_batch * self.images_per_class
