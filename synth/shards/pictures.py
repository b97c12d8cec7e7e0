"""Pictures of a synthesized set: the class grid (PIL only), the card's `preview.png` and the per-unit `synthesis.png`.

Every PNG dfkd writes carries the text chunk `Software: dfkd`. An existing PNG is replaced only when it carries it
and its bytes change: a finished rerun writes nothing, and a picture dfkd did not write is never overwritten.
Matplotlib (Agg, headless) is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from synth.shards.format import ShardDataset
from synth.shards.manifest import read_manifest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PADDING = 2
LABEL_WIDTH = 128  # the widest label column; a narrower one fits the longest label
LABEL_MARGIN = 4  # px left and right of a label
MIN_CELL = 64  # grids enlarge smaller images to at least this many px
BACKGROUND = (96, 96, 96)  # gray between and behind the cells: a black or white image shows as a square
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


def display_cell(resolution: int) -> int:
    """The cell size a grid draws images of `resolution` px at: the smallest whole multiple of it that is at least
    MIN_CELL px (nearest-neighbour upscaling keeps every pixel a sharp square), or the resolution itself."""
    return resolution * -(-MIN_CELL // resolution) if 0 < resolution < MIN_CELL else resolution


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at about a fifth of the cell size (11-16 px; the bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=max(11, min(16, size // 5)))
    except (ImportError, TypeError, ValueError):
        return ImageFont.load_default()


def grid_image(rows: Sequence[Row], per_class: int, size: int) -> Image.Image:
    """One row per (label, images): its first `per_class` images at size x size px (smaller ones enlarged pixel by
    pixel, larger ones filtered down) on gray, so a black image shows as a black square and a missing one as gray;
    the labels in a column as wide as the longest (at most 128 px): (column + k*(size+2) + 2) x (rows*(size+2) + 2)
    px."""
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), label_font(size)
    texts = [_fit(draw, text, font) for text, _ in rows]
    longest = max([draw.textlength(text, font=font) for text in texts] + [0])
    column = min(LABEL_WIDTH, math.ceil(longest) + 2 * LABEL_MARGIN)
    width, height = column + per_class * (size + PADDING) + PADDING, len(rows) * (size + PADDING) + PADDING
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, (text, (_, images)) in enumerate(zip(texts, rows)):
        top = PADDING + row * (size + PADDING)
        for col, image in enumerate(images[:per_class]):
            canvas.paste(_cell(image, size), (column + PADDING + col * (size + PADDING), top))
        box = draw.textbbox((0, 0), text, font=font)
        draw.text((LABEL_MARGIN, top + (size - box[3] - box[1]) // 2), text, fill="white", font=font)
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font) -> str:
    """`text` shortened until it fits the widest label column."""
    while len(text) > 1 and draw.textlength(text, font=font) > LABEL_WIDTH - 2 * LABEL_MARGIN:
        text = text[:-1]
    return text


def _cell(image: np.ndarray, size: int) -> Image.Image:
    """One HWC uint8 image as a size x size RGB cell: enlarged with nearest-neighbour, reduced with Lanczos."""
    cell = Image.fromarray(image).convert("RGB")
    if cell.size != (size, size):
        cell = cell.resize((size, size), Image.NEAREST if max(cell.size) < size else Image.LANCZOS)
    return cell


def draw_class_grid(
    shards: str | Path | Sequence[str | Path],
    per_class: int = 8,
    classes: Optional[Sequence[int]] = None,
    cell: Optional[int] = None,
) -> Image.Image:
    """Grid of the first k images per class of a shard set (all classes present unless `classes`), each image drawn
    at `cell` px (default: `display_cell` of the set's resolution, 64 px for 32-px images)."""
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
    return grid_image(rows, per_class, cell or display_cell(dataset.resolution))


def preview_classes(present: Sequence[int], limit: int = PREVIEW_CLASSES) -> list[int]:
    """At most `limit` of the classes present, evenly spaced (all of them when there are few)."""
    present = sorted(present)
    if len(present) <= limit:
        return present
    return [present[int(i)] for i in np.linspace(0, len(present) - 1, limit).round()]


def draw_preview(shards: str | Path) -> Image.Image:
    """The card's preview of a shard set: 8 images of each of at most 10 classes, reduced to 96 px when larger,
    enlarged to at least 64 px when smaller."""
    dataset = ShardDataset(shards)
    present, resolution = np.unique(dataset.labels).tolist(), dataset.resolution
    dataset.close()
    return draw_class_grid(
        shards, PREVIEW_PER_CLASS, preview_classes(present), display_cell(min(resolution, PREVIEW_CELL))
    )


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
    """ROOT/synthesis.png from the unit log and the manifest's config: teacher fidelity and the weighted loss terms
    per unit (synth.shards.synthesis_plot); True when written (nothing without a unit log)."""
    from synth.shards.synthesis_plot import draw_synthesis  # imports matplotlib

    records = read_unit_log(root)
    if not records:
        return False
    config = (read_manifest(root) or {}).get("config") or {}
    figure = draw_synthesis(records, config, f"synthesis of {Path(root).resolve().name}: {len(records)} units")
    return write_png(Path(root) / SYNTHESIS_PLOT, figure_png(figure), message)
