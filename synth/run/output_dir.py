"""The output directory of a synthesis: what may be resumed or refused, the manifest, the per-rank logs.

dfkd deletes or rewrites only files it can prove it wrote (README.md, "What dfkd writes, deletes and overwrites").
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from synth.common import output_lock
from synth.common.errors import UserError
from synth.generator import chain_file
from synth.shards import card, pictures
from synth.shards import format as shard_io
from synth.shards.manifest import read_manifest, write_manifest
from synth.teachers.teacher import Teacher

LOG_PATTERN = re.compile(r"synthesis-rank\d+\.jsonl")


def prepare_output(
    out: Path, identity: dict, teacher: Teacher, num_shards: int, images: int, message: Callable[[str], None] = print
) -> None:
    """Refuse a directory that holds something else (another synthesis, or files dfkd did not write), delete
    stale temporary files of dfkd's own names, write the manifest (only when it changes).

    When the directory holds the same synthesis with the teacher file named by another path (same weights,
    normalisation and size), `identity` and `teacher` adopt the recorded path: the path is information only."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is not a directory")
    manifest = read_manifest(out) if out.is_dir() else None
    shards = shard_io.list_shards(out)
    _refuse_foreign_directory(out, manifest, shards)
    manifest = _manifest_to_resume(out, identity, teacher, manifest, shards, message)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if (shard_io.TMP_PATTERN.match(stale.name) or chain_file.TMP_PATTERN.match(stale.name)) and stale.is_file():
            stale.unlink()
    old = manifest or {}
    new = dict(old)
    new.update(
        {
            "format": shard_io.FORMAT,
            "format_version": shard_io.FORMAT_VERSION,
            "config": identity,
            "teacher": teacher.describe(),
            "num_shards": num_shards,
            "images_expected": images,
            "created": old.get("created", _now()),
        }
    )
    new.setdefault("shards", [])
    new.setdefault("images", 0)
    new.setdefault("complete", False)
    _write_manifest_if_changed(out, old, new)


def index_shards(out: Path, shards: list[dict], num_shards: int, message: Callable[[str], None] = print) -> None:
    """List every finished shard in the manifest (rank 0, at the end of a run) and write the dataset card with its
    preview.png, and synthesis.png from the unit log (each only when its content changes)."""
    manifest = read_manifest(out) or {}
    updated = dict(manifest, shards=shards, images=sum(s["count"] for s in shards), complete=len(shards) == num_shards)
    _write_manifest_if_changed(out, manifest, updated)
    pictures.write_preview(out, message)
    pictures.write_synthesis_plot(out, message)
    card.write_card(out, updated, message)


def log_path(out: Path, rank: int) -> Path:
    """The JSON-lines log of one rank: a record per synthesized unit."""
    return out / "logs" / f"synthesis-rank{rank}.jsonl"


def append_log(path: Path, record: dict) -> None:
    """Append one record; the logs directory is created with the first unit (a run that fails before leaves none)."""
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def absolute_teacher_spec(spec: str) -> str:
    """A teacher file (or the file of a file.py:factory spec) as an absolute path, so shards name it from any working
    directory; other specs unchanged."""
    if spec and _is_teacher_file(spec) and Path(spec).is_file():
        return str(Path(spec).resolve())
    location, _, factory = (spec or "").rpartition(":")
    if location.endswith(".py") and Path(location).is_file():
        return f"{Path(location).resolve()}:{factory}"
    return spec


def first_difference(a: dict, b: dict) -> Optional[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of the first setting where two nested configs differ, or None.

    Two teacher files with the same weights (sha256) are the same teacher, whatever path names them (relative or
    absolute, another node's mount point)."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    if (
        _is_teacher_file(flat_a.get("teacher"))
        and _is_teacher_file(flat_b.get("teacher"))
        and flat_a.get("teacher_weights_sha256") == flat_b.get("teacher_weights_sha256")
    ):
        flat_a["teacher"] = flat_b["teacher"]
    key = next((k for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)), None)
    return None if key is None else (key, flat_a.get(key), flat_b.get(key))


