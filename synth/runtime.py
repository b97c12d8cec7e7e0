"""Where work runs and how it reports: devices, CPU threads (one rule for every command) and progress callbacks."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from synth.errors import UserError


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


def default_threads() -> int:
    """The thread count used when none is given: all cores this process may run on."""
    return available_cores()


def use_threads(requested: int = 0) -> int:
    """Set torch's CPU thread count: `requested`, or `default_threads()` when 0; returns the count set."""
    threads = requested or default_threads()
    torch.set_num_threads(threads)
    return threads


@dataclass
class Progress:
    """Callbacks long work reports to (the CLI binds them to tqdm and stderr)."""

    start: Callable[[int], None] = lambda total: None
    advance: Callable[[int, dict], None] = lambda images, losses: None
    message: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
    close: Callable[[], None] = lambda: None
