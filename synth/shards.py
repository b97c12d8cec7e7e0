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
TMP_PATTERN = re.compile(r"^(shard-\d{6}\.h5|manifest\.json)\.tmp$")  # the only temporary files dfkd deletes
COMPRESSIONS = ("none", "lzf", "gzip")
MAX_SHARDS = 1_000_000  # shard names have six digits
PLAN_KEYS = ("classes", "per_class", "classes_per_batch", "images_per_class", "units_per_shard")


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


def expected_content(config: Any, index: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, labels) that shard `index` of a synthesis with this config must hold (the unit order of
    synth.engine), or None when `config` holds no unit plan (e.g. hand-made shards)."""
    if not isinstance(config, dict) or not all(key in config for key in PLAN_KEYS):
        return None
    try:
        classes = [int(c) for c in config["classes"]]
        per_group, per_class = int(config["classes_per_batch"]), int(config["images_per_class"])
        per_shard, rounds = int(config["units_per_shard"]), int(config["per_class"]) // per_class
        groups = len(classes) // per_group
        batch = per_group * per_class
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if min(per_group, per_class, per_shard, groups) < 1:
        return None
    first, last = index * per_shard, min((index + 1) * per_shard, rounds * groups)
    if first >= last:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    units = np.arange(first, last)
    group_classes = np.asarray(classes[:groups * per_group], dtype=np.int64).reshape(groups, per_group)
    labels = np.repeat(group_classes[units % groups], per_class, axis=1).reshape(-1)
    return np.arange(first * batch, last * batch, dtype=np.int64), labels


def load_verified(path: str | Path, config: Optional[dict] = None,
                  listed_digest: Optional[str] = None) -> tuple[Optional[VerifiedShard], Optional[str]]:
    """(the shard, None) if it opens, has the v1 layout and matches its digest; else (None, what is wrong).
    With `config` (the run's), the shard's stored config must equal it; with `listed_digest` (the manifest's),
    its digest must be that one. The shard's sample_ids and labels must be those its units hold (by its index
    and config), so a copied or renamed shard never passes. One read of the file serves every check."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            _check_version(path, f.attrs)
            stored = json.loads(f.attrs["config"])
            if config is not None and stored != config:
                return None, "made with another config (e.g. another seed)"
            labels = f["labels"][:]
            sample_ids = f["sample_ids"][:]
            logits = f["teacher_logits"][:] if "teacher_logits" in f else None
            n = len(labels)
            if len(f["images"]) != n or len(sample_ids) != n or (logits is not None and len(logits) != n):
                return None, "dataset lengths differ"
            match = SHARD_PATTERN.match(path.name)
            expected = expected_content(stored, int(match.group(1))) if match else None
            if expected is not None and not np.array_equal(sample_ids, expected[0]):
                return None, "its sample_ids are not those of its units (a copied or renamed shard?)"
            if expected is not None and not np.array_equal(labels, expected[1]):
                return None, "its labels are not those of its units"
            digest = str(f.attrs.get("digest"))
            if content_digest(f["images"][:], labels, sample_ids, logits) != digest:
                return None, "content does not match its digest"
            if listed_digest is not None and listed_digest != digest:
                return None, "its digest differs from the one manifest.json lists"
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
    if not isinstance(shards, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                               for e in shards):
        raise UserError(f"'{path}' has a malformed shards list; {fix}")
    for key, kind in (("config", dict), ("teacher", dict), ("complete", bool)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise UserError(f"'{path}' has {key} {manifest[key]!r}; accepted: a JSON {kind.__name__}; {fix}")
    return manifest


@dataclass
class VerifyReport:
    """Outcome of `verify`: per-shard problems, counts, and what the manifest expects but is missing."""

    shards: int = 0
    images: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    complete: Optional[bool] = None

    @property
    def ok(self) -> bool:
        """True when every shard verifies and none is missing."""
        return not self.problems and not self.missing

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"ok": self.ok, "shards": self.shards, "images": self.images,
                "problems": self.problems, "missing": self.missing,
                "complete": self.complete}


def verify(root: str | Path) -> VerifyReport:
    """Check every shard (layout, digest, sample_ids of its units; with a manifest: its config and listed digest)
    and that the manifest's expected shards are all present. One read of each shard."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"shard directory '{root}' does not exist")
    report = VerifyReport()
    manifest = read_manifest(root) or {}
    config = manifest.get("config")
    listed = {e["file"]: e.get("digest") for e in manifest.get("shards", [])}
    paths = list_shards(root)
    for path in paths:
        shard, problem = load_verified(path, config, listed.get(path.name))
        report.shards += 1
        if problem is None and manifest and shard_index(path) >= manifest.get("num_shards", 0):
            problem = f"not part of this synthesis (manifest.json lists {manifest.get('num_shards', 0)} shards)"
        if problem:
            report.problems[path.name] = problem
        else:
            report.images += len(shard.labels)
    if manifest:
        present = {shard_index(p) for p in paths}
        report.missing = [shard_name(i) for i in range(manifest.get("num_shards", 0)) if i not in present]
        report.complete = manifest.get("complete")
    return report


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
        _check_version(path, f.attrs)
        teacher = json.loads(f.attrs["teacher"])
        names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]] \
            if "class_names" in f else None
        return {"teacher weights sha256": teacher.get("weights_sha256"), "num_classes": int(f.attrs["num_classes"]), "class names": names,
                "resolution": int(f.attrs["resolution"])}


def check_combinable(first_shards: Sequence[str | Path]) -> None:
    """Refuse, in one line, sets (given by one shard of each) from different teachers, classes or resolutions."""
    reference = set_identity(first_shards[0])
    for path in first_shards[1:]:
        other = set_identity(path)
        for key in ("teacher weights sha256", "num_classes", "class names", "resolution"):
            if other[key] != reference[key]:
                ours, theirs = (str(v)[:12] if key.startswith("teacher") else v for v in (reference[key], other[key]))
                raise UserError(f"cannot combine '{Path(first_shards[0]).parent}' and '{Path(path).parent}': "
                                f"different {key} ({ours} vs {theirs}); "
                                "only sets from the same teacher with the same classes and resolution combine")


def check_integrity(root: str | Path, verify_shards: bool = True, warn: Callable[[str], None] = print) -> None:
    """What consumers (distill, fidelity) call before reading a shard directory: refuse a damaged shard, a partial
    set or an unfinished synthesis with one line; with verify_shards=False only warn that nothing was checked."""
    root = Path(root)
    if not verify_shards:
        warn(f"warning: shards in '{root}' are not verified (--no-verify): damaged or missing shards go unnoticed")
        return
    report = verify(root)
    hint = "rerun the same `dfkd synthesize` command to repair it, or pass --no-verify to read it anyway"
    if report.problems:
        name, problem = next(iter(report.problems.items()))
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise UserError(f"shard '{root / name}' is damaged: {problem}{more}; {hint}")
    if report.missing:
        more = f" (and {len(report.missing) - 1} more)" if len(report.missing) > 1 else ""
        raise UserError(f"shard '{root / report.missing[0]}' listed by the manifest is missing{more}; {hint}")
    if report.complete is False:
        raise UserError(f"the synthesis in '{root}' is incomplete (manifest.json says complete: false); {hint}")


class ShardDataset(Dataset):
    """Images from a shard directory as (uint8 CHW tensor or PIL, label[, teacher logits]); lazy per-worker handles."""

    def __init__(self, root: str | Path | Sequence[str | Path], return_logits: bool = False, as_pil: bool = False,
                 transform: Optional[Callable] = None):
        """`root`: a shard directory, a list of shard files, or a list of shard directories (one combined set;
        they must share the teacher weights, classes and resolution)."""
        directories = [Path(p) for p in root] if isinstance(root, (list, tuple)) \
            and any(Path(p).is_dir() for p in root) else None
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
        self.paths, self.return_logits, self.as_pil, self.transform = paths, return_logits, as_pil, transform
        counts, labels, ids = [], [], []
        first: tuple = ()
        for path in paths:
            try:
                with h5py.File(path, "r") as f:
                    _check_version(path, f.attrs)
                    if return_logits and "teacher_logits" not in f:
                        raise UserError(f"shard '{path}' has no teacher_logits (synthesized with logits off)")
                    if path == paths[0]:
                        self._read_attrs(f)
                    labels.append(f["labels"][:])
                    ids.append(f["sample_ids"][:])
                    counts.append(len(labels[-1]))
                    shape = f["images"].shape
                    first = first if path != paths[0] else shape[1:]
                    if len(shape) != 4 or shape[0] != counts[-1] or shape[1:] != first or shape[3] != 3:
                        raise UserError(f"shard '{path}' holds images of shape {shape}, not "
                                        f"({counts[-1]}, {', '.join(map(str, first))})")
                    if len(ids[-1]) != counts[-1] or (return_logits and len(f["teacher_logits"]) != counts[-1]):
                        raise UserError(f"shard '{path}' has datasets of different lengths")
                    if counts[-1] and not (0 <= labels[-1].min() and labels[-1].max() < self.num_classes):
                        raise UserError(f"shard '{path}' has labels outside 0-{self.num_classes - 1}")
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated, overwritten or hand-edited files
                detail = str(exc).splitlines()[0] if str(exc) else ""
                raise UserError(f"cannot read shard '{path}' ({type(exc).__name__}: {detail}); "
                                "`dfkd inspect` lists what is damaged") from None
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
        if self.num_classes < 1 or self.resolution < 1 or len(self.mean) != 3 or len(self.std) != 3 \
                or not isinstance(self.teacher, dict) or not isinstance(self.config, dict):
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
            raise UserError(f"cannot read image {local} of shard '{self.paths[shard]}' ({type(exc).__name__}); "
                            "`dfkd inspect` lists what is damaged") from None
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
