"""The export formats: lossless PNGs in ImageFolder class folders, WebDataset tar shards, or a Hugging Face
`datasets` dataset. Each writer streams the samples into a folder and returns what it adds to the summary."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dfkd.export import hub
from dfkd.export.config import ExportConfig
from dfkd.export.source import Sample, has_logits, iter_samples
from synth.common.errors import UserError
from synth.common.runtime import Progress
from synth.shards.card import CARD
from synth.shards.format import ShardDataset


def class_folder(label: int, num_classes: int) -> str:
    """Folder name of a class: its id zero-padded to the width of the largest id (num_classes - 1)."""
    return f"{label:0{len(str(num_classes - 1))}d}"


def encode_image(array: np.ndarray, image_format: str, quality: int) -> bytes:
    """uint8 HWC -> PNG (lossless) or JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(array).save(buffer, format="PNG")
    else:
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


CLASS_MAP = "class_map.txt"
CLASSES = "classes.json"


def _imagefolder(dataset: ShardDataset, tmp: Path, progress: Progress, config: ExportConfig) -> dict[str, Any]:
    """Every image as lossless PNG in <class id, zero-padded>/<sample id, 8 digits>.png, and the class mapping
    beside the folders (`write_class_mapping`)."""
    for c in np.unique(dataset.labels).tolist():
        (tmp / class_folder(c, dataset.num_classes)).mkdir()
    for sample in iter_samples(dataset, with_logits=False):
        path = tmp / class_folder(sample.label, dataset.num_classes) / f"{sample.sample_id:08d}.png"
        path.write_bytes(encode_image(sample.image, "png", config.quality))
        progress.advance(1, {})
    write_class_mapping(dataset, tmp)
    return {"class_map": CLASS_MAP}


def write_class_mapping(dataset: ShardDataset, tmp: Path) -> None:
    """What a folder reader needs for the true class ids (torchvision's ImageFolder numbers the folders 0..K-1):
    `class_map.txt`, line k the folder of class k for every class of the teacher (timm's `class_map` format,
    also read by `dfkd ... --class-map`), and `classes.json` (folder -> class id for the folders written, and
    the class names)."""
    folders = [class_folder(c, dataset.num_classes) for c in range(dataset.num_classes)]
    (tmp / CLASS_MAP).write_text("".join(f"{name}\n" for name in folders))
    classes = {
        "num_classes": dataset.num_classes,
        "class_to_idx": {folders[c]: c for c in np.unique(dataset.labels).tolist()},
        "class_names": dataset.class_names,
    }
    (tmp / CLASSES).write_text(json.dumps(classes, indent=1) + "\n")


# WebDataset --------------------------------------------------------------------------------------------------------

WDS_SPLIT = "train"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype="<f2"), allow_pickle=False)
    return buffer.getvalue()


def _webdataset(dataset: ShardDataset, tmp: Path, progress: Progress, config: ExportConfig) -> dict[str, Any]:
    """Tar shards `train-NNNNNN.tar` written by `webdataset.ShardWriter`: at most `maxcount` samples each, and a new
    shard once one holds `shard_size` bytes (about: the sample that reaches it stays); one sample per key
    (`<sample id>.png|jpg`, `.cls`, `.logits.npy`, `.json`), plus `_info.json` (timm's split description)."""
    import webdataset  # a dependency of dfkd; imported here, where it is used

    lengths: dict[str, int] = {}  # shard file name -> samples, filled as each shard is closed
    writer = webdataset.ShardWriter(
        str(tmp).replace("%", "%%") + f"/{WDS_SPLIT}-%06d.tar",  # a %-pattern: a % of the folder name escaped
        maxcount=config.maxcount,
        maxsize=config.shard_size or float("inf"),
        post=lambda name: lengths.update({Path(name).name: writer.count}),
        verbose=0,
        encoder=False,  # the members are bytes already
        mtime=0,  # reproducible tars: the same shards export to the same bytes
        mode=0o644,
    )
    try:
        for sample in iter_samples(dataset):
            writer.write(_wds_sample(dataset, sample, config.image_format, config.quality))
            progress.advance(1, {})
    finally:
        writer.close()
    filenames = list(lengths)
    info = _wds_info(dataset, filenames, list(lengths.values()))
    (tmp / "_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {
        "shards": len(filenames),
        "image_format": config.image_format,
        "pattern": f"{WDS_SPLIT}-{{000000..{len(filenames) - 1:06d}}}.tar",
    }


