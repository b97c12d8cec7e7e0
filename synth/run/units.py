"""Work units: which classes each batch holds, in which order, and the random draws each unit gets.

Unit order (public: it fixes `sample_ids`). The selected classes, sorted, are cut into G groups of
`classes_per_batch` consecutive classes; there are R = per_class / images_per_class rounds. Unit u
is round r = u // G of group g = u % G: it holds the classes of group g, `images_per_class` images
each, with per-class indices r * images_per_class + i. Inside a unit, position p holds class
group[p // images_per_class]; its sample id is u * batch + p. Shard k holds units [k*U, (k+1)*U).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from synth.common.errors import UserError


@dataclass(frozen=True)
class Unit:
    """One batch of work: its id, the classes it holds and the per-class index of its first image."""

    id: int
    classes: tuple[int, ...]
    first_index: int
    images_per_class: int

    @property
    def labels(self) -> list[int]:
        """Target class of every position (class-major)."""
        return [c for c in self.classes for _ in range(self.images_per_class)]

    def sample_ids(self) -> np.ndarray:
        """Global ids: unit id * batch + position."""
        batch = len(self.classes) * self.images_per_class
        return np.arange(self.id * batch, (self.id + 1) * batch, dtype=np.int64)


def parse_classes(spec: Union[str, list[int]], num_classes: int) -> list[int]:
    """`all`, ranges and lists ("0-99", "1,5,7-9", [1, 5]) -> sorted unique class ids within the teacher's range."""
    if isinstance(spec, list):
        ids = [int(v) for v in spec]
    elif str(spec).strip() == "all":
        ids = list(range(num_classes))
    else:
        ids = []
        for part in str(spec).split(","):
            part = part.strip()
            try:
                if "-" in part[1:]:
                    low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                    low, high = int(low), int(high)
                    if low <= high and (low < 0 or high >= num_classes):  # before the range is built
                        first_bad = low if low < 0 else max(low, num_classes)
                        raise UserError(f"class id {first_bad} is outside the teacher's range 0-{num_classes - 1}")
                    ids.extend(range(low, high + 1))
                else:
                    ids.append(int(part))
            except ValueError:
                raise UserError(f"classes '{spec}' is not 'all', a range like 0-99, or a list like 1,5,7-9") from None
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"class id {bad[0]} is outside the teacher's range 0-{num_classes - 1}")
    if not ids:
        raise UserError(f"classes '{spec}' selects no class")
    repeated = sorted(c for c, n in Counter(ids).items() if n > 1)
    if repeated:
        raise UserError(
            f"classes '{spec}' names class {repeated[0]} more than once; give each class once: "
            "'all', a range like 0-99, or a list like 1,5,7-9"
        )
    return sorted(ids)


class UnitPlan(Sequence):
    """All work units in order, computed on demand (a plan of 10^8 units costs nothing until it is used)."""

    def __init__(self, groups: list[tuple[int, ...]], rounds: int, images_per_class: int):
        self.groups, self.rounds, self.images_per_class = groups, rounds, images_per_class

    def __len__(self) -> int:
        return self.rounds * len(self.groups)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        r, g = divmod(index, len(self.groups))
        return Unit(
            id=index,
            classes=self.groups[g],
            first_index=r * self.images_per_class,
            images_per_class=self.images_per_class,
        )


def plan_units(classes: list[int], per_class: int, classes_per_batch: int, images_per_class: int) -> UnitPlan:
    """All work units in order (see the module docstring)."""
    if len(classes) < 2:
        raise UserError(
            f"synthesis needs at least 2 classes (the intra-divergence and triplet losses compare the classes of a "
            f"batch); the selection holds only class {classes[0]}"
        )
    if len(classes) % classes_per_batch:
        divisors = [d for d in range(2, min(len(classes), 10_000) + 1) if len(classes) % d == 0]
        raise UserError(
            f"classes_per_batch {classes_per_batch} does not divide the {len(classes)} selected "
            f"classes; use one of {divisors[:8]}"
        )
    groups = [tuple(classes[i : i + classes_per_batch]) for i in range(0, len(classes), classes_per_batch)]
    return UnitPlan(groups, per_class // images_per_class, images_per_class)


def unit_generator(seed: int, unit_id: int) -> torch.Generator:
    """A CPU generator seeded from (global seed, unit id): the same unit always gets the same random draws."""
    state = np.random.SeedSequence([seed, unit_id]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
