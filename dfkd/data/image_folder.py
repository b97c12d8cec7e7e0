"""Real labelled image folders (`<root>/<class>/<image>`): integer folder names are the class ids."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from torchvision.datasets import ImageFolder

from synth.errors import UserError, first_line


class LabelledFolder(ImageFolder):
    """torchvision ImageFolder where integer folder names are the class ids ('7' -> 7), else sorted positions."""

    def find_classes(self, directory: Union[str, Path]) -> tuple[list[str], dict[str, int]]:
        """Class folder names and their ids: int(name) when every name is an integer, else sorted order."""
        classes, mapping = super().find_classes(directory)
        if all(name.isdigit() for name in classes):
            mapping = {name: int(name) for name in classes}
        return classes, mapping


def open_image_folder(
    root: Union[str, Path], num_classes: int, transform: Optional[Callable] = None, loader: Optional[Callable] = None
) -> LabelledFolder:
    """A real image folder whose class ids must lie below `num_classes` (the model's class count); `loader` reads
    one image file (default: torchvision's, a PIL image)."""
    if not Path(root).is_dir():
        raise UserError(f"image folder '{root}' does not exist")
    try:
        dataset = LabelledFolder(str(root), transform=transform, **({"loader": loader} if loader else {}))
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"image folder '{root}': {first_line(exc)} (expected <root>/<class>/<image>)") from None
    top = max(dataset.class_to_idx.values())
    if top >= num_classes:
        raise UserError(f"image folder '{root}' has class id {top}, but the model has {num_classes} classes")
    return dataset
