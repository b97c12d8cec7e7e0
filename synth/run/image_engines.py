"""How a unit's images are made (`--engine`): the pixel engine (every image optimised, synth.inversion.invert) or the
generator engine (synth.generator.chains). synth.run.engine asks an engine which shards a process makes, to prepare
before the first, for each unit's images, and tells it when a shard is written."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from synth.config import SynthesisConfig
from synth.inversion.competitor import Competitor
from synth.inversion.invert import InversionResult, invert_batch
from synth.run.units import Unit, UnitPlan, unit_generator
from synth.teachers.teacher import Teacher


class PixelEngine:
    """Multi-resolution DeepInversion: each unit from its own seeded noise, independent of every other unit."""

    def __init__(self, config: SynthesisConfig, teacher: Teacher, competitor: Optional[Competitor] = None):
        self.config, self.teacher, self.competitor = config, teacher, competitor

    def rank_shards(self, num_shards: int, rank: int, world_size: int) -> list[int]:
        """Process `rank` makes the shards k with k mod world_size = rank."""
        return list(range(rank, num_shards, world_size))

    def prepare(self, out: Path, identity: dict, todo: list[int], message: Callable[[str], None]) -> None:
        """Nothing to prepare: no state carries between units."""

    def unit(self, unit: Unit, labels: torch.Tensor) -> InversionResult:
        """Invert one unit from its own generator (bf16 autocast and channels_last on CUDA)."""
        config, cuda = self.config, labels.device.type == "cuda"
        return invert_batch(
            self.teacher,
            labels,
            config.losses,
            config.schedule,
            unit_generator(config.seed, unit.id),
            channels_last=cuda,
            autocast_dtype=torch.bfloat16 if cuda else None,
            compile=config.compile,
            competitor=self.competitor,
        )

    def shard_done(self, index: int) -> None:
        """Nothing to save."""


def make_engine(
    config: SynthesisConfig,
    teacher: Teacher,
    device: torch.device,
    units: UnitPlan,
    competitor: Optional[Competitor] = None,
):
    """The engine `config.engine` names."""
    if config.engine == "generator":
        from synth.generator.chains import GeneratorEngine

        return GeneratorEngine(config, teacher, device, units, competitor)
    return PixelEngine(config, teacher, competitor)
