"""Synthesis settings: the `synthesize:` section of a recipe and the options of `dfkd synthesize`."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from synth import shards as shard_io
from synth.errors import UserError
from synth.losses import BN_NORMS
from synth.runtime import default_threads

if TYPE_CHECKING:
    from synth.competitor import Competitor
    from synth.teacher import Teacher

MAX_SHARD_IMAGES = 100_000  # a shard is assembled in memory before it is written
UNIT_ORDER = "rounds-major; unit u = (round u // G, class group u % G); sample_id = u * batch + position"


@dataclass
class LossWeights:
    """Weights of the synthesis objective: the papers' values, except the BN term, whose default is the normalized
    form (one weight for any teacher, see synth.losses.BNStatisticsLoss); bn_norm="paper" with bn=0.05 is
    DeepInversion's."""

    ce: float = 1.0
    bn: float = 10.0
    bn_first: float = 10.0
    bn_norm: str = "normalized"  # scale-free per layer, mean over layers; "paper": DeepInversion's sum
    tv: float = 1e-4
    l2: float = 1e-5
    ep: float = 50.0
    ep_margin: float = 0.5
    ep_form: str = "saturating"
    triplet: float = 0.5
    triplet_margin: float = 0.5
    adi: float = 0.0  # Adaptive DeepInversion's competition term; needs a student (synth.competitor)

    def validate(self) -> None:
        """Refuse an unknown intra-divergence form or negative weights."""
        if self.bn_norm not in BN_NORMS:
            raise UserError(f"losses.bn_norm '{self.bn_norm}' is not one of {', '.join(BN_NORMS)}")
        if self.ep_form not in ("saturating", "unbounded"):
            raise UserError(f"losses.ep_form '{self.ep_form}' is not one of saturating, unbounded")
        for name in ("ce", "bn", "bn_first", "tv", "l2", "ep", "triplet", "adi"):
            if getattr(self, name) < 0:
                raise UserError(f"losses.{name} must be >= 0, not {getattr(self, name)}")


@dataclass
class Schedule:
    """Resolutions and iterations per stage (low to high), optimiser and augmentation settings."""

    resolutions: tuple[int, ...] = (112, 224)
    iterations: tuple[int, ...] = (2000, 2000)
    lr: float = 0.25
    betas: tuple[float, ...] = (0.5, 0.9)
    eps: float = 1e-8
    jitter: float = 30 / 224
    flip: bool = True
    multires: str = "upsample"

    def validate(self) -> None:
        """Check stage lists and option values."""
        if not self.resolutions or len(self.resolutions) != len(self.iterations):
            raise UserError(f"schedule.resolutions {list(self.resolutions)} and schedule.iterations "
                            f"{list(self.iterations)} must list the same number of stages (at least one)")
        if list(self.resolutions) != sorted(self.resolutions) or min(self.resolutions) < 4:
            raise UserError(f"schedule.resolutions {list(self.resolutions)} must increase from low to high, each >= 4")
        if min(self.iterations) < 1:
            raise UserError(f"schedule.iterations {list(self.iterations)} must each be >= 1")
        if self.multires not in ("upsample", "pool"):
            raise UserError(f"schedule.multires '{self.multires}' is not one of upsample, pool")
        if len(self.betas) != 2:
            raise UserError(f"schedule.betas must hold two numbers, not {list(self.betas)}")


