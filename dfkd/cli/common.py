"""What every command shares: --config/--json/--quiet, one-line errors with exit codes, progress and output."""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import signal
import sys
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import click

from dfkd.cli.options import NAMES, PRINT_CONFIG, rename_settings
from synth.common.errors import UserError

if TYPE_CHECKING:
    from synth.common.runtime import Progress

EXIT_USAGE = 2
EXIT_RUNTIME = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: what a shell reports for a command stopped by Ctrl-C


def install_warning_filters() -> None:
    """Library warnings are noise on a command line, whether raised as warnings or logged (timm's scheduler logs
    one for a one-step schedule): hide them (set DFKD_DEBUG=1 to see them)."""
    if not os.environ.get("DFKD_DEBUG"):
        warnings.filterwarnings("ignore")
        logging.getLogger().setLevel(logging.ERROR)


def common_options(
    func: Optional[Callable] = None,
    *,
    config: bool = True,
    print_config: bool = True,
    resume: Optional[tuple[str, ...]] = None,
) -> Callable:
    """Add --config (unless `config=False`: a command with no recipe settings) and --print-config (unless
    `print_config=False`: a command that does not read its settings with `recipe_settings`), --json and --quiet,
    and turn errors into one line plus an exit code. `resume`: the flags that make a rerun resume (() for "the
    same command"; None: the command does not resume). Use as `@common_options` or `@common_options(config=False)`."""
    if func is None:
        return functools.partial(common_options, config=config, print_config=print_config, resume=resume)

    @click.option("--json", "json_mode", is_flag=True, help="Print exactly one JSON object on stdout.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages on stderr.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            context = click.get_current_context(silent=True)
            names = context.meta.get(NAMES) if context is not None else None  # set by options.recipe_settings
            fail(rename_settings(str(exc), names) if names else str(exc), EXIT_USAGE)
        except KeyboardInterrupt:
            fail(interrupted_message(resume), EXIT_INTERRUPTED)
        except BrokenPipeError:
            quit_on_closed_pipe()
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a runtime failure: one line, traceback only when debugging
            if os.environ.get("DFKD_DEBUG"):
                traceback.print_exc()
            fail(f"{type(exc).__name__}: {exc}".splitlines()[0], EXIT_RUNTIME)

    if config and print_config:
        wrapper = click.option(
            "--print-config",
            is_flag=True,
            is_eager=True,
            expose_value=False,
            callback=_mark_print_config,
            help="Print the settings the command would run with (the recipe, its bases, the options given) as a "
            "recipe and exit; its other required options may be left out.",
        )(wrapper)
    if config:
        wrapper = click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="RECIPE",
            help="A recipe: the name of a shipped one (e.g. digits, df_dearkd_imagenet; listed in the README) "
            "or a YAML file; command-line options override it.",
        )(wrapper)
    return wrapper


def interrupted_message(resume: Optional[tuple[str, ...]]) -> str:
    """What to say after Ctrl-C: the command line that resumes (this one, with the `resume` flags it lacks)."""
    if resume is None:
        return "interrupted"
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    argv = list(getattr(root.command, "argv", None) or sys.argv[1:])
    prog = root.info_name if root is not None and root.info_name else "dfkd"
    command = shlex.join([*prog.split(), *argv, *(flag for flag in resume if flag not in argv)])
    return f"interrupted; to resume, run: {command}"


def quit_on_closed_pipe() -> None:
    """The reader of stdout went away (`dfkd inspect s | head`): stop quietly, with the status a shell gives a
    command killed by SIGPIPE (141), as other command-line tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush of stdout must not fail again
    sys.exit(128 + signal.SIGPIPE)


def _mark_print_config(context: click.Context, param: click.Parameter, value: bool) -> None:
    """--print-config: the command prints its settings (dfkd.cli.options.recipe_settings) instead of running, so
    options that only a run needs (--out) may be missing: the rest is parsed leniently, as click does for
    completion."""
    if value:
        context.meta[PRINT_CONFIG] = True
        context.resilient_parsing = True


def fail(message: str, code: int) -> None:
    """Print `error: message` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Reporter:
    """Progress on stderr (tqdm) and the final result: a JSON line or human-readable lines on stdout."""

    def __init__(self, json_mode: bool, quiet: bool):
        self.json_mode, self.quiet = json_mode, quiet
        self._bar = None

    def message(self, text: str) -> None:
        """A note on stderr (suppressed by --quiet)."""
        if not self.quiet:
            click.echo(text, err=True)

    def bar(self, total: int, unit: str, desc: str):
        """Start a tqdm bar on stderr (a disabled one under --quiet, or when there is nothing to do); returns it."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            unit=unit,
            desc=desc,
            file=sys.stderr,
            disable=self.quiet or not total,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        return self._bar

    def update(self, n: int, **postfix: str) -> None:
        """Advance the current bar by `n` and show `postfix` values beside it."""
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def progress(self, desc: str, unit: str = "img", postfix: Callable[[dict], dict] = lambda info: {}) -> Progress:
        """A synth Progress driving this reporter's bar; `postfix` picks what each update shows beside it."""
        from synth.common.runtime import Progress

        return Progress(
            start=lambda total: self.bar(total, unit, desc),
            advance=lambda n, info: self.update(n, **postfix(info)),
            message=self.message,
            close=self.close_bar,
        )

    def close_bar(self) -> None:
        """Close the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def result(self, data: dict, lines: Optional[Iterable[str]] = None) -> None:
        """Emit the command's result: one JSON object (--json) or the human-readable lines."""
        if self.json_mode:
            click.echo(json.dumps(data, default=_jsonable))
        else:
            for line in lines if lines is not None else (f"{k}: {v}" for k, v in data.items()):
                click.echo(line)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
