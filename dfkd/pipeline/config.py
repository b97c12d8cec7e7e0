"""Settings of `dfkd train-teacher` (the `train_teacher:` section of a recipe), free of torch so that the command
line's help loads fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dfkd.data.real import DATASET_NAMES, real_dataset
from synth.common.errors import UserError
from synth.common.settings import check_choices, setting, threads_setting


@dataclass
class TeacherTrainingConfig:
    """Settings of `dfkd train-teacher` (the `train_teacher:` section of a recipe)."""

    dataset: str = setting(
        "digits",
        flag=True,
        choices=DATASET_NAMES,
        help="Real training data: digits (scikit-learn's bundled handwritten digits) or fashion-mnist (the IDX "
        "files from --data-dir, $DFKD_DATA or Debian's dataset-fashion-mnist); both 32x32.",
    )
    data_dir: Optional[str] = setting(
        None,
        flag=True,
        path="dir",
        default_text="$DFKD_DATA, then /usr/share/datasets/fashion-mnist, then ~/.cache/dfkd/fashion-mnist",
        help="Folder of the dataset's files (fashion-mnist: the four IDX files, .gz or raw).",
    )
    download: bool = setting(
        False,
        flag=True,
        help="Download the dataset's files where none are found (fashion-mnist: into --data-dir, else "
        "$DFKD_DATA/fashion-mnist, else ~/.cache/dfkd/fashion-mnist; needs a network).",
    )
    arch: str = setting("dfkd_cnn_digits", help="timm architecture with BatchNorm.", flag=True)
    epochs: int = setting(
        40,
        help="Training epochs (a teacher that has not converged gives images other networks do not read).",
        flag=True,
    )
    batch_size: int = setting(64, help="Images per step.")
    lr: float = setting(3e-3, help="Peak learning rate of the one-cycle schedule.")
    seed: int = setting(0, help="Seed of the split and the training.", flag=True)
    threads: int = threads_setting()

    def validate(self) -> None:
        """Refuse an unknown dataset or architecture, a dataset whose files are missing, or a non-positive epoch
        count."""
        check_choices(self)
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, not {self.epochs}")
        if not self.download:  # with --download, missing files are fetched when the command runs
            real_dataset(self.dataset).check(self.data_dir)
        import timm  # after the checks that need no torch

        import synth.teachers.small_cnn  # noqa: F401  (registers the small BN CNNs with timm)

        if not timm.is_model(self.arch):
            raise UserError(f"unknown timm architecture '{self.arch}'")

    def fetch_data(self) -> None:
        """With `--download`, fetch the dataset's missing files (a no-op where they are found, or without it)."""
        if self.download:
            real_dataset(self.dataset).download(self.data_dir)
