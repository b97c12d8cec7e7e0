"""The generator engine as synth.run.engine drives it: which shards a process makes, each unit adapted from its
chain's meta weights, the Reptile step after it, and each chain's state saved at shard boundaries.

Chains: shard k belongs to chain k mod `generator.chains`; a chain's units run in shard order, each from the meta
weights its predecessors left (theta += meta_lr * (theta' - theta)). Process r of N runs the chains c with
c mod N = r, so every chain's sequence, and with it every image, is the same for any number of processes. Without
meta learning every unit starts from the same seeded weights and the shards are shared out as the pixel engine's."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from synth.config import SynthesisConfig
from synth.generator.adapt import adapt_unit
from synth.generator.chain_file import identity_digest, load_chain, remove_chain, save_chain
from synth.generator.network import build_generator
from synth.inversion.competitor import Competitor
from synth.inversion.invert import InversionResult
from synth.run.units import Unit, UnitPlan, unit_generator
from synth.teachers.teacher import Teacher


class GeneratorEngine:
    """Makes the units' images with the generator; holds each of this process's chains' meta weights."""

    def __init__(
        self,
        config: SynthesisConfig,
        teacher: Teacher,
        device: torch.device,
        units: UnitPlan,
        competitor: Optional[Competitor] = None,
    ):
        self.config, self.teacher, self.units, self.competitor = config, teacher, units, competitor
        self.settings, self.per_shard = config.generator, config.units_per_shard
        self.chains = self.settings.chains if self.settings.meta else 1
        size = config.schedule.resolutions[-1] // config.schedule.lowres
        channels = 1 if teacher.grayscale else 3
        self.network = build_generator(self.settings, teacher.num_classes, size, channels, config.seed).to(device)
        self.initial = {name: value.detach().clone() for name, value in self.network.state_dict().items()}
        self.meta: dict[int, dict[str, torch.Tensor]] = {}  # chain -> meta weights before its shard `next[chain]`
        self.next: dict[int, int] = {}
        self.out, self.digest, self.message, self.todo = Path("."), "", print, []

    def rank_shards(self, num_shards: int, rank: int, world_size: int) -> list[int]:
        """The shards process `rank` makes: those of its chains (c mod world_size = rank), or k mod world_size = rank
        without meta learning."""
        if not self.settings.meta:
            return list(range(rank, num_shards, world_size))
        return [k for k in range(num_shards) if (k % self.chains) % world_size == rank]

    def prepare(self, out: Path, identity: dict, todo: list[int], message: Callable[[str], None]) -> None:
        """Before the first shard: each chain with work starts from its saved state when that precedes its first
        missing shard, else from the seeded weights (finished shards before are replayed, not rewritten)."""
        self.out, self.digest, self.message, self.todo = out, identity_digest(identity), message, list(todo)
        if not self.settings.meta:
            return
        for chain in sorted({k % self.chains for k in todo}):
            first = min(k for k in todo if k % self.chains == chain)
            saved = load_chain(out, chain, self.digest)
            if saved is not None and saved[0] % self.chains == chain and saved[0] < first:
                after, state = saved
                self.meta[chain] = {name: value.to(self.network_device) for name, value in state.items()}
                self.next[chain] = after + self.chains
            else:
                self.meta[chain] = {name: value.clone() for name, value in self.initial.items()}
                self.next[chain] = chain

    @property
    def network_device(self) -> torch.device:
        """Where the generator runs."""
        return next(self.network.parameters()).device

    def unit(self, unit: Unit, labels: torch.Tensor) -> InversionResult:
        """Adapt the generator to one unit (from its chain's meta weights, or the seeded ones) and return its images;
        with meta learning, move the chain's meta weights toward the adapted ones."""
        shard = unit.id // self.per_shard
        if not self.settings.meta:
            self.network.load_state_dict(self.initial)
            return self._adapt(unit, labels, self.settings.steps)
        chain = shard % self.chains
        self._replay_until(chain, shard)
        self.network.load_state_dict(self.meta[chain])
        position = (shard // self.chains) * self.per_shard + unit.id % self.per_shard
        warm = position < self.settings.warmup_units
        result = self._adapt(unit, labels, self.settings.warmup_steps if warm else self.settings.steps)
        with torch.no_grad():
            for name, adapted in self.network.state_dict().items():
                self.meta[chain][name].lerp_(adapted, self.settings.meta_lr)
        return result

    def shard_done(self, index: int) -> None:
        """After shard `index` is written: save its chain's state, or delete it when this run has nothing more to do
        in the chain (a finished set holds no state; a shard damaged later is made again by replaying the chain)."""
        if not self.settings.meta:
            return
        chain = index % self.chains
        self.next[chain] = index + self.chains
        if not any(k > index and k % self.chains == chain for k in self.todo):
            remove_chain(self.out, chain)
        else:
            save_chain(self.out, chain, index, self.digest, self.meta[chain])

    def _adapt(self, unit: Unit, labels: torch.Tensor, steps: int) -> InversionResult:
        """One unit's adaptation, its draws from the unit's own seeded generator."""
        rng = unit_generator(self.config.seed, unit.id)
        return adapt_unit(self.network, self.teacher, labels, self.config, steps, rng, self.competitor)

    def _replay_until(self, chain: int, shard: int) -> None:
        """Bring the chain's meta weights to just before `shard` by running its finished shards before it again
        (nothing is written): after a damaged shard, or without a saved state."""
        if self.next[chain] >= shard:
            return
        skipped = list(range(self.next[chain], shard, self.chains))
        self.message(
            f"note: replaying finished shard(s) {skipped} of generator chain {chain} to rebuild its meta weights "
            "(nothing is rewritten)"
        )
        for index in skipped:
            for unit in self.units[index * self.per_shard : (index + 1) * self.per_shard]:
                self.unit(unit, torch.tensor(unit.labels, device=self.network_device))
            self.next[chain] = index + self.chains
