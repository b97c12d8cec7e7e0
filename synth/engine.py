"""Work units -> inversion -> shards: the unit order, per-unit seeds, resume and the manifest.

Unit order (public: it fixes `sample_ids`). The selected classes, sorted, are cut into G groups of
`classes_per_batch` consecutive classes; there are R = per_class / images_per_class rounds. Unit u
is round r = u // G of group g = u % G: it holds the classes of group g, `images_per_class` images
each, with per-class indices r * images_per_class + i. Inside a unit, position p holds class
group[p // images_per_class]; its sample id is u * batch + p. Shard k holds units [k*U, (k+1)*U).

Ranks (torchrun, see `synth.distributed`): rank r writes shards k with k % world_size == r and nothing else;
rank 0 alone checks the config against the output directory, deletes stale `.tmp` files and writes the
manifest. Each unit's result depends only on (config, unit id), so the shards are the same for any number
of processes.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from synth import card
from synth import shards as shard_io
from synth.competitor import load_competitor
from synth.config import LossWeights, SynthesisConfig
from synth.distributed import Ranks
from synth.errors import UserError
from synth.inversion import invert_batch
from synth.manifest import read_manifest, write_manifest
from synth.runtime import Progress, available_cores, resolve_device, use_threads
from synth.shard_verify import VerifiedShard, load_verified
from synth.shard_writer import write_shard
from synth.teacher import Teacher
from synth.teacher_sources import load_teacher

LOW_FIDELITY = 0.5  # below this teacher agreement with the targets a set is flagged: its images carry little class
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
    return sorted(set(ids))


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
        return Unit(id=index, classes=self.groups[g], first_index=r * self.images_per_class,
                    images_per_class=self.images_per_class)


def plan_units(classes: list[int], per_class: int, classes_per_batch: int, images_per_class: int) -> UnitPlan:
    """All work units in order (see the module docstring)."""
    if len(classes) % classes_per_batch:
        divisors = [d for d in range(2, min(len(classes), 10_000) + 1) if len(classes) % d == 0]
        raise UserError(f"classes_per_batch {classes_per_batch} does not divide the {len(classes)} selected "
                        f"classes; use one of {divisors[:8]}")
    groups = [tuple(classes[i:i + classes_per_batch]) for i in range(0, len(classes), classes_per_batch)]
    return UnitPlan(groups, per_class // images_per_class, images_per_class)


def unit_generator(seed: int, unit_id: int) -> torch.Generator:
    """A CPU generator seeded from (global seed, unit id): the same unit always gets the same random draws."""
    state = np.random.SeedSequence([seed, unit_id]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def synthesize(config: SynthesisConfig, out: str | Path, progress: Optional[Progress] = None,
               ranks: Optional[Ranks] = None) -> dict[str, Any]:
    """Run (or resume) a synthesis into `out`; returns a summary covering every rank's shards.

    With `ranks` (from `synth.distributed.init()` under torchrun) rank r does shards k with k % world_size == r;
    rank 0 alone checks the config against `out`, deletes stale `.tmp` files and writes the manifest.
    """
    progress = progress or Progress()
    ranks = ranks or Ranks()
    started = time.time()
    out = Path(out)
    config = replace(config, teacher=absolute_teacher_spec(config.teacher))

    # 1. Every rank loads the teacher and works out the config; all must succeed and agree.
    error = None
    try:
        config.validate()
        threads = use_threads(config.resolved_threads())  # on every rank, whatever torchrun put in OMP_NUM_THREADS
        device = ranks.local_device(resolve_device(config.device))
        teacher = load_teacher(config.teacher, config.teacher_weights, device)
        classes = parse_classes(config.classes, teacher.num_classes)
        units = plan_units(classes, config.per_class, config.classes_per_batch, config.images_per_class)
        if -(-len(units) // config.units_per_shard) > shard_io.MAX_SHARDS:
            raise UserError(f"{len(classes)} classes x per_class {config.per_class} make "
                            f"{-(-len(units) // config.units_per_shard)} shards of {config.units_per_shard} "
                            f"unit(s); at most {shard_io.MAX_SHARDS} shards fit the shard names: lower per_class "
                            "or raise units_per_shard")
        competitor = load_competitor(config.student, device) if config.student else None
        identity = config.identity(teacher, classes, competitor)
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
        error = exc
    ranks.check_all(error)
    if ranks.distributed:  # e.g. another node's teacher file, or --threads 0 on machines with other core counts
        try:
            _check_same_identity(ranks.all_gather(identity))
        except UserError as exc:
            error = exc
        ranks.check_all(error)
    num_shards = -(-len(units) // config.units_per_shard)

    # 2. Rank 0 alone checks the output directory, removes stale temporary files and writes the manifest.
    error = None
    if ranks.rank == 0:
        try:
            _prepare_output(out, identity, teacher, num_shards, len(units) * config.batch_size, progress.message)
            cores = available_cores()
            if ranks.local_world_size * threads > cores:
                progress.message(f"note: {ranks.local_world_size} process(es) x {threads} threads exceed this "
                                 f"machine's {cores} cores; --threads (part of the config) sets the count")
        except Exception as exc:  # noqa: BLE001
            error = exc
    ranks.check_all(error)
    if ranks.distributed:  # rank 0 may have adopted the recorded teacher path (same weights under another name)
        identity = ranks.all_gather(identity)[0]
        teacher.spec = identity["teacher"]

    # 3. Every rank verifies its own finished shards (damaged ones are deleted and redone).
    error = None
    try:
        if not (out / shard_io.MANIFEST).is_file():
            raise UserError(f"rank {ranks.rank} does not see {out / shard_io.MANIFEST} written by rank 0: "
                            "--out must be a directory every node shares")
        log_path = out / "logs" / f"synthesis-rank{ranks.rank}.jsonl"
        mine = _RankResult()
        todo = []
        for k in range(ranks.rank, num_shards, ranks.world_size):
            path = out / shard_io.shard_name(k)
            if path.exists():
                shard, problem = load_verified(path, identity)
                if problem is None:
                    mine.add_existing(shard)
                    continue
                progress.message(f"shard {path.name} is damaged ({problem}); regenerating it")
                path.unlink()
                mine.damaged[path.name] = problem
            todo.append(k)
    except Exception as exc:  # noqa: BLE001
        error = exc
    ranks.check_all(error)

    # 4. Synthesis: no collective until every rank has finished its shards.
    cuda = device.type == "cuda"
    if cuda:
        teacher.model.to(memory_format=torch.channels_last)
    progress.start(sum(len(units[k * config.units_per_shard:(k + 1) * config.units_per_shard]) for k in todo)
                   * config.batch_size)
    try:
        for k in todo:
            shard_units = units[k * config.units_per_shard:(k + 1) * config.units_per_shard]
            results = []
            for unit in shard_units:
                unit_start = time.time()
                labels = torch.tensor(unit.labels, device=device)
                result = invert_batch(teacher, labels, config.losses, config.schedule,
                                      unit_generator(config.seed, unit.id), channels_last=cuda,
                                      autocast_dtype=torch.bfloat16 if cuda else None,
                                      compile=config.compile, competitor=competitor)
                bad = {name: value for name, value in result.losses.items() if not math.isfinite(value)}
                if bad or not bool(torch.isfinite(result.logits).all()):  # read once per unit, at its end
                    raise UserError(f"unit {unit.id} (classes {list(unit.classes)}) ended with a non-finite loss "
                                    f"{bad or 'in the teacher logits'}; {shard_io.shard_name(k)} was not written. "
                                    "Lower --lr or the loss weights, or check the teacher")
                results.append(result)
                hits = int((result.logits.argmax(1) == labels.cpu()).sum())
                agreement = hits / len(labels)
                _append_log(log_path, {"unit": unit.id, "shard": k, "rank": ranks.rank,
                                       "threads": torch.get_num_threads(),
                                       "seconds": round(time.time() - unit_start, 3), "fidelity": agreement,
                                       "losses": result.losses, "stage_totals": result.stage_totals})
                mine.unit_hits += hits
                mine.unit_total += len(labels)
                if not mine.warned and mine.unit_hits < LOW_FIDELITY * mine.unit_total:
                    mine.warned = True
                    progress.message(low_fidelity_warning(mine.unit_hits / mine.unit_total, teacher.num_classes,
                                                          result.losses, config.losses))
                progress.advance(len(labels), result.losses)
            labels = np.concatenate([u.labels for u in shard_units]).astype(np.int64)
            logits = torch.cat([r.logits for r in results]).half().numpy() if config.store_logits else None
            path = out / shard_io.shard_name(k)
            digest = write_shard(
                path, images=torch.cat([r.images for r in results]).numpy(), labels=labels,
                sample_ids=np.concatenate([u.sample_ids() for u in shard_units]), logits=logits,
                num_classes=teacher.num_classes, mean=teacher.mean, std=teacher.std, teacher=teacher.describe(),
                config=identity, class_names=teacher.class_names, compression=config.compression,
            )
            mine.add_written(path.name, digest, labels, logits)
    finally:
        progress.close()

    # 5. Wait for every rank; rank 0 indexes all shards in the manifest; the summary covers every rank.
    gathered: list[_RankResult] = ranks.all_gather(mine)
    shards = sorted((s for r in gathered for s in r.shards), key=lambda s: s["file"])
    images = sum(s["count"] for s in shards)
    damaged = {name: problem for r in gathered for name, problem in r.damaged.items()}
    if ranks.rank == 0:
        manifest = read_manifest(out) or {}
        updated = dict(manifest, shards=shards, images=images, complete=len(shards) == num_shards)
        _write_manifest_if_changed(out, manifest, updated)
        card.write_card(out, updated, progress.message)
    total = sum(r.total for r in gathered)
    with_logits = config.store_logits and all(r.has_logits for r in gathered)
    fidelity = sum(r.hits for r in gathered) / total if with_logits and total else None
    return {
        "out": str(out), "shards": num_shards, "shards_written": sum(r.written for r in gathered),
        "shards_skipped": sum(r.skipped for r in gathered), "shards_regenerated": sorted(damaged),
        "damaged": dict(sorted(damaged.items())), "nothing_to_do": not any(r.written for r in gathered),
        "images": images, "complete": len(shards) == num_shards,
        "fidelity": fidelity, "low_fidelity": fidelity is not None and fidelity < LOW_FIDELITY,
        "processes": ranks.world_size, "seconds": round(time.time() - started, 2),
    }


@dataclass
class _RankResult:
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
        self.shards.append(shard.summary())
        self.skipped += 1
        self._count(shard.labels, shard.logits)

    def add_written(self, name: str, digest: str, labels: np.ndarray, logits: Optional[np.ndarray]) -> None:
        self.shards.append({"file": name, "count": int(len(labels)), "digest": digest})
        self.written += 1
        self._count(labels, logits)

    def _count(self, labels: np.ndarray, logits: Optional[np.ndarray]) -> None:
        if logits is None:  # the same fp16 logits that are stored: fresh and resumed runs count alike
            self.has_logits = False
            return
        self.hits += int((logits.argmax(1) == labels).sum())
        self.total += len(labels)


def low_fidelity_warning(agreement: float, num_classes: int, losses: dict[str, float], weights: LossWeights) -> str:
    """The stderr note when the teacher does not classify the synthesized images as their targets."""
    ce, bn = losses.get("ce", float("nan")), losses.get("bn", float("nan"))
    cause = (f"the BN-statistics term ({weights.bn} x {bn:.3g}) swamps the class term ({weights.ce} x {ce:.3g}); "
             + ("try --bn-norm normalized (one weight for any teacher) or a smaller --a-bn"
                if weights.bn_norm == "paper" else "try a smaller --a-bn")
             if weights.bn * bn > weights.ce * ce else
             "the class term does not fall; check --a-ce, --lr and the iterations")
    return (f"warning: low fidelity: the teacher assigns only {agreement:.0%} of the synthesized images to their "
            f"target class (chance: {1 / num_classes:.0%}); {cause}")


def _check_same_identity(identities: list[dict]) -> None:
    """Every rank must synthesize the same thing (same teacher weights, classes, threads, ...) as rank 0."""
    for rank, identity in enumerate(identities[1:], start=1):
        difference = _first_difference(identity, identities[0])
        if difference is not None:
            key, there, first = difference
            raise UserError(f"rank {rank} computes a different config than rank 0 ({key}: {there!r} "
                            f"there, {first!r} on rank 0); give every node the same files and "
                            "an explicit --threads")


def _prepare_output(out: Path, identity: dict, teacher: Teacher, num_shards: int, images: int,
                    message: Callable[[str], None] = print) -> None:
    """Refuse a directory that holds something else (another synthesis, or files dfkd did not write), delete
    stale temporary files of dfkd's own names, write the manifest (only when it changes).

    When the directory holds the same synthesis with the teacher file named by another path (same weights,
    normalisation and size), `identity` and `teacher` adopt the recorded path: the path is information only."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is not a directory")
    manifest = read_manifest(out) if out.is_dir() else None
    shards = shard_io.list_shards(out)
    if manifest is not None and manifest.get("format") != shard_io.FORMAT:
        raise UserError(f"'{out / shard_io.MANIFEST}' is not a dfkd manifest (format {manifest.get('format')!r}); "
                        "choose a new or empty --out")
    if out.is_dir() and manifest is None and not shards and not _only_dfkd_files(out):
        raise UserError(f"output directory '{out}' is not empty and is not a dfkd synthesis directory (no "
                        f"{shard_io.MANIFEST}, no shard-XXXXXX.h5); choose a new or empty --out")
    existing = _existing_identity(out)
    if existing is not None and _same_teacher_file(existing, identity, manifest, teacher):
        if existing["teacher"] != identity["teacher"]:
            message(f"note: teacher '{identity['teacher']}' has the same weights (sha256 "
                    f"{identity['teacher_weights_sha256'][:12]}) as '{existing['teacher']}' recorded in '{out}'; "
                    "resuming")
            identity["teacher"] = teacher.spec = existing["teacher"]
    difference = _first_difference(existing, identity) if existing is not None else None
    if difference is not None and not shards and not (manifest or {}).get("shards"):
        message(f"note: '{out}' holds the manifest of a run that wrote no shard ({difference[0]}: "
                f"{difference[1]!r} there); starting afresh")
        manifest, difference = None, None
    if difference is not None:
        key, there, now = difference
        raise UserError(f"output directory '{out}' holds a different synthesis ({key}: {there!r} "
                        f"there, {now!r} now); choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if shard_io.TMP_PATTERN.match(stale.name) and stale.is_file():
            stale.unlink()
    old = manifest or {}
    new = dict(old)
    new.update({
        "format": shard_io.FORMAT, "format_version": shard_io.FORMAT_VERSION, "config": identity,
        "teacher": teacher.describe(), "num_shards": num_shards, "images_expected": images,
        "created": old.get("created", _now()),
    })
    new.setdefault("shards", [])
    new.setdefault("images", 0)
    new.setdefault("complete", False)
    _write_manifest_if_changed(out, old, new)


def _write_manifest_if_changed(out: Path, old: dict, new: dict) -> None:
    """Write the manifest only when something besides its timestamp changes: a finished rerun touches nothing."""
    ignore = ("updated",)
    if {k: v for k, v in old.items() if k not in ignore} != {k: v for k, v in new.items() if k not in ignore} \
            or not (out / shard_io.MANIFEST).is_file():
        write_manifest(out, dict(new, updated=_now()))


def _only_dfkd_files(out: Path) -> bool:
    """True when a directory holds nothing but what dfkd synthesize writes (logs, its temporary files)."""
    for entry in out.iterdir():
        if entry.name == "logs" and entry.is_dir():
            if not all(re.fullmatch(r"synthesis-rank\d+\.jsonl", log.name) for log in entry.iterdir()):
                return False
        elif not shard_io.TMP_PATTERN.match(entry.name):
            return False
    return True


def _same_teacher_file(existing: dict, identity: dict, manifest: Optional[dict], teacher: Teacher) -> bool:
    """Whether the recorded teacher and this one are the same teacher file under two paths: compared by content
    (weights sha256, normalisation, input size), never by the path."""
    if not (_is_teacher_file(existing.get("teacher")) and _is_teacher_file(identity["teacher"])):
        return False
    if existing.get("teacher_weights_sha256") != identity["teacher_weights_sha256"]:
        return False
    recorded = (manifest or {}).get("teacher") or {}
    now = teacher.describe()
    return all(recorded.get(key, now[key]) == now[key] for key in ("mean", "std", "input_size", "num_classes"))


def absolute_teacher_spec(spec: str) -> str:
    """A teacher file as an absolute path (so shards name it from any working directory); other specs unchanged."""
    if spec and _is_teacher_file(spec) and Path(spec).is_file():
        return str(Path(spec).resolve())
    return spec


def _is_teacher_file(spec: Any) -> bool:
    return isinstance(spec, str) and not spec.startswith(("timm:", "torchvision:"))


def _first_difference(a: dict, b: dict) -> Optional[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of the first setting where two nested configs differ, or None.

    Two teacher files with the same weights (sha256) are the same teacher, whatever path names them (relative or
    absolute, another node's mount point)."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    if (_is_teacher_file(flat_a.get("teacher")) and _is_teacher_file(flat_b.get("teacher"))
            and flat_a.get("teacher_weights_sha256") == flat_b.get("teacher_weights_sha256")):
        flat_a["teacher"] = flat_b["teacher"]
    key = next((k for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)), None)
    return None if key is None else (key, flat_a.get(key), flat_b.get(key))


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _existing_identity(out: Path) -> Optional[dict]:
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest and "config" in manifest:
        return manifest["config"]
    for path in shard_io.list_shards(out):
        try:
            config = shard_io.read_shard_config(path)
        except Exception:  # noqa: BLE001 - a damaged shard is handled (regenerated) later
            continue
        if isinstance(config, dict):
            return config
    return None


def _append_log(path: Path, record: dict) -> None:
    path.parent.mkdir(exist_ok=True)  # created with the first unit: a run that fails before it leaves no logs
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
