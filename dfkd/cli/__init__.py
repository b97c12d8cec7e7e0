"""The `dfkd` command line: a click group; each command module is thin (parse, configure, call, report)."""

from __future__ import annotations

import sys

import click

from dfkd.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    install_warning_filters,
    interrupted_message,
    quit_on_closed_pipe,
)
from dfkd.cli.demo import demo_command
from dfkd.cli.distill import distill_command
from dfkd.cli.evaluate import evaluate_group
from dfkd.cli.export import export_command
from dfkd.cli.import_teacher import import_teacher_command
from dfkd.cli.inspect import inspect_command
from dfkd.cli.install_check import guard as check_install
from dfkd.cli.real_images import real_images_command
from dfkd.cli.synthesize import synthesize_command
from dfkd.cli.train_teacher import train_teacher_command


class OneLineErrors(click.Group):
    """Click's usage errors as one `error:` line (exit 2) instead of a usage block; --help is unchanged."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        self.argv = list(args) if args is not None else sys.argv[1:]  # the resume hint after Ctrl-C repeats them
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `dfkd` alone: the help text
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "dfkd"
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:  # click's own: Ctrl-C outside a command's body, or EOF at a prompt
            if isinstance(exc.__context__, KeyboardInterrupt):
                click.echo(f"error: {interrupted_message(None)}", err=True)
                sys.exit(EXIT_INTERRUPTED)
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_RUNTIME)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            quit_on_closed_pipe()
        sys.exit(code if isinstance(code, int) else 0)  # without standalone mode click returns ctx.exit()'s code


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dfkd")
def main() -> None:
    """dfkd: data-free knowledge distillation from a CNN teacher into a DearKD vision transformer.

    \b
    dfkd synthesize   teacher -> labelled synthetic images in HDF5 shards
    dfkd distill      shards (or real images) -> DearKD student
    dfkd evaluate     accuracy, teacher fidelity, LPIPS diversity
    dfkd inspect      shards: counts per class, teacher, config, format, verify; --grid PNG. A run: curves.png
    dfkd export       shards -> image folders, WebDataset tars or a Hugging Face dataset
                      (--to imagefolder | webdataset | hf)
    dfkd train-teacher  a small BN CNN teacher on real images (digits, fashion-mnist)
    dfkd import-teacher your own CNN (a class, timm or torchvision + weights) checked, as one teacher file
    dfkd real-images  a real dataset's test or training images as a class folder (--val-data, --data, --images)
    dfkd demo         all of it end to end on real digits or Fashion-MNIST, with a results page (results.md)
    """
    install_warning_filters()
    check_install()  # torch and torchvision of one build: checked when torchvision is first imported


for command in (
    synthesize_command,
    train_teacher_command,
    import_teacher_command,
    distill_command,
    evaluate_group,
    inspect_command,
    export_command,
    demo_command,
    real_images_command,
):
    main.add_command(command)
