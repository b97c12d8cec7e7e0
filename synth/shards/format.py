"""HDF5 shard format v1 (specified in docs/shards.md): file names, format constants, and reading shards.

`ShardDataset` reads a directory (or several) lazily; writing is `synth.shards.writer`, the index
`synth.shards.manifest`, checking `synth.shards.verify`.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from synth.common.errors import UserError
from synth.config import COMPRESSIONS  # noqa: F401  (a format constant, declared with the setting)

FORMAT = "dfkd-shard"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.h5$")
# the only temporary files dfkd deletes
TMP_PATTERN = re.compile(r"^(shard-\d{6}\.h5|manifest\.json|preview\.png|synthesis\.png)\.tmp$")
MAX_SHARDS = 1_000_000  # shard names have six digits


def shard_name(index: int) -> str:
    """File name of shard `index` (never depends on the writing rank)."""
    return f"shard-{index:06d}.h5"


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


def check_format_version(path: Path, attrs: Any) -> None:
    """Refuse a file that is no dfkd shard, or a shard of a newer format version than this dfkd reads."""
    if attrs.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a dfkd shard (format attribute is {attrs.get('format')!r})")
    version = int(attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise UserError(
            f"shard '{path}' has format_version {version}; this dfkd reads up to {FORMAT_VERSION}, upgrade dfkd"
        )


def read_shard_config(path: str | Path) -> dict:
    """The synthesis config stored in a shard's attributes."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


def first_shard(directory: str | Path) -> Path:
    """The first shard file of a directory (its attributes describe the whole set)."""
    paths = list_shards(directory)
    if not paths:
        raise UserError(f"no shards (shard-XXXXXX.h5) found in '{directory}'")
    return paths[0]


