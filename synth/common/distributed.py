"""torch.distributed under torchrun: detect the launch, join the process group, and the few collectives
synthesis needs (barrier, gather, "did every rank succeed?"). One process without torchrun is rank 0 of 1
and every collective is a no-op. Rendezvous is torchrun's (MASTER_ADDR/PORT or c10d): nothing home-made.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from synth.common.errors import UserError

# Ranks wait at the end of a synthesis for the slowest one (after a resume some ranks may have nothing
# left to do); torch's default of 30 min (10 min for NCCL) would fail healthy runs. torchrun tears all
# workers down as soon as one of them dies, so a long wait never outlives a crashed rank.
DEFAULT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun tells each worker: its global rank, the world size, and its place on its node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env() -> Optional[LaunchEnv]:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        return LaunchEnv(
            rank=int(os.environ["RANK"]),
            world_size=world,
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        )
    except ValueError:
        raise UserError("RANK/WORLD_SIZE/LOCAL_RANK are not integers; launch with torchrun") from None


def wants_cuda(device: str) -> bool:
    """True when `device` (auto, cpu, cuda, cuda:N) will run on a GPU here: then the backend is NCCL."""
    return device.startswith("cuda") or device == "auto" and torch.cuda.is_available()


@dataclass
class Ranks:
    """This process's place in a run and the collectives synthesis uses; the default is one process (rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None
    owns_group: bool = False
    failed_together: bool = False

    @property
    def distributed(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1

    def local_device(self, device: torch.device) -> torch.device:
        """This rank's device: under torchrun a CUDA device means cuda:LOCAL_RANK (naming one GPU, cuda:N, is refused
        there: every rank would take the same one); CPU, or one process, keeps `device` as it is."""
        if device.type != "cuda" or not self.distributed:
            return device
        if device.index is not None:
            raise UserError(
                f"device '{device}' names one GPU, but under torchrun each rank takes cuda:LOCAL_RANK; "
                "use --device cuda"
            )
        return torch.device("cuda", self.local_rank)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's (picklable) `value`, indexed by rank, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def check_all(self, error: Optional[BaseException]) -> None:
        """Collective: each rank says whether its step failed; if any did, every rank raises (none is left
        waiting at a later barrier). The failing rank re-raises its own error; the others raise one naming it."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        mine = None if error is None else (isinstance(error, UserError), _one_line(error))
        reports = self.all_gather(mine)
        if error is not None:
            self.failed_together = True
            raise error
        for rank, report in enumerate(reports):
            if report is not None:
                self.failed_together = True
                user, message = report
                raise (UserError if user else RuntimeError)(f"rank {rank} stopped the run: {message}")

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run a step that every rank must pass: an exception inside is reported to all ranks and every rank raises
        (`check_all`), so none is left waiting at a later collective. One process: the exception propagates."""
        error = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
            error = exc
        self.check_all(error)

    def close(self) -> None:
        """Leave the process group if this object joined it. After a failure every rank saw (`check_all`), wait
        for all ranks first: `init` also runs this at exit, after the error lines are printed, so torchrun (which
        stops the other workers when one exits) cannot cut off the rank that reports the real cause."""
        if self.owns_group and dist.is_initialized():
            if self.failed_together:
                try:
                    self.barrier()
                except Exception:  # noqa: BLE001 - leaving anyway
                    pass
            dist.destroy_process_group()
        self.owns_group = False


def init(device: str = "cpu", backend: Optional[str] = None, timeout: timedelta = DEFAULT_TIMEOUT) -> Ranks:
    """Join the torchrun process group (gloo on CPU; NCCL on CUDA with this rank's GPU set from LOCAL_RANK).
    Without torchrun (or with one process) returns a single-process `Ranks`; reuses a group already initialised."""
    env = launch_env()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return Ranks(
            rank=rank,
            world_size=world,
            local_rank=env.local_rank if env else 0,
            local_world_size=env.local_world_size if env else world,
            backend=dist.get_backend(),
        )
    if env is None or env.world_size <= 1:
        return Ranks()
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run a single process")
    backend = backend or ("nccl" if wants_cuda(device) and torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if env.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {env.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                f"use --nproc_per_node {torch.cuda.device_count()} or fewer"
            )
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, timeout=timeout)
    ranks = Ranks(
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
        backend=backend,
        owns_group=True,
    )
    atexit.register(ranks.close)  # on an error path, after the error is printed (see `close`)
    return ranks


def _one_line(error: BaseException) -> str:
    text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    return text.splitlines()[0] if text else type(error).__name__
