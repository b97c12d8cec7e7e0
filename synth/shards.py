"""HDF5 shard format v1: atomic writer, lazy reader Dataset, manifest, verify (specified in docs/shards.md)."""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from synth.errors import UserError

FORMAT = "dfkd-shard"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.h5$")
COMPRESSIONS = ("none", "lzf", "gzip")


def shard_name(index: int) -> str:
    """File name of shard `index` (never depends on the writing rank)."""
    return f"shard-{index:06d}.h5"


def content_digest(images: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray,
                   logits: Optional[np.ndarray]) -> str:
    """sha256 over images (uint8), labels and sample_ids (<i8) and, when present, logits (<f2), in that order."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(sample_ids, dtype="<i8").tobytes())
    if logits is not None:
        digest.update(np.ascontiguousarray(logits, dtype="<f2").tobytes())
    return digest.hexdigest()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dfkd")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "unknown"


def write_shard(path: str | Path, images: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray,
                logits: Optional[np.ndarray], *, num_classes: int, mean: Sequence[float], std: Sequence[float],
                teacher: dict, config: dict, class_names: Optional[Sequence[str]] = None,
                compression: str = "none") -> str:
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
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "resolution": height,
                "num_classes": num_classes, "mean": np.asarray(mean, dtype=np.float64),
                "std": np.asarray(std, dtype=np.float64), "teacher": json.dumps(teacher, sort_keys=True),
                "config": json.dumps(config, sort_keys=True), "digest": digest, "dfkd_version": _package_version(),
            })
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def list_shards(root: str | Path) -> list[Path]:
    """Finished shard files in a directory, sorted by index (temporary files excluded)."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if SHARD_PATTERN.match(p.name)) if root.is_dir() else []


def shard_index(path: str | Path) -> int:
    """The index k of `shard-k.h5`."""
    match = SHARD_PATTERN.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a shard file name")
    return int(match.group(1))


def _check_version(path: Path, attrs: Any) -> None:
    if attrs.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a dfkd shard (format attribute is {attrs.get('format')!r})")
    version = int(attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise UserError(f"shard '{path}' has format_version {version}; this dfkd reads up to "
                        f"{FORMAT_VERSION}, upgrade dfkd")


@dataclass
class VerifiedShard:
    """A shard whose content matched its digest: its manifest entry, labels and (optional) teacher logits."""

    file: str
    digest: str
    labels: np.ndarray
    logits: Optional[np.ndarray]

    def summary(self) -> dict[str, Any]:
        """Name, count and digest, as listed in the manifest."""
        return {"file": self.file, "count": int(len(self.labels)), "digest": self.digest}


def load_verified(path: str | Path) -> tuple[Optional[VerifiedShard], Optional[str]]:
    """(the shard, None) if it opens, has the v1 layout and matches its digest; else (None, what is wrong).
    One read of the file serves both the check and what resume and verify need from it."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            _check_version(path, f.attrs)
            labels = f["labels"][:]
            logits = f["teacher_logits"][:] if "teacher_logits" in f else None
            n = len(labels)
            if len(f["images"]) != n or len(f["sample_ids"]) != n or (logits is not None and len(logits) != n):
                return None, "dataset lengths differ"
            digest = str(f.attrs.get("digest"))
            if content_digest(f["images"][:], labels, f["sample_ids"][:], logits) != digest:
                return None, "content does not match its digest"
    except UserError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any read failure means a damaged shard
        return None, f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return VerifiedShard(path.name, digest, labels, logits), None


def verify_shard(path: str | Path) -> Optional[str]:
    """None if the shard opens, has the v1 layout and its content matches its digest; else what is wrong."""
    return load_verified(path)[1]


def read_shard_config(path: str | Path) -> dict:
    """The synthesis config stored in a shard's attributes."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


def write_manifest(root: str | Path, manifest: dict) -> None:
    """Write manifest.json atomically."""
    path = Path(root) / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(root: str | Path) -> Optional[dict]:
    """The manifest of a shard directory, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc.msg}); delete it, it is rebuilt from the shards") from None


@dataclass
class VerifyReport:
    """Outcome of `verify`: per-shard problems, counts, and what the manifest expects but is missing."""

    shards: int = 0
    images: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every shard verifies and none is missing."""
        return not self.problems and not self.missing

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"ok": self.ok, "shards": self.shards, "images": self.images,
                "problems": self.problems, "missing": self.missing}


