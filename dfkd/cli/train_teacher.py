"""`dfkd train-teacher`: train a small BatchNorm CNN teacher on real data and write a teacher file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, recipe_settings
from dfkd.pipeline.config import TeacherTrainingConfig
from synth.common.errors import UserError

EXAMPLE = """
\b
Example:
  dfkd train-teacher --dataset digits --out digits-teacher.pt
  dfkd synthesize --teacher digits-teacher.pt --config digits --out shards/
"""


@click.command("train-teacher", epilog=EXAMPLE)
@config_options(TeacherTrainingConfig, only=("dataset", "data_dir", "download"))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Teacher file to write.")
@config_options(TeacherTrainingConfig, only=("arch", "epochs", "seed", "threads"))
@common_options
def train_teacher_command(out: str, config_path: str, json_mode: bool, quiet: bool, **options) -> None:
    """Train a small BN CNN teacher on real images (held-out accuracy is reported and stored in the file)."""
    reporter = Reporter(json_mode, quiet)
    config = recipe_settings(TeacherTrainingConfig, "train_teacher", config_path, options)
    _check_writable(Path(out))
    from dfkd.pipeline.teacher_training import train_teacher  # torch loads once the settings are checked

    config.fetch_data()  # before the progress bar starts
    reporter.bar(config.epochs, "epoch", "train-teacher")
    try:
        result = train_teacher(config, out, on_epoch=lambda epoch, loss: reporter.update(1, loss=f"{loss:.3f}"))
    finally:
        reporter.close_bar()
    reporter.result(
        result,
        [
            f"wrote {result['out']}: {result['arch']} on {result['dataset']}, "
            f"held-out accuracy {result['test_accuracy']:.4f} ({result['test_images']} images, "
            f"{result['seconds']} s)"
        ],
    )


def _check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before minutes of training are spent."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory; give the teacher file to write, e.g. '{out / 'teacher.pt'}'")
    if not parent.is_dir():
        raise UserError(f"--out '{out}': the folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"--out '{out}' is not writable")
