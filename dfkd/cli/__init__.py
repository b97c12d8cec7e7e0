"""The `dfkd` command line: a click group; each command module is thin (parse, configure, call, report)."""
from __future__ import annotations

import click

from dfkd.cli.common import install_warning_filters
from dfkd.cli.demo import demo
from dfkd.cli.distill import distill
from dfkd.cli.evaluate import evaluate, export, inspect_command
from dfkd.cli.synthesize import synthesize
from dfkd.cli.train_teacher import train_teacher


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dfkd")
def main() -> None:
    """dfkd: data-free knowledge distillation from a CNN teacher into a DearKD vision transformer.

    \b
    dfkd synthesize   teacher -> labelled synthetic images in HDF5 shards
    dfkd distill      shards (or real images) -> DearKD student
    dfkd evaluate     accuracy, teacher fidelity, LPIPS diversity
    dfkd inspect      counts per class, teacher, config, format, verify; --grid PNG
    dfkd export       shards -> PNG class folders (ImageFolder layout)
    dfkd train-teacher  a small BN CNN teacher on real digits
    dfkd demo         all of it end to end on real digits, with a results table
    """
    install_warning_filters()


main.add_command(synthesize)
main.add_command(train_teacher)
main.add_command(distill)
main.add_command(evaluate)
main.add_command(inspect_command)
main.add_command(export)
main.add_command(demo)
