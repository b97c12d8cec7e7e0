"""Resume: what checkpoint.pt holds and how a run continues from it.

The checkpoint (written at the end of every epoch) holds the student, the aligners, the optimiser, the scheduler,
the epoch and stage, and the RNG states (each rank's under DDP); each epoch's shuffle order comes from a generator
seeded by (seed, epoch), each batch's augmentations from one seeded by (seed, epoch, step, rank). A resumed run
therefore repeats the uninterrupted one exactly (on CPU at the same thread count, with the same number of
processes).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dfkd.distill.build import Run
from dfkd.distill.config import DistillConfig
from dfkd.distill.output import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from dfkd.distill.rng import rng_state, set_rng_state
from synth.common.distributed import Ranks
from synth.common.errors import UserError

# settings a run may be resumed with changed: they do not change what is trained (threads: up to float rounding)
RESUME_FREE = ("resume", "workers", "threads", "device", "val_data", "val_every", "allow_other_teacher")


def check_resume(saved: dict, config: DistillConfig) -> None:
    """Refuse to resume with settings (other than RESUME_FREE) that differ from the checkpoint's."""
    now = asdict(config)
    for key in sorted(set(saved) | set(now)):
        if key not in RESUME_FREE and saved.get(key) != now.get(key):
            raise UserError(
                f"cannot resume: the checkpoint was made with {key}={saved.get(key)!r}, "
                f"now {key}={now.get(key)!r}; use the same settings or another --out"
            )


def check_world(state: dict, world_size: int, batch_size: int) -> None:
    """A checkpoint resumes only with the number of processes it was made with (that fixes the effective batch,
    the learning rate, the steps per epoch and each rank's share of the data and RNG states)."""
    saved = state.get("world_size", 1)
    if saved != world_size:
        raise UserError(
            f"cannot resume: the checkpoint was made with {saved} process(es) (effective batch "
            f"{saved * batch_size}), now {world_size}; launch the same number of processes "
            "or use another --out"
        )


def checkpoint(
    config: DistillConfig, run: Run, epoch: int, stage: int, updates: int, record: dict[str, Any], ranks: Ranks
) -> dict[str, Any]:
    """The checkpoint after `epoch` epochs (collective under DDP: every rank's RNG state is gathered)."""
    rng = {"rng": rng_state()}
    if ranks.distributed:  # each rank's own stream, for an exact resume
        rng["rng_ranks"] = ranks.all_gather(rng["rng"])
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "stage": stage,
        "updates": updates,
        "student": run.student.state_dict(),
        "aligners": run.aligners.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        **rng,
        "world_size": ranks.world_size,
        "record": record,
        "config": asdict(config),
    }


def restore(run: Run, saved: dict[str, Any], ranks: Ranks) -> tuple[int, int]:
    """Load a checkpoint's weights, optimiser, schedule and this rank's RNG state; returns (epochs done, updates)."""
    run.student.load_state_dict(saved["student"])
    run.aligners.load_state_dict(saved["aligners"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng_ranks"][ranks.rank] if ranks.distributed else saved["rng"])
    return saved["epoch"], saved["updates"]
