"""manifest.json, the index of a shard directory: atomic write, and a read that refuses a malformed file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from synth.common.errors import UserError
from synth.shards.format import MANIFEST, MAX_SHARDS


def write_manifest(root: str | Path, manifest: dict) -> None:
    """Write manifest.json atomically."""
    path = Path(root) / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(root: str | Path) -> Optional[dict]:
    """The manifest of a shard directory, or None when there is none; a malformed one is refused naming the file."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    fix = "delete it, it is rebuilt from the shards"
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc.msg}); {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}); {fix}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"'{path}' holds a {type(manifest).__name__}, not a dfkd manifest (a JSON object); {fix}")
    num_shards = manifest.get("num_shards", 0)
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 0 <= num_shards <= MAX_SHARDS:
        raise UserError(f"'{path}' has num_shards {num_shards!r}; accepted: a whole number 0-{MAX_SHARDS}; {fix}")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in shards):
        raise UserError(f"'{path}' has a malformed shards list; {fix}")
    for key, kind in (("config", dict), ("teacher", dict), ("complete", bool)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise UserError(f"'{path}' has {key} {manifest[key]!r}; accepted: a JSON {kind.__name__}; {fix}")
    return manifest
