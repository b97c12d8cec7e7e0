"""Where work runs and how it reports: devices, CPU threads (one rule for every command) and progress callbacks."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from synth.common.errors import UserError

if TYPE_CHECKING:
    from synth.common.distributed import Ranks


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; a CUDA request without CUDA is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cores(seconds: float = 0.25) -> int:
    """Cores that other processes leave idle, measured over `seconds` from /proc/stat (all cores this process
    may use where /proc/stat is unavailable)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return available_cores()
    return round((os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0))


def default_threads(processes: int = 1) -> int:
    """The thread count when none is given: the cores left idle by other processes now, shared among this
    machine's `processes` (torchrun's local world size), at least 1. On a busy machine, more threads than idle
    cores make every parallel region wait for a descheduled thread (bench/threads.py, beside one busy core on 2
    cores: 3.1-7.6x slower with all cores, 1.1-1.3x with this rule)."""
    return max(1, min(idle_cores(), available_cores()) // processes)


def use_threads(requested: int = 0, processes: int = 1, recorded: int = 0, agree: Optional[Ranks] = None) -> int:
    """The one thread rule of every command: set torch's CPU thread count and return it. The count is `requested`;
    else `recorded` (the count a run being resumed recorded, so it repeats its numbers whatever the load now);
    else `default_threads(processes)`. With `agree` (collective) every rank takes the least count any rank
    resolved, so that all of them compute the same thing."""
    threads = requested or recorded or default_threads(processes)
    if agree is not None:
        threads = min(agree.all_gather(threads))
    torch.set_num_threads(threads)
    return threads


@dataclass
class Progress:
    """Callbacks long work reports to (the CLI binds them to tqdm and stderr)."""

    start: Callable[[int], None] = lambda total: None
    advance: Callable[[int, dict], None] = lambda images, losses: None
    message: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
    close: Callable[[], None] = lambda: None
