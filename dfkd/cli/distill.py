"""`dfkd distill`: shards (or real images) + a CNN teacher -> a DearKD student, in two stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, config_overrides, recipe_settings
from dfkd.distill.config import DistillConfig, rescale_epochs
from dfkd.recipe_loader import load_recipe

if TYPE_CHECKING:
    from synth.common import distributed
    from synth.common.runtime import Progress

EXAMPLE = """
\b
Examples:
  dfkd distill --config df_dearkd_distill --shards shards/ --out runs/df-dearkd-ti
  dfkd real-images --dataset digits --out digits-test/    # the real held-out digits
  dfkd distill --config dearkd_nano_digits --shards digits-shards/ \\
      --teacher digits-teacher.pt --val-data digits-test/ --out runs/digits-nano
  dfkd distill --shards shards/ --distillation stored --student dearkd_pico_patch4_32 \\
      --epochs 2 --stage1-epochs 1 --batch-size 16 --out runs/tiny --device cpu

Stage 1 (early KD): CE(class head, label) + CE(distillation head, teacher argmax) + a_hid * hidden MSE
through the aligners; stage 2: CE on both heads, no teacher.

Function matching (--distillation function_matching; the data-free recipes' default): every batch is
Mixup/CutMix-ed and both heads learn tau^2 * KL(teacher || student) on exactly that mixed view, so the
teacher labels every image the student sees and the labels of the shards are not needed; it pays off
over long schedules (the digits recipe: 80 epochs, no stage 2). Rerun with --resume to continue an
interrupted run from out/checkpoint.pt. Writes out/student.pth, student.json, metrics.jsonl and
curves.png (loss terms, lr, --val-data top-1 per epoch; `dfkd inspect out/` redraws it).
With a recipe, --epochs N keeps the recipe's share of stage-1 and warm-up epochs (unless given too).

\b
Scale out with torchrun (DistributedDataParallel; --batch-size is per process, lr scales with the
effective batch = batch size x processes):
  torchrun --nproc_per_node 4 -m dfkd distill --config df_dearkd_distill --shards shards/ \\
      --batch-size 256 --out runs/df
"""


@click.command("distill", epilog=EXAMPLE)
@config_options(DistillConfig)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--verify/--no-verify",
    "verify_shards",
    default=True,
    help="Refuse damaged, missing or unfinished shards (reads each shard once). [default: verify]",
)
@common_options(resume=("--resume",))
def distill_command(out: str, config_path: str, json_mode: bool, quiet: bool, verify_shards: bool, **options) -> None:
    """Distill a CNN teacher into a DearKD student (stage 1 early KD, stage 2 without KD)."""
    reporter = Reporter(json_mode, quiet)
    scaled, note = rescale_epochs(load_recipe(config_path, "distill"), config_overrides(options))
    config = recipe_settings(DistillConfig, "distill", config_path, options, extra=scaled)
    # recipe_settings checked the settings that need no files (and printed them under --print-config): torch loads now

    from dfkd.distill.inputs.loaders import shard_roots
    from dfkd.distill.trainer import train_student
    from synth.common import distributed
    from synth.shards.verify import check_integrity

    for root in shard_roots(config.shards) if config.shards is not None else ():
        check_integrity(root, verify_shards, warn=lambda text: click.echo(text, err=True))
    ranks = distributed.init(config.device)
    summary = train_student(config, out, _progress(reporter, ranks, note), ranks=ranks)
    ranks.close()  # on failure it runs at exit, after the error line (synth.common.distributed.Ranks.close)
    if ranks.rank == 0:
        reporter.result(summary, _lines(summary))


def _progress(reporter: Reporter, ranks: distributed.Ranks, note: Optional[str] = None) -> Progress:
    """Rank 0 shows the progress bar (images of all ranks) and the notes; other ranks print only their errors.
    `note` (what --epochs changed) is printed as training starts: after every input has been checked."""
    from synth.common.runtime import Progress

    if ranks.rank != 0:
        return Progress(message=lambda text: None)
    desc = "distill" if not ranks.distributed else f"distill ({ranks.world_size} processes)"
    progress = reporter.progress(
        desc, postfix=lambda info: {"epoch": info["epoch"], "stage": info["stage"], "loss": f"{info['loss']:.3f}"}
    )
    if note:
        start = progress.start
        progress.start = lambda total: (reporter.message(note), start(total))[-1]
    return progress


def _lines(summary: dict) -> list[str]:
    kd = f"hidden KD pairs {', '.join(summary['pairs'])}" if summary["hidden_kd"] else "hidden KD off"
    lines = [
        f"trained {summary['model']} for {summary['epochs']} epochs ({summary['stage1_epochs']} with "
        f"{summary['distillation']} KD, {kd}) on {summary['images']} images in {summary['seconds']} s",
        f"student: {summary['student']} (+ {summary['student_json']})",
        f"curves: {summary['curves']}",
    ]
    if summary["world_size"] > 1:
        lines.append(
            f"{summary['world_size']} processes x batch {summary['batch_size']} = effective batch "
            f"{summary['effective_batch']}, lr {summary['lr']:.3g}"
        )
    if summary["final_loss"] is not None:
        lines.append(f"final training loss: {summary['final_loss']:.4f}")
    if summary["val_top1"] is not None:
        lines.append(f"validation top-1: {summary['val_top1']:.4f}")
    return lines