def verify(root: str | Path) -> VerifyReport:
    """Check every shard's layout and digest, and that the manifest's expected shards are all present."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"shard directory '{root}' does not exist")
    report = VerifyReport()
    paths = list_shards(root)
    for path in paths:
        shard, problem = load_verified(path)
        report.shards += 1
        if problem:
            report.problems[path.name] = problem
        else:
            report.images += len(shard.labels)
    manifest = read_manifest(root)
    if manifest:
        present = {p.name for p in paths}
        expected = [shard_name(i) for i in range(int(manifest.get("num_shards", 0)))]
        report.missing = [name for name in expected if name not in present]
    return report


class ShardDataset(Dataset):
    """Images from a shard directory as (uint8 CHW tensor or PIL, label[, teacher logits]); lazy per-worker handles."""

    def __init__(self, root: str | Path | Sequence[str | Path], return_logits: bool = False, as_pil: bool = False,
                 transform: Optional[Callable] = None):
        paths = [Path(p) for p in root] if isinstance(root, (list, tuple)) else list_shards(root)
        if not paths:
            raise UserError(f"no shards (shard-XXXXXX.h5) found in '{root}'")
        self.paths, self.return_logits, self.as_pil, self.transform = paths, return_logits, as_pil, transform
        counts, labels, ids = [], [], []
        for path in paths:
            with h5py.File(path, "r") as f:
                _check_version(path, f.attrs)
                if return_logits and "teacher_logits" not in f:
                    raise UserError(f"shard '{path}' has no teacher_logits (synthesized with logits off)")
                if path == paths[0]:
                    self._read_attrs(f)
                labels.append(f["labels"][:])
                ids.append(f["sample_ids"][:])
                counts.append(len(labels[-1]))
        self.labels = np.concatenate(labels)
        self.sample_ids = np.concatenate(ids)
        self._offsets = np.cumsum([0] + counts).tolist()
        self._files: dict[int, tuple[h5py.File, h5py.Dataset, Optional[h5py.Dataset]]] = {}
        self._pid = os.getpid()

    def _read_attrs(self, f: h5py.File) -> None:
        attrs = f.attrs
        self.num_classes = int(attrs["num_classes"])
        self.resolution = int(attrs["resolution"])
        self.mean = tuple(float(v) for v in attrs["mean"])
        self.std = tuple(float(v) for v in attrs["std"])
        self.teacher = json.loads(attrs["teacher"])
        self.config = json.loads(attrs["config"])
        self.format_version = int(attrs["format_version"])
        self.class_names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]] \
            if "class_names" in f else None

    def __len__(self) -> int:
        return self._offsets[-1]

    def _open(self, shard: int) -> tuple[h5py.File, h5py.Dataset, Optional[h5py.Dataset]]:
        """This process's (file, images, logits) handles of a shard; dataset objects are cached because the
        name lookup costs far more than reading one image."""
        if os.getpid() != self._pid:  # forked into a worker: never share the parent's handles
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            f = h5py.File(self.paths[shard], "r")
            self._files[shard] = (f, f["images"], f["teacher_logits"] if self.return_logits else None)
        return self._files[shard]

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._offsets, index) - 1
        local = index - self._offsets[shard]
        _, images, logits = self._open(shard)
        array = images[local]
        if self.as_pil:
            from PIL import Image

            image = Image.fromarray(array)
        else:
            image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[index])
        if self.return_logits:
            return image, label, torch.from_numpy(logits[local].astype(np.float32))
        return image, label

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def close(self) -> None:
        """Close the open file handles of this process."""
        for handle, _, _ in self._files.values():
            handle.close()
        self._files = {}
