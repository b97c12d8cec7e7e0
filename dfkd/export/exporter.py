"""Export a verified shard directory for projects that do not read HDF5: ImageFolder PNGs, WebDataset tar shards,
or a Hugging Face `datasets` dataset.

Every export streams the shards block by block (constant memory), writes into a private temporary folder next to
OUT (`.OUT.partial-XXXX`, created here, so nothing else is ever deleted) and renames it to OUT when complete: a
failed or interrupted export leaves no OUT. The source is verified against its digests first. The dataset card
(README.md) of the source and its preview.png are copied into the export (drawn from the shards when the source has
none); an image folder gets the card without the preview, which ImageFolder readers would count as an image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from dfkd.export.config import FORMATS, ExportConfig
from dfkd.export.formats import CHECKS, WRITERS
from dfkd.export.source import verified_source
from synth.common import output_lock
from synth.common.errors import UserError
from synth.common.runtime import Progress
from synth.shards import card, pictures


@contextmanager
def atomic_output(out: str | Path) -> Iterator[Path]:
    """A private temporary folder beside OUT that becomes OUT on success and is removed on failure.

    OUT must be new or an empty folder; only the temporary folder made here is ever deleted."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"'{out}' already exists and is not an empty folder; choose a new output folder")
    parent = out.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"'{parent}' is not a folder, so it cannot hold '{out.name}'")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        if out.exists():
            out.rmdir()  # empty (checked above); fails, deleting nothing, if something appeared there meanwhile
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_card(shards: str | Path, tmp: Path, with_preview: bool = True) -> None:
    """The source's dataset card and its preview.png into the export (each drawn from the shards when the source
    has none). Without the preview (an image folder, where ImageFolder readers would take it for an image of the
    set) the card's preview section is left out."""
    source = Path(shards) / card.CARD
    text = source.read_text() if source.is_file() else card.render(shards)
    (tmp / card.CARD).write_text(text if with_preview else card.without_preview(text))
    if not with_preview:
        return
    preview = Path(shards) / pictures.PREVIEW
    if preview.is_file():
        shutil.copyfile(preview, tmp / pictures.PREVIEW)
    else:
        (tmp / pictures.PREVIEW).write_bytes(pictures.png_bytes(pictures.draw_preview(shards)))


def export_shards(
    shards: str | Path,
    out: str | Path,
    fmt: str = "imagefolder",
    progress: Optional[Progress] = None,
    config: Optional[ExportConfig] = None,
) -> dict[str, Any]:
    """Export SHARDS to OUT in format `fmt` (imagefolder, webdataset or hf) with the format options of `config`;
    returns a summary."""
    if fmt not in FORMATS:
        raise UserError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    config = config or ExportConfig()
    config.validate()
    writer = WRITERS[fmt]
    writer_check = CHECKS.get(fmt)
    if writer_check:
        writer_check(config)
    progress = progress or Progress()
    with output_lock.held(out, message=progress.message, beside=True):  # one export per OUT; OUT holds no lock file
        dataset = verified_source(shards)
        try:
            with atomic_output(out) as tmp:
                copy_card(shards, tmp, with_preview=fmt != "imagefolder")  # first: a writer may add to the card
                progress.start(len(dataset))
                try:
                    result = writer(dataset, tmp, progress, config)
                finally:
                    progress.close()
        finally:
            dataset.close()
    classes = np.unique(dataset.labels).tolist()
    return {"out": str(out), "format": fmt, "images": len(dataset), "classes": len(classes), **result}


def export_imagefolder(shards: str | Path, out: str | Path, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Every image as lossless PNG in OUT/<class id, zero-padded>/<sample id, 8 digits>.png."""
    return export_shards(shards, out, "imagefolder", progress)
