"""Writing one shard of format v1 atomically, with the sha256 digest of its content (docs/shards.md)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from synth.common.errors import UserError
from synth.shards.format import COMPRESSIONS, FORMAT, FORMAT_VERSION


def content_digest(images: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray, logits: Optional[np.ndarray]) -> str:
    """sha256 over images (uint8), labels and sample_ids (<i8) and, when present, logits (<f2), in that order."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(sample_ids, dtype="<i8").tobytes())
    if logits is not None:
        digest.update(np.ascontiguousarray(logits, dtype="<f2").tobytes())
    return digest.hexdigest()


def _package_version() -> str:
    """The installed dfkd version, recorded in each shard."""
    try:
        from importlib.metadata import version

        return version("dfkd")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "unknown"


def write_shard(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    sample_ids: np.ndarray,
    logits: Optional[np.ndarray],
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    teacher: dict,
    config: dict,
    class_names: Optional[Sequence[str]] = None,
    compression: str = "none",
) -> str:
    """Write one shard atomically (`.tmp`, close, `os.replace`); returns its content digest."""
    if compression not in COMPRESSIONS:
        raise UserError(f"compression '{compression}' is not one of {', '.join(COMPRESSIONS)}")
    n, height, width, channels = images.shape
    if channels != 3 or images.dtype != np.uint8:
        raise ValueError("images must be uint8 (N, H, W, 3)")
    digest = content_digest(images, labels, sample_ids, logits)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    options = {} if compression == "none" else {"compression": compression}
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.create_dataset("images", data=images, chunks=(1, height, width, 3), **options)
            f.create_dataset("labels", data=labels.astype(np.int64))
            f.create_dataset("sample_ids", data=sample_ids.astype(np.int64))
            if logits is not None:
                f.create_dataset("teacher_logits", data=logits.astype(np.float16))
            if class_names:
                f.create_dataset("class_names", data=list(class_names), dtype=h5py.string_dtype("utf-8"))
            f.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "resolution": height,
                    "num_classes": num_classes,
                    "mean": np.asarray(mean, dtype=np.float64),
                    "std": np.asarray(std, dtype=np.float64),
                    "teacher": json.dumps(teacher, sort_keys=True),
                    "config": json.dumps(config, sort_keys=True),
                    "digest": digest,
                    "dfkd_version": _package_version(),
                }
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest
