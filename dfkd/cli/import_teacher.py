"""`dfkd import-teacher`: your network (any teacher spec) with its weights, preprocessing and class names, checked and
packed into one dfkd teacher file that later commands take as `--teacher FILE`."""

from __future__ import annotations

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, recipe_settings
from synth.teachers.packing import ImportConfig

EXAMPLE = """
\b
Examples (docs/teachers.md):
  dfkd import-teacher --teacher models/lenet.py:LeNet5 --teacher-weights lenet.pth \\
      --mean fashion-mnist --std fashion-mnist --input-size 32 --class-names classes.txt --out lenet-teacher.pt
  dfkd import-teacher --teacher my_package.nets:cifar_resnet20 --teacher-kwargs '{"num_classes": 10}' \\
      --teacher-weights resnet20.pth --mean cifar10 --std cifar10 --input-size 32 --out resnet20-teacher.pt
  dfkd import-teacher --teacher timm:resnet18 --teacher-weights my_resnet18_64px.pth \\
      --mean 0.5 --std 0.25 --input-size 64 --out resnet18-teacher.pt
  dfkd synthesize --teacher lenet-teacher.pt --config fashion --out shards/

A module:factory or file.py:factory spec imports and runs that code (now and whenever the teacher file is
loaded: the file records the spec and the sha256 of the code, not the code). A whole pickled model
(torch.save(model)) cannot be packed: pass its class and its state_dict instead.
"""


@click.command("import-teacher", epilog=EXAMPLE)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The teacher file to write.")
@config_options(ImportConfig)
@common_options
def import_teacher_command(out: str, config_path: str, json_mode: bool, quiet: bool, **options) -> None:
    """Check a teacher (BatchNorm layers, classifier, a dry forward at its input size, one class name per class)
    and pack it with its weights and preprocessing into a teacher file."""
    from synth.teachers.packing import import_teacher

    reporter = Reporter(json_mode, quiet)
    config = recipe_settings(ImportConfig, "import_teacher", config_path, options)
    result = import_teacher(config, out)
    for note in result["notes"]:
        reporter.message(note)
    names = result["class_names"]
    reporter.result(
        result,
        [
            f"wrote {result['out']}: {result['arch']} ({result['num_classes']} classes, {result['bn_layers']} BN "
            f"layers, {result['input_channels']} input channel(s) at {result['input_size']} px)",
            f"mean {result['mean']}, std {result['std']}; class names: "
            + (", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "none (class ids)"),
        ],
    )
