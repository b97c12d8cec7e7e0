"""`dfkd distill`: shards (or real images) + a CNN teacher -> a DearKD student, in two stages."""
from __future__ import annotations

import math

import click

from dfkd.cli.common import Reporter, common_options, overrides
from dfkd.config import apply_overrides, build, load_recipe
from dfkd.distill import DistillConfig
from dfkd.distill import distill as run_distill
from dfkd.distill.data import shard_roots
from dfkd.distill.losses import KINDS
from synth import distributed
from synth.errors import UserError
from synth.runtime import Progress
from synth.shard_verify import check_integrity

EXAMPLE = """
\b
Examples:
  dfkd distill --config df_dearkd_distill --shards shards/ --out runs/df-dearkd-ti
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
interrupted run from out/checkpoint.pt. Writes out/student.pth, student.json, metrics.jsonl.

\b
Scale out with torchrun (DistributedDataParallel; --batch-size is per process, lr scales with the
effective batch = batch size x processes):
  torchrun --nproc_per_node 4 -m dfkd distill --config df_dearkd_distill --shards shards/ \\
      --batch-size 256 --out runs/df
"""


@click.command(epilog=EXAMPLE)
@click.option("--shards", help="Synthesized shard directory to train on; several sets of the same teacher combine "
                                "as one: a,b (comma-separated).")
@click.option("--images", type=click.Path(file_okay=False),
              help="Real image folder (<dir>/<class>/<image>; integer folder names are class ids) instead of shards.")
@click.option("--subset", type=float, help="Seeded class-stratified fraction of the training images. [default: 1]")
@click.option("--subset-seed", type=int, help="Seed of the subset. [default: 0]")
@click.option("--val-data", type=click.Path(file_okay=False), help="Real image folder for top-1 validation.")
@click.option("--val-every", type=int, help="Validate every N epochs (and after the last). [default: 1]")
@click.option("--teacher", help="timm:<name>[.<tag>], torchvision:<name>, or a file from `dfkd train-teacher`.")
@click.option("--teacher-weights", type=click.Path(dir_okay=False),
              help="Weights file (state_dict, dict with state_dict/model, or .safetensors).")
@click.option("--student", help="timm student with a distillation head, e.g. dearkd_tiny_patch16_224 "
                                "(see timm.list_models('dearkd*')). [default: dearkd_tiny_patch16_224]")
@click.option("--num-mhca", type=int, help="MHCA blocks of the student. [default: the model's]")
@click.option("--locality-strength", type=float, help="MHCA local-init strength alpha (0: plain MHSA start).")
@click.option("--input-size", type=int, help="Student input px, a multiple of its patch. [default: the model's]")
@click.option("--drop-path", type=float, help="Student stochastic depth rate. [default: 0.1]")
@click.option("--distillation", type=click.Choice(KINDS),
              help="function_matching: both heads match the teacher's distribution (KL at tau) on the very "
                   "mixed view they train on, labels unused (the data-free default); hard: CE to the "
                   "teacher's argmax; soft: KL at tau on the distillation head; stored: the shards' teacher "
                   "logits, no teacher run (hidden KD off). [default: hard]")
@click.option("--tau", type=float, help="Temperature of soft/function_matching/stored distillation. [default: 1]")
@click.option("--w-cls", type=float, help="Weight of the class-head term. [default: 1]")
@click.option("--a-hid", type=float, help="Weight of the hidden-feature MSE (0: off). [default: 1]")
@click.option("--pairs", help="Hidden KD pairs block:stage, e.g. 7:3,3:2. [default: last MHCA block with the "
                              "teacher stage whose stride matches the patch size]")
@click.option("--epochs", type=int, help="Total epochs. [default: 300]")
@click.option("--stage1-epochs", help="Stage-1 epochs: a count, or a fraction of --epochs below 1. [default: 5/6]")
@click.option("--batch-size", type=int, help="Images per step and process (under torchrun the effective batch is "
                                             "this x the number of processes). [default: 256]")
@click.option("--lr", type=float, help="Learning rate per 512 images (scaled by effective batch/512). "
                                       "[default: 5e-4]")
@click.option("--min-lr", type=float, help="Final cosine learning rate. [default: 1e-5]")
@click.option("--warmup-epochs", type=float, help="Linear warm-up epochs. [default: 5]")
@click.option("--weight-decay", type=float, help="AdamW weight decay. [default: 0.05]")
@click.option("--rand-augment", help="timm RandAugment string, or none. [default: rand-m9-mstd0.5-inc1]")
@click.option("--hflip", type=float, help="Horizontal flip probability. [default: 0.5]")
@click.option("--grayscale", type=float, help="Probability of a grayscale copy (teachers of grayscale data). "
                                              "[default: 0]")