@dataclass
class SynthesisConfig:
    """Everything `dfkd synthesize` needs; `identity()` is the part that changes the images."""

    teacher: str = ""
    teacher_weights: Optional[str] = None
    classes: Union[str, list[int]] = "all"
    per_class: int = 8
    classes_per_batch: int = 8
    images_per_class: int = 4
    units_per_shard: int = 16
    seed: int = 0
    threads: int = 0
    losses: LossWeights = field(default_factory=LossWeights)
    schedule: Schedule = field(default_factory=Schedule)
    store_logits: bool = True
    compression: str = "none"
    device: str = "auto"
    compile: bool = False
    student: Optional[str] = None  # Adaptive DeepInversion: the frozen student (student.pth) that losses.adi competes with

    def validate(self) -> None:
        """Check settings that need no teacher."""
        if not self.teacher:
            raise UserError("no teacher given: pass --teacher timm:<name>, torchvision:<name> or a teacher file")
        for name in ("classes_per_batch", "images_per_class"):
            if getattr(self, name) < 2:
                raise UserError(f"{name} must be >= 2 (the intra-divergence and triplet losses need "
                                f"two classes and two images of each per batch), not {getattr(self, name)}")
        if self.per_class < 1 or self.per_class % self.images_per_class:
            raise UserError(f"per_class {self.per_class} must be a positive multiple of images_per_class "
                            f"{self.images_per_class}")
        if self.units_per_shard < 1:
            raise UserError(f"units_per_shard must be >= 1, not {self.units_per_shard}")
        if self.compression not in shard_io.COMPRESSIONS:
            raise UserError(f"compression '{self.compression}' is not one of {', '.join(shard_io.COMPRESSIONS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"device '{self.device}' is not one of auto, cpu, cuda, cuda:N")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0 (0 = all cores), not {self.threads}")
        if bool(self.student) != (self.losses.adi > 0):
            raise UserError("the competition term needs both a student (--student runs/x/student.pth) and a weight "
                            f"(--a-adi > 0); got student {self.student!r} and a_adi {self.losses.adi}")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, not {self.seed}")
        self.losses.validate()
        self.schedule.validate()
        for name, value in [*(("losses." + k, v) for k, v in asdict(self.losses).items()),
                            *(("schedule." + k, v) for k, v in asdict(self.schedule).items())]:
            for number in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(number, float) and not math.isfinite(number):
                    raise UserError(f"{name} must be a finite number, not {number}")
        if not self.schedule.lr > 0:
            raise UserError(f"schedule.lr (--lr) must be > 0, not {self.schedule.lr}")
        if not self.schedule.eps > 0 or not all(0 <= b < 1 for b in self.schedule.betas):
            raise UserError(f"schedule.eps must be > 0 and schedule.betas in [0, 1), not {self.schedule.eps}, "
                            f"{list(self.schedule.betas)}")
        resolutions = list(self.schedule.resolutions)
        if any(low >= high for low, high in zip(resolutions, resolutions[1:])):
            raise UserError(f"schedule.resolutions (--resolutions) {resolutions} must strictly increase "
                            "(one stage per resolution, low to high)")
        if self.batch_size * self.units_per_shard > MAX_SHARD_IMAGES:
            raise UserError(f"units_per_shard {self.units_per_shard} x {self.batch_size} images per unit = "
                            f"{self.batch_size * self.units_per_shard} images per shard; a shard is built in "
                            f"memory, keep it at most {MAX_SHARD_IMAGES} images")

    @property
    def batch_size(self) -> int:
        """Images per work unit."""
        return self.classes_per_batch * self.images_per_class

    def resolved_threads(self) -> int:
        """The CPU thread count: `threads`, or all cores when 0."""
        return self.threads or default_threads()

    def identity(self, teacher: Teacher, classes: list[int], competitor: Optional[Competitor] = None) -> dict[str, Any]:
        """What changes the images: teacher and weights, classes, batch layout, schedule, losses, seed, threads, and
        the competing student's file and sha256 when there is one."""
        extra = {"student": competitor.describe()} if competitor is not None else {}
        extra.update({"teacher_grayscale": True} if teacher.grayscale else {})
        return json.loads(json.dumps({**extra,
            "teacher": self.teacher, "teacher_weights_sha256": teacher.weights_sha256, "classes": classes,
            "per_class": self.per_class, "classes_per_batch": self.classes_per_batch,
            "images_per_class": self.images_per_class, "units_per_shard": self.units_per_shard,
            "seed": self.seed, "threads": self.resolved_threads(), "losses": asdict(self.losses),
            "schedule": asdict(self.schedule), "unit_order": UNIT_ORDER,
        }))
