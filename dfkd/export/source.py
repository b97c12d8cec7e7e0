"""Reading a shard set to export: verified against its digests first, then sample by sample in shard order, a
block of images at a time (constant memory for any set size)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import h5py
import numpy as np

from synth.common.errors import UserError
from synth.shards.format import ShardDataset
from synth.shards.verify import verify

BLOCK = 256  # images read from a shard at a time


@dataclass
class Sample:
    """One stored image: uint8 HWC pixels, label, sample id and (when stored) float16 teacher logits."""

    image: np.ndarray
    label: int
    sample_id: int
    logits: Optional[np.ndarray]


def verified_source(shards: str | Path) -> ShardDataset:
    """The shard directory as a dataset, after every shard matched its digest and none the manifest lists is
    missing; else a UserError naming what is wrong."""
    report = verify(shards)
    if report.problems:
        first = next(iter(report.problems.items()))
        raise UserError(
            f"'{shards}' has {len(report.problems)} damaged shard(s) ({first[0]}: {first[1]}); "
            "rerun the synthesis to regenerate them before exporting"
        )
    if report.missing:
        raise UserError(
            f"'{shards}' is incomplete ({len(report.missing)} shard(s) missing, e.g. "
            f"{report.missing[0]}); rerun the synthesis to finish it before exporting"
        )
    return ShardDataset(shards)


def iter_samples(dataset: ShardDataset, with_logits: bool = True) -> Iterator[Sample]:
    """Every sample in shard order, read BLOCK images at a time (constant memory for any set size)."""
    for path in dataset.paths:
        with h5py.File(path, "r") as f:
            images, labels, ids = f["images"], f["labels"], f["sample_ids"]
            logits = f["teacher_logits"] if with_logits and "teacher_logits" in f else None
            for start in range(0, len(labels), BLOCK):
                stop = min(start + BLOCK, len(labels))
                block = images[start:stop]
                block_labels, block_ids = labels[start:stop], ids[start:stop]
                block_logits = logits[start:stop] if logits is not None else None
                for i in range(stop - start):
                    yield Sample(
                        block[i],
                        int(block_labels[i]),
                        int(block_ids[i]),
                        block_logits[i] if block_logits is not None else None,
                    )


def has_logits(dataset: ShardDataset) -> bool:
    """True when every shard stores teacher logits."""
    for path in dataset.paths:
        with h5py.File(path, "r") as f:
            if "teacher_logits" not in f:
                return False
    return True
