"""Run a synthesis: work units (`synth.run.units`) -> inversion -> shards, resumable, on one or many processes.

Ranks (torchrun, see `synth.common.distributed`): rank r writes shards k with k % world_size == r (the generator
engine's meta chains: those of its chains, synth.generator.chains) and nothing else; rank 0 alone checks the config
against the output directory, deletes stale `.tmp` files and writes the manifest (`synth.run.output_dir`). Each
unit's result depends only on (config, unit id) (and its chain's earlier units), so the shards are the same for any
number of processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from synth.common import output_lock
from synth.common.distributed import Ranks
from synth.common.errors import UserError
from synth.common.runtime import Progress, available_cores, resolve_device, use_threads
from synth.config import SynthesisConfig
from synth.inversion.competitor import Competitor, load_competitor
from synth.inversion.invert import InversionResult
from synth.run.identity import identity as shard_identity
from synth.run.image_engines import make_engine
from synth.run.output_dir import (
    absolute_teacher_spec,
    append_log,
    existing_identity,
    first_difference,
    index_shards,
    log_path,
    prepare_output,
)
from synth.run.summary import RankResult, all_shards, low_fidelity_warning, summarize
from synth.run.units import Unit, UnitPlan, parse_classes, plan_units
from synth.shards import format as shard_io
from synth.shards.verify import load_verified
from synth.shards.writer import write_shard
from synth.teachers.input_size import fit_resolutions, input_note
from synth.teachers.sources import load_teacher, teacher_options
from synth.teachers.teacher import Teacher


def synthesize(
    config: SynthesisConfig,
    out: str | Path,
    progress: Optional[Progress] = None,
    ranks: Optional[Ranks] = None,
    teacher: Optional[Teacher] = None,
) -> dict[str, Any]:
    """Run (or resume) a synthesis into `out`; returns a summary covering every rank's shards. `teacher`: one already
    loaded (the Python API's in-memory network), else config.teacher is loaded.

    With `ranks` (from `synth.common.distributed.init()` under torchrun) rank r does shards k with k % world_size == r;
    rank 0 alone checks the config against `out`, deletes stale `.tmp` files and writes the manifest.
    """
    progress = progress or Progress()
    ranks = ranks or Ranks()
    started = time.time()
    out = Path(out)
    config = replace(config, teacher=absolute_teacher_spec(config.teacher))
    with ranks.together():
        config.validate()
    with output_lock.held(out, ranks, progress.message):  # one run per directory: rank 0 holds it for every rank
        return _synthesize(config, out, progress, ranks, started, teacher)


def _synthesize(
    config: SynthesisConfig, out: Path, progress: Progress, ranks: Ranks, started: float, teacher: Optional[Teacher]
) -> dict[str, Any]:
    """`synthesize` once the config is valid and the output directory is this run's alone."""
    with ranks.together():
        recorded = _recorded_threads(out)
    # on every rank, whatever OMP_NUM_THREADS says; the ranks agree on one count, recorded in the config
    config = replace(config, threads=use_threads(config.threads, ranks.local_world_size, recorded, agree=ranks))
    with ranks.together():  # every rank loads the teacher and works out the config; all must succeed and agree
        run = _prepare_run(config, out, ranks, teacher)
    note = input_note(run.teacher, config.schedule.resolutions)
    if note and ranks.rank == 0:
        progress.message(note)
    if ranks.distributed:  # e.g. another node's teacher file, or --threads 0 on machines with other core counts
        identities = ranks.all_gather(run.identity)
        with ranks.together():
            _check_same_identity(identities)
    with ranks.together():
        if ranks.rank == 0:
            _prepare_output_directory(run, ranks, progress)
    if ranks.rank == 0:  # once every input is checked: where the teacher's preprocessing came from
        for note in run.teacher.notes:
            progress.message(note)
    if ranks.distributed:  # rank 0 may have adopted the recorded teacher path (same weights under another name)
        run.identity = ranks.all_gather(run.identity)[0]
        run.teacher.spec = run.identity["teacher"]
    with ranks.together():
        mine, todo = _scan_finished_shards(run, ranks, progress)
    _synthesize_shards(run, todo, mine, ranks, progress)  # no collective until every rank has finished its shards
    gathered: list[RankResult] = ranks.all_gather(mine)
    if ranks.rank == 0:
        index_shards(run.out, all_shards(gathered), run.num_shards, progress.message)
    return summarize(gathered, out, run.num_shards, config.store_logits, time.time() - started)


@dataclass
class _Run:
    """What every rank works from once the run is prepared."""

    config: SynthesisConfig
    out: Path
    device: torch.device
    teacher: Teacher
    units: UnitPlan
    identity: dict  # the config as the shards record it (SynthesisConfig.identity)
    competitor: Optional[Competitor]
    engine: Any  # makes each unit's images (synth.run.image_engines: pixels or generator)

    @property
    def num_shards(self) -> int:
        """Shards of the whole run (the last may hold fewer units)."""
        return -(-len(self.units) // self.config.units_per_shard)

    def shard_units(self, index: int) -> list[Unit]:
        """The units shard `index` holds."""
        per_shard = self.config.units_per_shard
        return self.units[index * per_shard : (index + 1) * per_shard]


def _prepare_run(config: SynthesisConfig, out: Path, ranks: Ranks, preloaded: Optional[Teacher] = None) -> _Run:
    """This rank's device, the teacher (and a competing student), the units and the identity of a validated
    config whose threads are set."""
    device = ranks.local_device(resolve_device(config.device))
    teacher = (
        preloaded.to(device)
        if preloaded is not None
        else load_teacher(config.teacher, device=device, options=teacher_options(config))
    )
    fit_resolutions(teacher, config.schedule.resolutions, config.teacher)
    classes = parse_classes(config.classes, teacher.num_classes)
    units = plan_units(classes, config.per_class, config.classes_per_batch, config.images_per_class)
    if -(-len(units) // config.units_per_shard) > shard_io.MAX_SHARDS:
        raise UserError(
            f"{len(classes)} classes x per_class {config.per_class} make "
            f"{-(-len(units) // config.units_per_shard)} shards of {config.units_per_shard} "
            f"unit(s); at most {shard_io.MAX_SHARDS} shards fit the shard names: lower per_class "
            "or raise units_per_shard"
        )
    competitor = load_competitor(config.student, device) if config.student else None
    if competitor is not None and competitor.num_classes != teacher.num_classes:
        raise UserError(
            f"the student '{config.student}' has {competitor.num_classes} classes and the teacher "
            f"'{config.teacher}' has {teacher.num_classes}; the competition term compares their predictions class "
            f"by class, so --student must be a student of this teacher ({teacher.num_classes} classes)"
        )
    identity = shard_identity(config, teacher, classes, competitor)
    engine = make_engine(config, teacher, device, units, competitor)
    return _Run(config, out, device, teacher, units, identity, competitor, engine)


def _recorded_threads(out: Path) -> int:
    """The thread count a run already in `out` recorded (a run without --threads resumes with it, so it makes the
    same images whatever the load now); 0 when there is none."""
    try:
        recorded = existing_identity(out)
    except Exception:  # noqa: BLE001 - an unreadable directory is reported by rank 0's output check
        recorded = None
    if isinstance(recorded, dict) and isinstance(recorded.get("threads"), int) and recorded["threads"] > 0:
        return recorded["threads"]
    return 0


def _check_same_identity(identities: list[dict]) -> None:
    """Every rank must synthesize the same thing (same teacher weights, classes, threads, ...) as rank 0."""
    for rank, identity in enumerate(identities[1:], start=1):
        difference = first_difference(identity, identities[0])
        if difference is not None:
            key, there, first = difference
            raise UserError(
                f"rank {rank} computes a different config than rank 0 ({key}: {there!r} "
                f"there, {first!r} on rank 0); give every node the same files and "
                "an explicit --threads"
            )


def _prepare_output_directory(run: _Run, ranks: Ranks, progress: Progress) -> None:
    """Rank 0: check the output directory against the run, delete stale temporary files, write the manifest;
    note when the processes on this machine ask for more threads than it has cores."""
    prepare_output(
        run.out, run.identity, run.teacher, run.num_shards, len(run.units) * run.config.batch_size, progress.message
    )
    cores = available_cores()
    if ranks.local_world_size * run.config.threads > cores:
        progress.message(
            f"note: {ranks.local_world_size} process(es) x {run.config.threads} threads exceed this "
            f"machine's {cores} cores; --threads (part of the config) sets the count"
        )


def _scan_finished_shards(run: _Run, ranks: Ranks, progress: Progress) -> tuple[RankResult, list[int]]:
    """This rank's finished shards that verify (counted in the result) and the shard indices left to do; a damaged
    shard is deleted and done again."""
    if not (run.out / shard_io.MANIFEST).is_file():
        raise UserError(
            f"rank {ranks.rank} does not see {run.out / shard_io.MANIFEST} written by rank 0: "
            "--out must be a directory every node shares"
        )
    mine = RankResult()
    todo = []
    for k in run.engine.rank_shards(run.num_shards, ranks.rank, ranks.world_size):
        path = run.out / shard_io.shard_name(k)
        if path.exists():
            shard, problem = load_verified(path, run.identity)
            if problem is None:
                mine.add_existing(shard)
                continue
            progress.message(f"shard {path.name} is damaged ({problem}); regenerating it")
            path.unlink()
            mine.damaged[path.name] = problem
        todo.append(k)
    return mine, todo


def _synthesize_shards(run: _Run, todo: list[int], mine: RankResult, ranks: Ranks, progress: Progress) -> None:
    """Synthesize and write the shards `todo`, counting them in `mine`."""
    if run.device.type == "cuda":
        run.teacher.model.to(memory_format=torch.channels_last)
    progress.start(sum(len(run.shard_units(k)) for k in todo) * run.config.batch_size)
    run.engine.prepare(run.out, run.identity, todo, progress.message)
    try:
        for k in todo:
            _synthesize_shard(run, k, mine, ranks, progress)
            run.engine.shard_done(k)  # the generator engine saves its meta weights here
    finally:
        progress.close()


def _synthesize_shard(run: _Run, index: int, mine: RankResult, ranks: Ranks, progress: Progress) -> None:
    """Invert every unit of shard `index`, then write the shard (atomically) and count it in `mine`."""
    shard_units = run.shard_units(index)
    results = [_synthesize_unit(run, unit, index, mine, ranks, progress) for unit in shard_units]
    labels = np.concatenate([u.labels for u in shard_units]).astype(np.int64)
    logits = torch.cat([r.logits for r in results]).half().numpy() if run.config.store_logits else None
    path = run.out / shard_io.shard_name(index)
    teacher = run.teacher
    digest = write_shard(
        path,
        images=torch.cat([r.images for r in results]).numpy(),
        labels=labels,
        sample_ids=np.concatenate([u.sample_ids() for u in shard_units]),
        logits=logits,
        num_classes=teacher.num_classes,
        mean=teacher.mean,
        std=teacher.std,
        teacher=teacher.describe(),
        config=run.identity,
        class_names=teacher.class_names,
        compression=run.config.compression,
    )
    mine.add_written(path.name, digest, labels, logits)


def _synthesize_unit(
    run: _Run, unit: Unit, shard: int, mine: RankResult, ranks: Ranks, progress: Progress
) -> InversionResult:
    """Invert one unit from its own generator; refuse a non-finite result, log the unit, warn on low fidelity."""
    config = run.config
    unit_start = time.time()
    labels = torch.tensor(unit.labels, device=run.device)
    result = run.engine.unit(unit, labels)
    bad = {name: value for name, value in result.losses.items() if not math.isfinite(value)}
    if bad or not bool(torch.isfinite(result.logits).all()):  # read once per unit, at its end
        raise UserError(
            f"unit {unit.id} (classes {list(unit.classes)}) ended with a non-finite loss "
            f"{bad or 'in the teacher logits'}; {shard_io.shard_name(shard)} was not written. "
            "Lower --lr or the loss weights, or check the teacher"
        )
    hits = int((result.logits.argmax(1) == labels.cpu()).sum())
    append_log(
        log_path(run.out, ranks.rank),
        {
            "unit": unit.id,
            "shard": shard,
            "rank": ranks.rank,
            "threads": torch.get_num_threads(),
            "seconds": round(time.time() - unit_start, 3),
            "fidelity": hits / len(labels),
            "losses": result.losses,
            "stage_totals": result.stage_totals,
        },
    )
    if mine.add_unit(hits, len(labels)):
        progress.message(
            low_fidelity_warning(
                mine.unit_hits / mine.unit_total, run.teacher.num_classes, result.losses, config.losses
            )
        )
    progress.advance(len(labels), result.losses)
    return result