@click.option("--mixup", type=float, help="Mixup alpha (0: off). [default: 0.8]")
@click.option("--cutmix", type=float, help="CutMix alpha (0: off). [default: 1.0]")
@click.option("--mix-prob", type=float, help="Probability that a batch is mixed. [default: 1]")
@click.option("--reprob", type=float, help="Random erasing probability. [default: 0.25]")
@click.option("--smoothing", type=float, help="Label smoothing. [default: 0.1]")
@click.option("--workers", type=int, help="DataLoader worker processes. [default: 4]")
@click.option("--seed", type=int, help="Seed. [default: 0]")
@click.option("--threads", type=int, help="CPU threads. [default: all cores]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--resume", is_flag=True, default=None, help="Continue from out/checkpoint.pt.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--verify/--no-verify", "verify_shards", default=True,
              help="Refuse damaged, missing or unfinished shards (reads each shard once). [default: verify]")
@common_options
def distill(out: str, config_path: str, json_mode: bool, quiet: bool, verify_shards: bool, **options) -> None:
    """Distill a CNN teacher into a DearKD student (stage 1 early KD, stage 2 without KD)."""
    reporter = Reporter(json_mode, quiet)
    rand_augment = options["rand_augment"]
    data = apply_overrides(load_recipe(config_path, "distill"), overrides({
        **{key: options[key] for key in (
            "shards", "images", "subset", "subset_seed", "val_data", "val_every", "teacher", "teacher_weights",
            "student", "num_mhca", "locality_strength", "input_size", "drop_path", "epochs", "stage1_epochs",
            "batch_size", "workers", "seed", "threads", "device", "resume")},
        "loss.distillation": options["distillation"], "loss.tau": options["tau"], "loss.w_cls": options["w_cls"],
        "loss.a_hid": options["a_hid"],
        "loss.pairs": options["pairs"],
        "optim.lr": options["lr"], "optim.min_lr": options["min_lr"], "optim.warmup_epochs": options["warmup_epochs"],
        "optim.weight_decay": options["weight_decay"],
        "augment.rand_augment": "" if rand_augment == "none" else rand_augment, "augment.hflip": options["hflip"],
        "augment.grayscale": options["grayscale"],
        "augment.mixup": options["mixup"], "augment.cutmix": options["cutmix"], "augment.mix_prob": options["mix_prob"],
        "augment.reprob": options["reprob"],
        "augment.smoothing": options["smoothing"],
    }))
    config = build(DistillConfig, data)
    _check_numbers(config)
    for root in shard_roots(config.shards) if config.shards is not None else ():
        check_integrity(root, verify_shards, warn=lambda text: click.echo(text, err=True))
    ranks = distributed.init(config.device)
    summary = run_distill(config, out, _progress(reporter, ranks), ranks=ranks)
    ranks.close()  # on failure it runs at exit, after the error line (synth.distributed.Ranks.close)
    if ranks.rank == 0:
        reporter.result(summary, _lines(summary))


def _check_numbers(config: DistillConfig) -> None:
    """Refuse non-finite or out-of-range optimiser numbers as typed (before any batch scaling)."""
    optim = config.optim
    for name, value, least in (("lr", optim.lr, None), ("min-lr", optim.min_lr, 0), ("warmup-lr", optim.warmup_lr, 0),
                               ("weight-decay", optim.weight_decay, 0), ("warmup-epochs", optim.warmup_epochs, 0)):
        if not math.isfinite(value) or (least is None and value <= 0) or (least is not None and value < least):
            accepted = "a finite number > 0" if least is None else f"a finite number >= {least}"
            raise UserError(f"{name} {value} is not accepted; give {accepted}")
    for name, value in (("tau", config.loss.tau), ("a-hid", config.loss.a_hid), ("drop-path", config.drop_path)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{name} {value} is not accepted; give a finite number >= 0")


def _progress(reporter: Reporter, ranks: distributed.Ranks) -> Progress:
    """Rank 0 shows the progress bar (images of all ranks) and the notes; other ranks print only their errors."""
    if ranks.rank != 0:
        return Progress(message=lambda text: None)
    desc = "distill" if not ranks.distributed else f"distill ({ranks.world_size} processes)"
    return reporter.progress(desc, postfix=lambda info: {"epoch": info["epoch"], "stage": info["stage"],
                                                         "loss": f"{info['loss']:.3f}"})


def _lines(summary: dict) -> list[str]:
    kd = f"hidden KD pairs {', '.join(summary['pairs'])}" if summary["hidden_kd"] else "hidden KD off"
    lines = [f"trained {summary['model']} for {summary['epochs']} epochs ({summary['stage1_epochs']} with "
             f"{summary['distillation']} KD, {kd}) on {summary['images']} images in {summary['seconds']} s",
             f"student: {summary['student']} (+ {summary['student_json']})"]
    if summary["world_size"] > 1:
        lines.append(f"{summary['world_size']} processes x batch {summary['batch_size']} = effective batch "
                     f"{summary['effective_batch']}, lr {summary['lr']:.3g}")
    if summary["final_loss"] is not None:
        lines.append(f"final training loss: {summary['final_loss']:.4f}")
    if summary["val_top1"] is not None:
        lines.append(f"validation top-1: {summary['val_top1']:.4f}")
    return lines