def _wds_sample(dataset: ShardDataset, sample: Sample, image_format: str, quality: int) -> dict[str, Any]:
    """One sample as webdataset writes it (`__key__` and one member per extension): the encoded image, `.cls`,
    `.logits.npy` (when stored) and `.json` metadata."""
    meta = {"sample_id": sample.sample_id, "label": sample.label, "resolution": int(sample.image.shape[0])}
    if dataset.class_names:
        meta["class_name"] = dataset.class_names[sample.label]
    members = {
        "__key__": f"{sample.sample_id:08d}",
        image_format: encode_image(sample.image, image_format, quality),
        "cls": str(sample.label).encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    if sample.logits is not None:
        members["logits.npy"] = _npy(sample.logits)
    return members


def _wds_info(dataset: ShardDataset, filenames: list[str], lengths: list[int]) -> dict[str, Any]:
    """`_info.json`: the set's description and its one split, as timm's `wds/` reader expects."""
    return {
        "name": Path(dataset.paths[0]).parent.name,
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "resolution": dataset.resolution,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "teacher": dataset.teacher,
        "splits": {
            WDS_SPLIT: {
                "name": WDS_SPLIT,
                "num_samples": sum(lengths),
                "filenames": filenames,
                "shard_lengths": lengths,
            }
        },
    }


# Hugging Face datasets ---------------------------------------------------------------------------------------------


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this export needs the '{module}' package: pip install \"dfkd[{extra}]\"") from None


def _check_hf(config: ExportConfig) -> None:
    _require("datasets", "hf")


def unique_names(names: list[str]) -> list[str]:
    """Class names as a `ClassLabel` takes them (each once): a name that several classes share gets its class id,
    "crane (134)" and "crane (517)" (ImageNet's bird and machine); the others are unchanged."""
    counts = Counter(names)
    return [f"{name} ({c})" if counts[name] > 1 else name for c, name in enumerate(names)]


def _hf_schema(datasets: Any, names: list[str], with_logits: bool) -> Any:
    """The Arrow schema of the Parquet files, carrying the `datasets` features (ClassLabel names included) in its
    metadata, so `load_dataset("parquet", data_files=...)` reads them without the card too."""
    columns = {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=names),
        "sample_id": datasets.Value("int64"),
    }
    if with_logits:
        columns["logits"] = datasets.Sequence(datasets.Value("float32"))
    return datasets.Features(columns).arrow_schema


def _hf(dataset: ShardDataset, tmp: Path, progress: Progress, config: ExportConfig) -> dict[str, Any]:
    """The Hugging Face Hub's layout (`dfkd.export.hub`): rows streamed into `data/train-NNNNN-of-NNNNN.parquet` of
    about `hf_shard_size` bytes each, and the YAML that names them and their features added to the card (copied into
    `tmp` before the writer runs; checked first, so a card whose YAML does not parse fails before any row)."""
    datasets = _require("datasets", "hf")
    readme, where = tmp / CARD, f"the dataset card {Path(dataset.paths[0]).parent / CARD}"
    text = readme.read_text() if readme.is_file() else ""
    hub.merge_front_matter(text, {}, where)
    names = unique_names(dataset.class_names or [str(c) for c in range(dataset.num_classes)])
    with_logits = has_logits(dataset)
    shards = hub.ParquetShards(tmp, _hf_schema(datasets, names, with_logits), config.hf_shard_size)
    for sample in iter_samples(dataset, with_logits):
        image = encode_image(sample.image, "png", 100)
        row = {
            "image": {"bytes": image, "path": f"{sample.sample_id:08d}.png"},  # the name the other exports use
            "label": sample.label,
            "sample_id": sample.sample_id,
        }
        if with_logits:
            row["logits"] = sample.logits.astype(np.float32).tolist()
        shards.write(row, len(image) + (4 * len(sample.logits) if with_logits else 0))
        progress.advance(1, {})
    files = shards.close()
    features = hub.features_yaml(names, with_logits)
    metadata = hub.hub_metadata(features, [tmp / f for f in files], shards.num_rows, shards.num_bytes)
    readme.write_text(hub.merge_front_matter(text, metadata, where))
    return {"parquet_files": len(files), "logits": with_logits}


WRITERS = {"imagefolder": _imagefolder, "webdataset": _webdataset, "hf": _hf}
CHECKS = {"hf": _check_hf}  # what a format needs, checked before anything is read or written
