"""`dfkd inspect`: describe a shard set (or a distillation run folder), optionally with a grid of its images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import yaml

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.evaluate import settings, shards_argument
from dfkd.cli.options import config_options
from dfkd.evaluate.config import EvaluateConfig
from synth.common.errors import UserError

_LISTED = 5  # damaged or missing shards named on the verify line


@click.command(
    "inspect",
    epilog="""
\b
Examples:
  dfkd inspect shards/
  dfkd inspect shards/ --grid grid.png --per-class-grid 4 --grid-classes 0-9
  dfkd inspect runs/nano/        # a distillation run: its epochs, results, curves.png redrawn

The grid has one row per class (its first k images; black cells when it has fewer), the class
name or id in a 128-px label column: (128 + k*(R+2) + 2) x (classes*(R+2) + 2) px for R-px images.
""",
)
@shards_argument
@click.option("--grid", type=click.Path(dir_okay=False), help="Write a PNG grid of images per class.")
@config_options(EvaluateConfig, only=("per_class_grid",))
@click.option("--grid-classes", help="Classes in the grid: all, 0-9, or 1,5,7-9. [default: those present]")
@common_options(print_config=False)  # a run folder is inspected without settings
def inspect_command(
    shards: str,
    config_path: Optional[str],
    json_mode: bool,
    quiet: bool,
    grid: Optional[str],
    grid_classes: Optional[str],
    **options,
) -> None:
    """Describe a shard directory (counts per class, resolution, teacher, config, format, verify result) or a
    distillation run folder (redraws its curves.png from metrics.jsonl)."""
    reporter = Reporter(json_mode, quiet)
    if not Path(shards).is_dir():  # before torch loads (dfkd.evaluate.inspection reads shards with it)
        raise UserError(f"shard directory '{shards}' does not exist")
    from dfkd.evaluate.inspection import inspect_shards, is_run_dir

    if is_run_dir(shards):
        return _inspect_run(reporter, shards, grid)
    cfg = settings(config_path, options)
    result = inspect_shards(shards, grid, cfg.per_class_grid, grid_classes)
    counts = list(result["per_class"].values())
    check = result["verify"]
    lines = [
        f"{result['path']}: format v{result['format_version']}, {result['images']} images in {result['shards']} "
        f"shard(s), {result['resolution']} px, {len(counts)} of {result['num_classes']} classes "
        f"({min(counts)}-{max(counts)} images per class), complete: {result['complete']}",
        f"teacher: {result['teacher'].get('spec')}  weights sha256 {str(result['teacher'].get('weights_sha256'))[:12]}",
        f"per class: {', '.join(f'{c}: {n}' for c, n in result['per_class'].items())}",
        _verify_line(check),
        f"dataset card: {result['card']}"
        if result["card"]
        else "dataset card: none (dfkd synthesize writes README.md)",
        "config:",
        *(
            "  " + line
            for line in yaml.safe_dump(
                result["config"], sort_keys=False, default_flow_style=None, width=100
            ).splitlines()
        ),
    ]
    if grid:
        lines.append(f"grid: {grid} ({result['grid']['width']}x{result['grid']['height']} px)")
    reporter.result(result, lines)
    if not check["ok"]:  # the report is printed; the exit status says it failed
        sys.exit(2)


def _inspect_run(reporter: Reporter, run_dir: str, grid: Optional[str]) -> None:
    """Report a distillation run folder and redraw its curves."""
    from dfkd.evaluate.inspection import inspect_run

    if grid:
        raise UserError(f"'{run_dir}' is a distillation run (metrics.jsonl, no shards); --grid draws shard sets")
    result = inspect_run(run_dir, reporter.message)
    stage2 = f", stage 2 from epoch {result['stage2_from']}" if result["stage2_from"] else ""
    lines = [f"{result['path']}: distillation run, {result['epochs']} epochs{stage2}"]
    if result["final_loss"] is not None:
        lines.append(f"final training loss: {result['final_loss']:.4f}")
    if result["val_top1"] is not None:
        lines.append(f"validation top-1: {result['val_top1']:.4f}")
    lines += [f"student: {result['student'] or 'not yet written'}", f"curves: {result['curves']}"]
    reporter.result(result, lines)


def _verify_line(check: dict) -> str:
    """The verify result in words: ok, or each damaged shard with its problem and each missing shard."""
    if check["ok"]:
        return "verify: ok"
    damaged = [f"{name} is damaged ({problem})" for name, problem in check["problems"].items()]
    missing = [f"{name} is missing" for name in check["missing"]]
    shown, more = (damaged + missing)[:_LISTED], len(damaged + missing) - _LISTED
    return f"verify: FAILED: {'; '.join(shown)}" + (f"; and {more} more (--json lists them all)" if more > 0 else "")
