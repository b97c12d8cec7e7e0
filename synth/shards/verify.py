"""Verifying shards: layout, digest and the units each must hold; a directory's report; the integrity gate that
consumers (distill, fidelity) pass before reading a set."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import h5py
import numpy as np

from synth.common.errors import UserError
from synth.shards.format import SHARD_PATTERN, check_format_version, list_shards, shard_index, shard_name
from synth.shards.manifest import read_manifest
from synth.shards.writer import content_digest

PLAN_KEYS = ("classes", "per_class", "classes_per_batch", "images_per_class", "units_per_shard")


@dataclass
class VerifiedShard:
    """A shard whose content matched its digest: its manifest entry, labels and (optional) teacher logits."""

    file: str
    digest: str
    labels: np.ndarray
    logits: Optional[np.ndarray]

    def summary(self) -> dict[str, Any]:
        """Name, count and digest, as listed in the manifest."""
        return {"file": self.file, "count": int(len(self.labels)), "digest": self.digest}


def expected_content(config: Any, index: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, labels) that shard `index` of a synthesis with this config must hold (the unit order of
    synth.run.units), or None when `config` holds no unit plan (e.g. hand-made shards)."""
    if not isinstance(config, dict) or not all(key in config for key in PLAN_KEYS):
        return None
    try:
        classes = [int(c) for c in config["classes"]]
        per_group, per_class = int(config["classes_per_batch"]), int(config["images_per_class"])
        per_shard, rounds = int(config["units_per_shard"]), int(config["per_class"]) // per_class
        groups = len(classes) // per_group
        batch = per_group * per_class
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if min(per_group, per_class, per_shard, groups) < 1:
        return None
    first, last = index * per_shard, min((index + 1) * per_shard, rounds * groups)
    if first >= last:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    units = np.arange(first, last)
    group_classes = np.asarray(classes[: groups * per_group], dtype=np.int64).reshape(groups, per_group)
    labels = np.repeat(group_classes[units % groups], per_class, axis=1).reshape(-1)
    return np.arange(first * batch, last * batch, dtype=np.int64), labels


def load_verified(
    path: str | Path, config: Optional[dict] = None, listed_digest: Optional[str] = None
) -> tuple[Optional[VerifiedShard], Optional[str]]:
    """(the shard, None) if it opens, has the v1 layout and matches its digest; else (None, what is wrong).
    With `config` (the run's), the shard's stored config must equal it; with `listed_digest` (the manifest's),
    its digest must be that one. The shard's sample_ids and labels must be those its units hold (by its index
    and config), so a copied or renamed shard never passes. One read of the file serves every check."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            check_format_version(path, f.attrs)
            stored = json.loads(f.attrs["config"])
            if config is not None and stored != config:
                return None, "made with another config (e.g. another seed)"
            labels = f["labels"][:]
            sample_ids = f["sample_ids"][:]
            logits = f["teacher_logits"][:] if "teacher_logits" in f else None
            n = len(labels)
            if len(f["images"]) != n or len(sample_ids) != n or (logits is not None and len(logits) != n):
                return None, "dataset lengths differ"
            match = SHARD_PATTERN.match(path.name)
            expected = expected_content(stored, int(match.group(1))) if match else None
            if expected is not None and not np.array_equal(sample_ids, expected[0]):
                return None, "its sample_ids are not those of its units (a copied or renamed shard?)"
            if expected is not None and not np.array_equal(labels, expected[1]):
                return None, "its labels are not those of its units"
            digest = str(f.attrs.get("digest"))
            if content_digest(f["images"][:], labels, sample_ids, logits) != digest:
                return None, "content does not match its digest"
            if listed_digest is not None and listed_digest != digest:
                return None, "its digest differs from the one manifest.json lists"
    except UserError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any read failure means a damaged shard
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return VerifiedShard(path.name, digest, labels, logits), None


def verify_shard(path: str | Path) -> Optional[str]:
    """None if the shard opens, has the v1 layout and its content matches its digest; else what is wrong."""
    return load_verified(path)[1]


@dataclass
class VerifyReport:
    """Outcome of `verify`: per-shard problems, counts, and what the manifest expects but is missing."""

    shards: int = 0
    images: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    complete: Optional[bool] = None

    @property
    def ok(self) -> bool:
        """True when every shard verifies and none is missing."""
        return not self.problems and not self.missing

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "ok": self.ok,
            "shards": self.shards,
            "images": self.images,
            "problems": self.problems,
            "missing": self.missing,
            "complete": self.complete,
        }


def verify(root: str | Path) -> VerifyReport:
    """Check every shard (layout, digest, sample_ids of its units; with a manifest: its config and listed digest)
    and that the manifest's expected shards are all present. One read of each shard."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"shard directory '{root}' does not exist")
    report = VerifyReport()
    manifest = read_manifest(root) or {}
    config = manifest.get("config")
    listed = {e["file"]: e.get("digest") for e in manifest.get("shards", [])}
    paths = list_shards(root)
    for path in paths:
        shard, problem = load_verified(path, config, listed.get(path.name))
        report.shards += 1
        if problem is None and manifest and shard_index(path) >= manifest.get("num_shards", 0):
            problem = f"not part of this synthesis (manifest.json lists {manifest.get('num_shards', 0)} shards)"
        if problem:
            report.problems[path.name] = problem
        else:
            report.images += len(shard.labels)
    if manifest:
        present = {shard_index(p) for p in paths}
        report.missing = [shard_name(i) for i in range(manifest.get("num_shards", 0)) if i not in present]
        report.complete = manifest.get("complete")
    return report


# damage that leaves a shard readable (what `load_verified` says): --no-verify can still read such a set
_READABLE = (
    "made with another config",
    "its sample_ids are not",
    "its labels are not",
    "content does not match",
    "its digest differs",
)


def check_integrity(root: str | Path, verify_shards: bool = True, warn: Callable[[str], None] = print) -> None:
    """What consumers (distill, fidelity) call before reading a shard directory: refuse a damaged shard, a partial
    set or an unfinished synthesis with one line; with verify_shards=False only warn that nothing was checked."""
    root = Path(root)
    if not verify_shards:
        warn(f"warning: shards in '{root}' are not verified (--no-verify): damaged or missing shards go unnoticed")
        return
    report = verify(root)
    hint = "rerun the same `dfkd synthesize` command to repair it, or pass --no-verify to read it anyway"
    if report.problems:
        name, problem = next(iter(report.problems.items()))
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        if not all(problem.startswith(_READABLE) for problem in report.problems.values()):
            hint = "rerun the same `dfkd synthesize` command to regenerate it (--no-verify cannot read a shard that "
            hint += "does not open)"
        raise UserError(f"shard '{root / name}' is damaged: {problem}{more}; {hint}")
    if report.missing:
        more = f" (and {len(report.missing) - 1} more)" if len(report.missing) > 1 else ""
        raise UserError(f"shard '{root / report.missing[0]}' listed by the manifest is missing{more}; {hint}")
    if report.complete is False:
        raise UserError(f"the synthesis in '{root}' is incomplete (manifest.json says complete: false); {hint}")
