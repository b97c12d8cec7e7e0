"""Seeding, the RNG states a checkpoint holds (torch, CUDA, numpy, python) for an exact resume, and the per-batch
stream of the batch augmentations."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The torch, CUDA, numpy and python RNG states (as weights_only-loadable data)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own RNG stream under DDP."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def batch_seed(*key: int) -> int:
    """A 63-bit seed from (seed, epoch, step, rank): each batch's augmentations depend on nothing drawn before."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


@contextmanager
def batch_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and numpy's global one with `seed` inside, and put both back afterwards: the
    batch augmentations draw from there, the rest of training (drop path, ...) keeps its own stream."""
    saved = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(saved)
