"""`dfkd train-teacher`: train a small BatchNorm CNN teacher on real data and write a teacher file."""
from __future__ import annotations

import os
from pathlib import Path

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.config import load_recipe
from synth.errors import UserError
from synth.runtime import use_threads

EXAMPLE = """
\b
Example:
  dfkd train-teacher --dataset digits --out digits-teacher.pt
  dfkd synthesize --teacher digits-teacher.pt --config digits --out shards/
"""


@click.command("train-teacher", epilog=EXAMPLE)
@click.option("--dataset", type=click.Choice(["digits"]), default=None,
              help="Real training data (digits: scikit-learn's bundled handwritten digits, 32x32 RGB). [default: digits]")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Teacher file to write.")
@click.option("--arch", default=None, help="timm architecture with BatchNorm. [default: dfkd_cnn_digits]")
@click.option("--epochs", type=int, default=None, help="[default: 12]")
@click.option("--seed", type=int, default=None, help="Seed of the split and the training. [default: 0]")
@click.option("--threads", type=int, default=None, help="CPU threads. [default: all cores]")
@common_options
def train_teacher(out: str, config_path: str, json_mode: bool, quiet: bool, dataset, arch, epochs, seed,
                  threads) -> None:
    """Train a small BN CNN teacher on real images (held-out accuracy is reported and stored in the file)."""
    from dfkd.train_teacher import check_settings
    from dfkd.train_teacher import train_teacher as train

    reporter = Reporter(json_mode, quiet)
    recipe = load_recipe(config_path, "train_teacher")
    settings = {"dataset": "digits", "arch": "dfkd_cnn_digits", "epochs": 12, "seed": 0}
    unknown = sorted(set(recipe) - set(settings))
    if unknown:
        raise UserError(f"unknown setting '{unknown[0]}'; accepted: {', '.join(sorted(settings))}")
    settings.update(recipe)
    settings.update({k: v for k, v in {"dataset": dataset, "arch": arch, "epochs": epochs, "seed": seed}.items()
                     if v is not None})
    check_settings(settings["dataset"], settings["arch"], int(settings["epochs"]))
    _check_writable(Path(out))
    use_threads(threads or 0)
    reporter.bar(int(settings["epochs"]), "epoch", "train-teacher")
    try:
        result = train(out, on_epoch=lambda epoch, loss: reporter.update(1, loss=f"{loss:.3f}"), **settings)
    finally:
        reporter.close_bar()
    reporter.result(result, [f"wrote {result['out']}: {result['arch']} on {result['dataset']}, "
                             f"held-out accuracy {result['test_accuracy']:.4f} ({result['test_images']} images, "
                             f"{result['seconds']} s)"])


def _check_writable(out: Path) -> None:
    """Refuse an --out that cannot be written before minutes of training are spent."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory; give the teacher file to write, e.g. '{out / 'teacher.pt'}'")
    if not parent.is_dir():
        raise UserError(f"--out '{out}': the folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"--out '{out}' is not writable")