def _refuse_foreign_directory(out: Path, manifest: Optional[dict], shards: list[Path]) -> None:
    """Refuse a manifest of another format, or a non-empty directory that is no dfkd synthesis directory."""
    if manifest is not None and manifest.get("format") != shard_io.FORMAT:
        raise UserError(
            f"'{out / shard_io.MANIFEST}' is not a dfkd manifest (format {manifest.get('format')!r}); "
            "choose a new or empty --out"
        )
    if out.is_dir() and manifest is None and not shards and not _only_dfkd_files(out):
        raise UserError(
            f"output directory '{out}' is not empty and is not a dfkd synthesis directory (no "
            f"{shard_io.MANIFEST}, no shard-XXXXXX.h5); choose a new or empty --out"
        )


def _manifest_to_resume(
    out: Path,
    identity: dict,
    teacher: Teacher,
    manifest: Optional[dict],
    shards: list[Path],
    message: Callable[[str], None],
) -> Optional[dict]:
    """The manifest this run builds on: `manifest`, or None when it records another run that wrote no shard (this
    run starts afresh). Another synthesis with shards is refused; the same teacher file under another path is
    adopted (see `prepare_output`)."""
    existing = existing_identity(out)
    if existing is not None and _same_teacher_file(existing, identity, manifest, teacher):
        if existing["teacher"] != identity["teacher"]:
            message(
                f"note: teacher '{identity['teacher']}' has the same weights (sha256 "
                f"{identity['teacher_weights_sha256'][:12]}) as '{existing['teacher']}' recorded in '{out}'; "
                "resuming"
            )
            identity["teacher"] = teacher.spec = existing["teacher"]
    difference = first_difference(existing, identity) if existing is not None else None
    if difference is not None and not shards and not (manifest or {}).get("shards"):
        message(
            f"note: '{out}' holds the manifest of a run that wrote no shard ({difference[0]}: "
            f"{difference[1]!r} there); starting afresh"
        )
        return None
    if difference is not None:
        key, there, now = difference
        raise UserError(
            f"output directory '{out}' holds a different synthesis ({key}: {there!r} "
            f"there, {now!r} now); choose another --out or delete it"
        )
    return manifest


def _write_manifest_if_changed(out: Path, old: dict, new: dict) -> None:
    """Write the manifest only when something besides its timestamp changes: a finished rerun touches nothing."""
    ignore = ("updated",)
    if {k: v for k, v in old.items() if k not in ignore} != {k: v for k, v in new.items() if k not in ignore} or not (
        out / shard_io.MANIFEST
    ).is_file():
        write_manifest(out, dict(new, updated=_now()))


def _only_dfkd_files(out: Path) -> bool:
    """True when a directory holds nothing but what dfkd synthesize writes (logs, its temporary files, its
    dataset card and pictures, its lock)."""
    for entry in out.iterdir():
        if entry.name == "logs" and entry.is_dir():
            if not all(LOG_PATTERN.fullmatch(log.name) for log in entry.iterdir()):
                return False
        elif entry.name == card.CARD and entry.is_file():
            if card.MARKER not in entry.read_text(errors="replace"):
                return False
        elif entry.name in pictures.PICTURES and entry.is_file():
            if not pictures.is_dfkd_png(entry):
                return False
        elif entry.name == output_lock.LOCK_NAME and entry.is_file():
            continue  # this run's lock (synth.common.output_lock), or one a killed run left
        elif chain_file.CHAIN_PATTERN.match(entry.name) or chain_file.TMP_PATTERN.match(entry.name):
            continue  # the generator engine's meta weights between runs (synth.generator.chain_file)
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


def _is_teacher_file(spec: Any) -> bool:
    """True for a teacher given as a file path (not `timm:` or `torchvision:`)."""
    return isinstance(spec, str) and not spec.startswith(("timm:", "torchvision:"))


def _flatten(data: dict, prefix: str = "") -> dict:
    """A nested dict as one level with dotted keys."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def existing_identity(out: Path) -> Optional[dict]:
    """The synthesis config recorded in a directory: the manifest's, else the first readable shard's, else None."""
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


def _now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
