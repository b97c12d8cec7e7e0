"""Real labelled image folders (`<root>/<class>/<image>`) and the class id of each folder: integer names are the
ids ('7', '0042'), ImageNet WNIDs ('n01443537') map through the standard ImageNet-1k class index (timm's), and
any other names need an explicit class map file; a tree that cannot be mapped is refused, never numbered by
position. Arrays of images are written in the same layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from torchvision.datasets import ImageFolder

from synth.common.errors import UserError, first_line

WNID = re.compile(r"n\d{8}")
CLASS_MAP_FORMATS = "a JSON object {folder: id}, 'folder id' lines, or one folder per line (line k is class k)"


def imagenet_wnids() -> dict[str, int]:
    """ImageNet-1k WNID -> class id, in the standard class index (timm ships it: n01440764 is 0, tench)."""
    from timm.data import ImageNetInfo

    return {wnid: k for k, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}


def read_class_map(path: Union[str, Path]) -> dict[str, int]:
    """A class map file: `.json` {folder: id}; else text, 'folder id' per line or one folder name per line
    (line k names class k: timm's class_map.txt, as `dfkd export --to imagefolder` writes it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"class map '{path}' cannot be read: {first_line(exc)}") from None
    if Path(path).suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError:
            mapping = None
        if not isinstance(mapping, dict) or not all(type(v) is int and v >= 0 for v in mapping.values()):
            raise UserError(f"class map '{path}' is not a JSON object of folder names to class ids >= 0")
        return mapping
    rows = [(k + 1, line.split()) for k, line in enumerate(text.splitlines()) if line.strip()]
    columns = {len(fields) for _, fields in rows}
    if columns == {1}:
        mapping = {fields[0]: number - 1 for number, fields in rows}
    elif columns == {2} and all(fields[1].isdigit() for _, fields in rows):
        mapping = {fields[0]: int(fields[1]) for _, fields in rows}
    else:
        raise UserError(f"class map '{path}' is not {CLASS_MAP_FORMATS}")
    if len(mapping) < len(rows):
        raise UserError(f"class map '{path}' names a folder twice")
    return mapping


def folder_class_ids(names: list[str], root: Union[str, Path], class_map: Optional[str] = None) -> dict[str, int]:
    """The class id of each folder name: from `class_map` (a file) when given, else integer names, else
    ImageNet-1k WNIDs; anything else is a UserError naming the first folder that cannot be mapped."""
    if class_map is not None:
        mapping = read_class_map(class_map)
        unmapped = [name for name in names if name not in mapping]
        if unmapped:
            raise UserError(f"image folder '{root}': folder '{unmapped[0]}' is not in the class map '{class_map}'")
        return {name: mapping[name] for name in names}
    if all(name.isdigit() for name in names):
        return {name: int(name) for name in names}
    wnids = imagenet_wnids()
    if all(name in wnids for name in names):
        return {name: wnids[name] for name in names}
    looks_wnid = any(WNID.fullmatch(name) for name in names)
    bad = next(name for name in names if (name not in wnids if looks_wnid else not name.isdigit()))
    raise UserError(
        f"image folder '{root}': cannot tell the class id of folder '{bad}'; folder names must all be class ids "
        f"(0, 7, 0042) or all ImageNet-1k WNIDs (n01443537), or pass --class-map FILE ({CLASS_MAP_FORMATS})"
    )


class LabelledFolder(ImageFolder):
    """torchvision ImageFolder whose targets are the true class ids of the folders (`folder_class_ids`), not
    their sorted positions."""

    def __init__(
        self,
        root: Union[str, Path],
        transform: Optional[Callable] = None,
        class_map: Optional[str] = None,
        loader: Optional[Callable] = None,
    ) -> None:
        self.class_map = class_map
        super().__init__(str(root), transform=transform, **({"loader": loader} if loader else {}))

    def find_classes(self, directory: Union[str, Path]) -> tuple[list[str], dict[str, int]]:
        """Class folder names (sorted) and their class ids."""
        classes, _ = super().find_classes(directory)
        return classes, folder_class_ids(classes, directory, self.class_map)


def open_image_folder(
    root: Union[str, Path],
    num_classes: int,
    transform: Optional[Callable] = None,
    class_map: Optional[str] = None,
    loader: Optional[Callable] = None,
) -> LabelledFolder:
    """A real image folder whose class ids must lie below `num_classes` (the model's class count); `class_map` maps
    folder names to ids (`read_class_map`); `loader` reads one image file (default: torchvision's, a PIL image)."""
    if not Path(root).is_dir():
        raise UserError(f"image folder '{root}' does not exist")
    try:
        dataset = LabelledFolder(str(root), transform=transform, class_map=class_map, loader=loader)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"image folder '{root}': {first_line(exc)} (expected <root>/<class>/<image>)") from None
    top = max(dataset.class_to_idx.values())
    if top >= num_classes:
        name = next(name for name, c in dataset.class_to_idx.items() if c == top)
        raise UserError(
            f"image folder '{root}' has class id {top} (folder '{name}'), but the model has {num_classes} classes"
        )
    return dataset


def write_image_folder(images: np.ndarray, labels: np.ndarray, out: str | Path) -> Path:
    """Write uint8 (N, H, W, 3) images as PNG class folders (`<out>/<class id>/<index>.png`), the layout every
    `--data`, `--val-data` and `--images` reads. Written beside `out` and renamed at the end, so an interrupted
    write never leaves a folder that looks finished."""
    from PIL import Image

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = partial / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    partial.mkdir(parents=True, exist_ok=True)  # an empty set is still a folder
    partial.rename(out)
    return out