def set_identity(path: str | Path) -> dict[str, Any]:
    """What must agree for two shard sets to be one training set: teacher weights, classes, resolution."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        check_format_version(path, f.attrs)
        teacher = json.loads(f.attrs["teacher"])
        names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]] if "class_names" in f else None
        return {
            "teacher weights sha256": teacher.get("weights_sha256"),
            "num_classes": int(f.attrs["num_classes"]),
            "class names": names,
            "resolution": int(f.attrs["resolution"]),
        }


def check_combinable(first_shards: Sequence[str | Path]) -> None:
    """Refuse, in one line, sets (given by one shard of each) from different teachers, classes or resolutions."""
    reference = set_identity(first_shards[0])
    for path in first_shards[1:]:
        other = set_identity(path)
        for key in ("teacher weights sha256", "num_classes", "class names", "resolution"):
            if other[key] != reference[key]:
                ours, theirs = (str(v)[:12] if key.startswith("teacher") else v for v in (reference[key], other[key]))
                raise UserError(
                    f"cannot combine '{Path(first_shards[0]).parent}' and '{Path(path).parent}': "
                    f"different {key} ({ours} vs {theirs}); "
                    "sets combine only when they come from the same teacher weights (same class count and names) "
                    "at the same resolution; they may hold different classes of that teacher"
                )


def _shard_paths(root: str | Path | Sequence[str | Path]) -> list[Path]:
    """The shard files `root` names (see `ShardDataset`); several directories must hold combinable sets."""
    directories = (
        [Path(p) for p in root] if isinstance(root, (list, tuple)) and any(Path(p).is_dir() for p in root) else None
    )
    if directories:
        paths = []
        for directory in directories:
            if not directory.is_dir():
                raise UserError(f"shard directory '{directory}' does not exist")
            paths.extend(list_shards(directory))
        check_combinable([first_shard(d) for d in directories])
    else:
        paths = [Path(p) for p in root] if isinstance(root, (list, tuple)) else list_shards(root)
    if not paths:
        raise UserError(f"no shards (shard-XXXXXX.h5) found in '{root}'")
    return paths


class ShardDataset(Dataset):
    """Images from a shard directory as (uint8 CHW tensor or PIL, label[, teacher logits]); lazy per-worker handles."""

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        return_logits: bool = False,
        as_pil: bool = False,
        transform: Optional[Callable] = None,
    ):
        """`root`: a shard directory, a list of shard files, or a list of shard directories (one combined set;
        they must share the teacher weights, classes and resolution)."""
        paths = _shard_paths(root)
        self.paths, self.return_logits, self.as_pil, self.transform = paths, return_logits, as_pil, transform
        labels, ids = [], []
        image_shape: tuple = ()
        for path in paths:
            shard_labels, shard_ids, image_shape = self._read_index(path, image_shape)
            labels.append(shard_labels)
            ids.append(shard_ids)
        self.labels = np.concatenate(labels)
        self.sample_ids = np.concatenate(ids)
        self._offsets = np.cumsum([0] + [len(part) for part in labels]).tolist()
        self._files: dict[int, tuple[h5py.File, h5py.Dataset, Optional[h5py.Dataset]]] = {}
        self._pid = os.getpid()

    def _read_index(self, path: Path, image_shape: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(labels, sample_ids, image shape) of one shard, refusing one that does not fit the set: every shard's
        images must have `image_shape`, the first shard's (whose attributes describe the set)."""
        try:
            with h5py.File(path, "r") as f:
                check_format_version(path, f.attrs)
                if self.return_logits and "teacher_logits" not in f:
                    raise UserError(f"shard '{path}' has no teacher_logits (synthesized with logits off)")
                if path == self.paths[0]:
                    self._read_attrs(f)
                labels, ids = f["labels"][:], f["sample_ids"][:]
                count, shape = len(labels), f["images"].shape
                image_shape = image_shape if path != self.paths[0] else shape[1:]
                if len(shape) != 4 or shape[0] != count or shape[1:] != image_shape or shape[3] != 3:
                    raise UserError(
                        f"shard '{path}' holds images of shape {shape}, not "
                        f"({count}, {', '.join(map(str, image_shape))})"
                    )
                if len(ids) != count or (self.return_logits and len(f["teacher_logits"]) != count):
                    raise UserError(f"shard '{path}' has datasets of different lengths")
                if count and not (0 <= labels.min() and labels.max() < self.num_classes):
                    raise UserError(f"shard '{path}' has labels outside 0-{self.num_classes - 1}")
                return labels, ids, image_shape
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated, overwritten or hand-edited files
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(
                f"cannot read shard '{path}' ({type(exc).__name__}: {detail}); `dfkd inspect` lists what is damaged"
            ) from None

    def _read_attrs(self, f: h5py.File) -> None:
        """The set's description from the first shard's attributes: classes, resolution, normalisation, teacher."""
        attrs = f.attrs
        self.num_classes = int(attrs["num_classes"])
        self.resolution = int(attrs["resolution"])
        self.mean = tuple(float(v) for v in attrs["mean"])
        self.std = tuple(float(v) for v in attrs["std"])
        self.teacher = json.loads(attrs["teacher"])
        self.config = json.loads(attrs["config"])
        self.format_version = int(attrs["format_version"])
        self.class_names = (
            [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]] if "class_names" in f else None
        )
        if (
            self.num_classes < 1
            or self.resolution < 1
            or len(self.mean) != 3
            or len(self.std) != 3
            or not isinstance(self.teacher, dict)
            or not isinstance(self.config, dict)
        ):
            raise ValueError("malformed attributes (num_classes, resolution, mean, std, teacher, config)")

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
        try:
            _, images, logits = self._open(shard)
            array = images[local]
            stored = logits[local] if self.return_logits else None
        except Exception as exc:  # noqa: BLE001 - a shard damaged after it was opened (or read with --no-verify)
            raise UserError(
                f"cannot read image {local} of shard '{self.paths[shard]}' ({type(exc).__name__}); "
                "`dfkd inspect` lists what is damaged"
            ) from None
        if self.as_pil:
            from PIL import Image

            image = Image.fromarray(array)
        else:
            image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[index])
        if self.return_logits:
            return image, label, torch.from_numpy(stored.astype(np.float32))
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
