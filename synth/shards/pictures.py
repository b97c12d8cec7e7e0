"""Pictures of a synthesized set: the class grid (PIL only), the card's `preview.png` and the per-unit `synthesis.png`.

Every PNG dfkd writes carries the text chunk `Software: dfkd`. An existing PNG is replaced only when it carries it
and its bytes change: a finished rerun writes nothing, and a picture dfkd did not write is never overwritten.
Matplotlib (Agg, headless) is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from synth.shards.format import ShardDataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PADDING = 2
LABEL_WIDTH = 128
SOFTWARE = "dfkd"  # the PNG text chunk that marks a picture as dfkd's own
PREVIEW = "preview.png"
SYNTHESIS_PLOT = "synthesis.png"
PICTURES = (PREVIEW, SYNTHESIS_PLOT)
PREVIEW_CLASSES, PREVIEW_PER_CLASS, PREVIEW_CELL = 10, 8, 96  # at most 10 classes, cells of at most 96 px

Row = tuple[str, Sequence[np.ndarray]]  # a row label and its HWC uint8 images


def class_label(c: int, names: Optional[Sequence[str]]) -> str:
    """A grid row's label: the class id, and its name when it is not just the id."""
    name = names[c] if names and c < len(names) else None
    return f"{c} {name}" if name and name != str(c) else str(c)


def grid_image(rows: Sequence[Row], per_class: int, size: int) -> Image.Image:
    """One row per (label, images): its first `per_class` images at size x size px (black cells when fewer), the
    label in a 128-px column: (128 + k*(size+2) + 2) x (rows*(size+2) + 2) px."""
    canvas = Image.new(
        "RGB", (LABEL_WIDTH + per_class * (size + PADDING) + PADDING, len(rows) * (size + PADDING) + PADDING)
    )
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for row, (text, images) in enumerate(rows):
        top = PADDING + row * (size + PADDING)
        for col, image in enumerate(images[:per_class]):
            cell = Image.fromarray(image).convert("RGB")
            if cell.size != (size, size):
                cell = cell.resize((size, size), Image.LANCZOS)
            canvas.paste(cell, (LABEL_WIDTH + PADDING + col * (size + PADDING), top))
        while len(text) > 1 and draw.textlength(text, font=font) > LABEL_WIDTH - 2 * PADDING:
            text = text[:-1]
        height = draw.textbbox((0, 0), text, font=font)[3]
        draw.text((PADDING, top + max(0, (size - height) // 2)), text, fill="white", font=font)
    return canvas


def draw_class_grid(
    shards: str | Path | Sequence[str | Path],
    per_class: int = 8,
    classes: Optional[Sequence[int]] = None,
    cell: Optional[int] = None,
) -> Image.Image:
    """Grid of the first k images per class of a shard set (all classes present unless `classes`), each image drawn
    at `cell` px (default: the set's resolution)."""
    dataset = ShardDataset(shards)
    try:
        classes = np.unique(dataset.labels).tolist() if classes is None else list(classes)
        rows = [
            (
                class_label(c, dataset.class_names),
                [dataset[int(i)][0].permute(1, 2, 0).numpy() for i in np.flatnonzero(dataset.labels == c)[:per_class]],
            )
            for c in classes
        ]
    finally:
        dataset.close()
    return grid_image(rows, per_class, cell or dataset.resolution)


def preview_classes(present: Sequence[int], limit: int = PREVIEW_CLASSES) -> list[int]:
    """At most `limit` of the classes present, evenly spaced (all of them when there are few)."""
    present = sorted(present)
    if len(present) <= limit:
        return present
    return [present[int(i)] for i in np.linspace(0, len(present) - 1, limit).round()]


def draw_preview(shards: str | Path) -> Image.Image:
    """The card's preview of a shard set: 8 images of each of at most 10 classes, at most 96 px each."""
    dataset = ShardDataset(shards)
    present, resolution = np.unique(dataset.labels).tolist(), dataset.resolution
    dataset.close()
    return draw_class_grid(shards, PREVIEW_PER_CLASS, preview_classes(present), min(resolution, PREVIEW_CELL))


def write_preview(root: str | Path, message: Optional[Callable[[str], None]] = None) -> bool:
    """ROOT/preview.png (see `draw_preview`); True when written."""
    return write_png(Path(root) / PREVIEW, png_bytes(draw_preview(root)), message)


def png_bytes(image: Image.Image) -> bytes:
    """A PIL image as PNG bytes marked as dfkd's."""
    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure rendered headless (Agg) to PNG bytes marked as dfkd's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": SOFTWARE})
    return buffer.getvalue()


def is_dfkd_png(path: str | Path) -> bool:
    """True for a PNG that carries dfkd's text chunk."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == SOFTWARE
    except (OSError, ValueError, SyntaxError):  # not an image, truncated, malformed chunks
        return False


def write_png(path: str | Path, data: bytes, message: Optional[Callable[[str], None]] = None) -> bool:
    """Write PNG bytes atomically; True when written. Identical bytes are left untouched, and a file dfkd did not
    write is never replaced (`message` says so)."""
    return replace_own_file(Path(path), data, is_dfkd_png, message, "it was not replaced")


def replace_own_file(
    path: Path, data: bytes, is_own: Callable[[Path], bool], message: Optional[Callable[[str], None]], refused: str
) -> bool:
    """Write `data` to `path` atomically (`.tmp` + rename) unless the file already holds it, or holds something
    `is_own` does not recognise as dfkd's (then `message` gets "note: PATH was not written by dfkd; REFUSED")."""
    if path.is_file():
        if path.read_bytes() == data:
            return False
        if not is_own(path):
            if message:
                message(f"note: {path} was not written by dfkd; {refused}")
            return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def read_unit_log(root: str | Path) -> list[dict]:
    """Every rank's unit records (logs/synthesis-rank*.jsonl), the last record of each unit, in unit order."""
    records: dict[int, dict] = {}
    for path in sorted((Path(root) / "logs").glob("synthesis-rank*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["unit"]] = record
    return [records[unit] for unit in sorted(records)]


def write_synthesis_plot(root: str | Path, message: Optional[Callable[[str], None]] = None) -> bool:
    """ROOT/synthesis.png from the unit log: teacher fidelity and the final loss terms per unit; True when written
    (nothing without a unit log)."""
    records = read_unit_log(root)
    if not records:
        return False
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 3.6), dpi=80)
    fidelity, losses = figure.subplots(1, 2)
    units = [r["unit"] for r in records]
    fidelity.plot(units, [r["fidelity"] for r in records], "o-", markersize=3)
    fidelity.set(title="teacher fidelity per unit", xlabel="unit", ylabel="top-1 = label", ylim=(-0.05, 1.05))
    for name in records[0]["losses"]:
        values = [r["losses"].get(name, np.nan) for r in records]
        if np.nanmax(values) > 0:
            losses.plot(units, values, label=name, linewidth=2 if name == "total" else 1)
    losses.set(title="loss terms at each unit's last iteration", xlabel="unit", yscale="log")
    losses.legend(fontsize="small")
    for ax in (fidelity, losses):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"synthesis of {Path(root).resolve().name}: {len(records)} units")
    figure.tight_layout()
    return write_png(Path(root) / SYNTHESIS_PLOT, figure_png(figure), message)
