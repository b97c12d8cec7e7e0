"""A meta chain's state between runs: `generator-chain-XXXXXX.pt` in the output directory, the meta-learned
generator weights after a shard of the chain, written atomically (`.tmp`, then renamed) after that shard, deleted
once the chain's last shard is written. Only the weights: each unit makes a fresh optimiser and draws from its own
seeded generator, so nothing else carries from one unit to the next."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

import torch

FORMAT = "dfkd-generator-chain"
CHAIN_PATTERN = re.compile(r"^generator-chain-\d{6}\.pt$")
TMP_PATTERN = re.compile(r"^generator-chain-\d{6}\.pt\.tmp$")


def chain_path(out: Path, chain: int) -> Path:
    """Where chain `chain` keeps its state."""
    return Path(out) / f"generator-chain-{chain:06d}.pt"


def identity_digest(identity: dict) -> str:
    """The sha256 of a set's identity (its config as the shards record it): a state from another config is ignored."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def save_chain(out: Path, chain: int, after_shard: int, digest: str, state: dict[str, torch.Tensor]) -> None:
    """Save the chain's meta weights as they are after shard `after_shard` (atomically)."""
    path = chain_path(out, chain)
    tmp = path.with_name(path.name + ".tmp")
    record = {"format": FORMAT, "identity": digest, "chain": chain, "after_shard": after_shard}
    torch.save({**record, "state": {name: value.detach().cpu() for name, value in state.items()}}, tmp)
    os.replace(tmp, path)


def load_chain(out: Path, chain: int, digest: str) -> Optional[tuple[int, dict[str, torch.Tensor]]]:
    """(the shard it follows, the meta weights) of the chain's saved state; None when there is none, it does not
    load, or it belongs to another config."""
    path = chain_path(out, chain)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged state is rebuilt by replaying the chain
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("identity") != digest:
        return None
    if saved.get("chain") != chain or not isinstance(saved.get("after_shard"), int):
        return None
    return saved["after_shard"], saved["state"]


def remove_chain(out: Path, chain: int) -> None:
    """Delete the chain's state (its last shard is written: a finished set holds none)."""
    chain_path(out, chain).unlink(missing_ok=True)
