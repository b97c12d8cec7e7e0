"""Settings of `dfkd evaluate`, `dfkd inspect` (the `evaluate:` section of a recipe); each command offers the
options it uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from synth.common.errors import UserError
from synth.common.settings import (
    check_device,
    check_teacher_options,
    device_setting,
    setting,
    teacher_kwargs_setting,
    teacher_setting,
    teacher_weights_setting,
    threads_setting,
    trust_pickle_setting,
)
from synth.teachers.preprocessing import Preprocessing

MAX_GRID_PER_CLASS = 256


@dataclass
class EvaluateConfig:
    """Settings of evaluate and inspect (recipe section `evaluate`)."""

    device: str = device_setting()
    batch_size: int = setting(64, help="Images per batch.", flag=True)
    workers: int = setting(0, help="DataLoader worker processes.", flag=True)
    threads: int = threads_setting()
    seed: int = setting(0, help="Seed of the pair sampling.", flag=True)
    pairs: Union[int, str] = setting(1000, help="all, or at most M random pairs per class.", flag=True)
    lpips_backbone: Optional[str] = setting(None, help="torchvision AlexNet state_dict file.", flag=True, path="file")
    teacher: Optional[str] = teacher_setting()
    teacher_weights: Optional[str] = teacher_weights_setting()
    teacher_kwargs: Optional[Union[str, dict]] = teacher_kwargs_setting()
    trust_pickle: bool = trust_pickle_setting()
    preprocessing: Preprocessing = setting(
        factory=Preprocessing, help="The teacher's input normalisation, size and class names, where you state them."
    )
    student: Optional[str] = setting(
        None, help="Student state_dict (student.pth + student.json).", flag=True, path="file"
    )
    data: Optional[str] = setting(
        None,
        help="Labelled image folder DATA/<class>/<image>; folders named by class id (0, 0042) or ImageNet WNID.",
        flag=True,
        path="dir",
    )
    class_map: Optional[str] = setting(
        None,
        help="Class id of each folder of --data: JSON {folder: id}, 'folder id' lines, or one folder per line.",
        flag=True,
        path="file",
    )
    crop_pct: float = setting(1.0, help="Centre-crop fraction (0.875: the ImageNet protocol).", flag=True)
    per_class_grid: int = setting(8, help="Images per class in the grid.", flag=True)

    def validate(self) -> None:
        """Refuse values no command could use."""
        check_teacher_options(self)
        if self.pairs != "all" and not (isinstance(self.pairs, int) and self.pairs > 0):
            raise UserError(f"pairs '{self.pairs}' must be 'all' or a positive number of pairs per class")
        for name, least in (("batch_size", 1), ("per_class_grid", 1), ("workers", 0), ("threads", 0)):
            if getattr(self, name) < least:
                raise UserError(f"{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}")
        if not 0 < self.crop_pct <= 1:
            raise UserError(f"crop-pct {self.crop_pct} must be in (0, 1]")
        if self.per_class_grid > MAX_GRID_PER_CLASS:
            raise UserError(
                f"per-class-grid {self.per_class_grid} is too many images per class for one PNG; "
                f"accepted: 1-{MAX_GRID_PER_CLASS}"
            )
        check_device(self.device)
