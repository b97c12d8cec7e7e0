"""`dfkd real-images`: a real dataset's held-out or training images as a class folder, for `--val-data`,
`dfkd evaluate accuracy --data` and real-image reference runs (`dfkd distill --images`)."""

from __future__ import annotations

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, config_overrides
from dfkd.pipeline.config import TeacherTrainingConfig
from dfkd.recipe_loader import build

EXAMPLE = """
\b
Examples:
  dfkd real-images --dataset fashion-mnist --out fm-test/         # the 10,000 test images
  dfkd real-images --dataset fashion-mnist --split train --count 2000 --out fm-train-2k/
  dfkd distill --config fashion --teacher t.pt --shards shards/ --val-data fm-test/ --out runs/fm
  dfkd evaluate accuracy --student runs/fm/student.pth --teacher t.pt --data fm-test/
"""


@click.command("real-images", epilog=EXAMPLE)
@config_options(
    TeacherTrainingConfig,
    only=("dataset", "data_dir", "download"),
    help={"dataset": "Real dataset: digits (scikit-learn's bundled digits) or fashion-mnist (its IDX files)."},
)
@click.option(
    "--split",
    "part",
    type=click.Choice(("test", "train")),
    default="test",
    show_default=True,
    help="The held-out images (validation, evaluation) or the training images (real-image reference runs).",
)
@click.option("--count", type=click.IntRange(min=1), help="A seeded random subset of this many images. [default: all]")
@config_options(TeacherTrainingConfig, only=("seed",), help={"seed": "Seed of the subset (and of the digits' split)."})
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Class folder to write (OUT/<class id>/<index>.png); it must not exist yet.",
)
@common_options(config=False)
def real_images_command(part: str, count: int, out: str, json_mode: bool, quiet: bool, **options) -> None:
    """Write a real dataset's test or training images as a class folder (the dataset's own test set for digits is
    the teacher's held-out split at the same --seed)."""
    reporter = Reporter(json_mode, quiet)
    config = build(TeacherTrainingConfig, config_overrides(options))
    from dfkd.data.real import write_real_images  # numpy and scikit-learn load once the settings are checked

    config.fetch_data()
    result = write_real_images(config.dataset, part, out, count, config.seed, config.data_dir)
    reporter.result(
        result,
        [f"wrote {result['images']} {part} images of {result['dataset']} ({result['classes']} classes) to {out}"],
    )
