"""`dfkd demo`: the whole pipeline end to end on a real dataset (digits, Fashion-MNIST), with a results table."""

from __future__ import annotations

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, config_overrides
from dfkd.data.real import DATASET_NAMES
from dfkd.pipeline.config import TeacherTrainingConfig

EXAMPLE = """
\b
Examples:
  dfkd demo                      # about 9 minutes on 2 idle CPU cores (student 0.997 on real digits)
  dfkd demo --fast --out /tmp/d  # a minute: a plumbing check of the same steps at toy scale
  dfkd demo --json               # one JSON object with teacher_accuracy, student_accuracy, fidelity, ...
  dfkd demo --dataset fashion-mnist --out fm   # Fashion-MNIST (IDX files from --data-dir, $DFKD_DATA,
                                               # Debian's dataset-fashion-mnist, or --download): 67 min
                                               # at one thread (teacher 20, synthesis 10, distillation 36),
                                               # student 0.859 against a 0.930 teacher
  dfkd demo --dataset fashion-mnist --fast     # a plumbing check: the student stays near chance at this scale

A rerun reuses the finished steps (teacher file, verified shards, distillation checkpoint).
"""

FAST_NOTE = (
    "--fast is a plumbing check: every step runs at toy scale, and a student near chance level (0.1) on the real "
    "images is expected; `dfkd demo` without --fast gives the real result (digits: about 9 minutes)"
)


@click.command("demo", epilog=EXAMPLE)
@click.option(
    "--out",
    default="dfkd-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the teacher, shards, student, grid and the results page results.md.",
)
@click.option(
    "--dataset",
    type=click.Choice(DATASET_NAMES),
    default="digits",
    show_default=True,
    help="Real dataset: the teacher trains on its training images, the student is measured on its held-out ones.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Folder of the dataset's files (fashion-mnist: the four IDX files). "
    "[default: $DFKD_DATA, then /usr/share/datasets/fashion-mnist, then ~/.cache/dfkd/fashion-mnist]",
)
@config_options(TeacherTrainingConfig, only=("download",))
@click.option(
    "--fast",
    is_flag=True,
    help="A plumbing check at toy scale (the shipped recipe digits_fast or fashion_fast): every step runs in about "
    "a minute, and the student stays near chance level (0.1) on the real images.",
)
@config_options(TeacherTrainingConfig, only=("threads",))  # the one declaration of --threads every command shares
@click.option(
    "--lpips-backbone",
    type=click.Path(dir_okay=False),
    help="AlexNet weights file for the LPIPS diversity figure (skipped without it).",
)
@common_options(resume=(), print_config=False)  # the demo reads every section of its recipe itself
def demo_command(
    out: str,
    dataset: str,
    data_dir: str,
    fast: bool,
    lpips_backbone: str,
    config_path: str,
    json_mode: bool,
    quiet: bool,
    **options,
) -> None:
    """Train a teacher on real images, synthesize shards from it, distill a DearKD student on the shards only,
    evaluate both on held-out real images."""
    from dfkd.pipeline.end_to_end import results_table, run_demo

    reporter = Reporter(json_mode, quiet)

    reporter.message(f"dfkd demo: teacher -> synthesize -> distill -> evaluate, in {out}")
    if fast:
        reporter.message(FAST_NOTE)
    overrides = config_overrides(options)
    result = run_demo(
        out,
        config_path,
        fast,
        overrides.get("threads", 0),
        lpips_backbone,
        lambda step: reporter.progress(step, "epoch" if step == "train-teacher" else "img", postfix=_postfix),
        dataset,
        data_dir,
        bool(overrides.get("download")),
    )
    note = [FAST_NOTE] if fast else []
    lines = (
        results_table(result) + [f"image grid: {result['grid']}"] + note + [f"results page: {result['results_page']}"]
    )
    reporter.result(result, lines)


def _postfix(info: dict) -> dict:
    return {
        k: f"{v:.3f}" if isinstance(v, float) else str(v)
        for k, v in info.items()
        if k in ("loss", "total", "ce", "epoch", "stage")
    }
