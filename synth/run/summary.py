"""What each rank reports at the end of a synthesis, the run summary built from all ranks, and the low-fidelity
guard rail (a warning when the teacher does not classify the images as their targets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from synth.config import LossWeights
from synth.shards.verify import VerifiedShard

LOW_FIDELITY = 0.5  # below this teacher agreement with the targets a set is flagged: its images carry little class


@dataclass
class RankResult:
    """What one rank reports at the end: its shards (as listed in the manifest), counts and teacher agreement."""

    shards: list = field(default_factory=list)
    damaged: dict = field(default_factory=dict)
    written: int = 0
    skipped: int = 0
    hits: int = 0
    total: int = 0
    has_logits: bool = True
    unit_hits: int = 0  # teacher agreement on the units this run synthesized (hits of total), and whether it warned
    unit_total: int = 0
    warned: bool = False

    def add_existing(self, shard: VerifiedShard) -> None:
        """Count a finished shard that verified (skipped, not synthesized again)."""
        self.shards.append(shard.summary())
        self.skipped += 1
        self._count(shard.labels, shard.logits)

    def add_written(self, name: str, digest: str, labels: np.ndarray, logits: Optional[np.ndarray]) -> None:
        """Count a shard this run wrote."""
        self.shards.append({"file": name, "count": int(len(labels)), "digest": digest})
        self.written += 1
        self._count(labels, logits)

    def add_unit(self, hits: int, total: int) -> bool:
        """Count one synthesized unit's teacher agreement; True once, when the agreement so far first falls below
        LOW_FIDELITY (the moment to warn)."""
        self.unit_hits += hits
        self.unit_total += total
        if not self.warned and self.unit_hits < LOW_FIDELITY * self.unit_total:
            self.warned = True
            return True
        return False

    def _count(self, labels: np.ndarray, logits: Optional[np.ndarray]) -> None:
        """Add a shard's teacher agreement (top-1 of its stored logits equals the label)."""
        if logits is None:  # the same fp16 logits that are stored: fresh and resumed runs count alike
            self.has_logits = False
            return
        self.hits += int((logits.argmax(1) == labels).sum())
        self.total += len(labels)


def all_shards(gathered: list[RankResult]) -> list[dict]:
    """Every rank's shards as listed in the manifest, sorted by file name."""
    return sorted((s for r in gathered for s in r.shards), key=lambda s: s["file"])


def summarize(
    gathered: list[RankResult], out: Path, num_shards: int, store_logits: bool, seconds: float
) -> dict[str, Any]:
    """The summary `synthesize` returns, covering every rank's shards."""
    shards = all_shards(gathered)
    images = sum(s["count"] for s in shards)
    damaged = {name: problem for r in gathered for name, problem in r.damaged.items()}
    total = sum(r.total for r in gathered)
    with_logits = store_logits and all(r.has_logits for r in gathered)
    fidelity = sum(r.hits for r in gathered) / total if with_logits and total else None
    return {
        "out": str(out),
        "shards": num_shards,
        "shards_written": sum(r.written for r in gathered),
        "shards_skipped": sum(r.skipped for r in gathered),
        "shards_regenerated": sorted(damaged),
        "damaged": dict(sorted(damaged.items())),
        "nothing_to_do": not any(r.written for r in gathered),
        "images": images,
        "complete": len(shards) == num_shards,
        "fidelity": fidelity,
        "low_fidelity": fidelity is not None and fidelity < LOW_FIDELITY,
        "processes": len(gathered),
        "seconds": round(seconds, 2),
    }


def low_fidelity_warning(agreement: float, num_classes: int, losses: dict[str, float], weights: LossWeights) -> str:
    """The stderr note when the teacher does not classify the synthesized images as their targets."""
    ce, bn = losses.get("ce", float("nan")), losses.get("bn", float("nan"))
    cause = (
        f"the BN-statistics term ({weights.bn} x {bn:.3g}) swamps the class term ({weights.ce} x {ce:.3g}); "
        + (
            "try --bn-norm normalized (one weight for any teacher) or a smaller --a-bn"
            if weights.bn_norm == "paper"
            else "try a smaller --a-bn"
        )
        if weights.bn * bn > weights.ce * ce
        else "the class term does not fall; check --a-ce, --lr and the iterations"
    )
    return (
        f"warning: low fidelity: the teacher assigns only {agreement:.0%} of the synthesized images to their "
        f"target class (chance: {1 / num_classes:.0%}); {cause}"
    )
