"""`dfkd evaluate diversity|fidelity|accuracy`: thin layers over dfkd.evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, recipe_settings
from dfkd.evaluate.config import EvaluateConfig
from synth.common.errors import UserError

EVALUATE_EXAMPLES = """
\b
Examples:
  dfkd evaluate diversity shards/ --lpips-backbone alexnet-owt-7be5be79.pth --pairs 500 --json
  dfkd evaluate fidelity shards/ --teacher timm:resnet18
  dfkd evaluate accuracy --student runs/x/student.pth --teacher timm:resnet18 --data imagenet/val --crop-pct 0.875
"""


def settings(config_path: Optional[str], options: dict) -> EvaluateConfig:
    """The recipe's `evaluate` section with the options given, validated (before torch loads); applies its thread
    count."""
    return _with_threads(recipe_settings(EvaluateConfig, "evaluate", config_path, options))


def _with_threads(cfg: EvaluateConfig) -> EvaluateConfig:
    """Apply the settings' thread count (this loads torch) and return them."""
    from synth.common.runtime import use_threads

    use_threads(cfg.threads)
    return cfg


def _class_label(result: dict, c: int) -> str:
    name = (result.get("class_names") or {}).get(c)
    return f"{c} ({name})" if name else str(c)


run_options = ("device", "batch_size", "workers", "threads")
# how to build the teacher, besides its spec (synth.teachers.sources.TeacherOptions)
TEACHER_SETTINGS = (
    "teacher_weights",
    "teacher_kwargs",
    "trust_pickle",
    "preprocessing.mean",
    "preprocessing.std",
    "preprocessing.input_size",
    "preprocessing.class_names",
)
shards_argument = click.argument("shards", type=click.Path(file_okay=False))
verify_option = click.option(
    "--verify/--no-verify",
    "verify_shards",
    default=True,
    help="Refuse damaged, missing or unfinished shards (reads each shard once). [default: verify]",
)


@click.group("evaluate", epilog=EVALUATE_EXAMPLES)
def evaluate_group() -> None:
    """Score synthesized shards (LPIPS diversity, teacher fidelity) or a student on real images (accuracy)."""


@evaluate_group.command(
    epilog="""
\b
Per class: the mean LPIPS (AlexNet, v0.1, inputs in [-1, 1]) over all pairs of its images, or over
at most --pairs seeded random pairs; then the mean over classes. Images under 64 px are upsampled
(bilinear) to 64 px. The AlexNet weights (torchvision's alexnet-owt-7be5be79.pth) come from
--lpips-backbone, else the torch hub cache ($TORCH_HOME/hub/checkpoints), else a download.
"""
)
@shards_argument
@config_options(EvaluateConfig, only=("lpips_backbone", "pairs", "seed", "device", "batch_size", "threads"))
@common_options
def diversity_command(shards: str, config_path: Optional[str], json_mode: bool, quiet: bool, **options) -> None:
    """LPIPS diversity of the images of each class (higher is more diverse)."""
    reporter = Reporter(json_mode, quiet)
    cfg = settings(config_path, options)
    from dfkd.evaluate.lpips_diversity import measure_lpips_diversity

    result = measure_lpips_diversity(shards, cfg, reporter.progress("lpips"))
    lines = [
        f"{_class_label(result, c):>24}  {v:.4f}  ({result['pairs'][c]} pairs)" for c, v in result["per_class"].items()
    ]
    upsampled = f", upsampled from {result['stored_resolution']} px" if result["upsampled"] else ""
    reporter.result(
        result,
        lines
        + [
            f"mean LPIPS over {len(result['per_class'])} classes: {result['mean']:.4f} "
            f"(AlexNet v0.1 at {result['resolution']} px{upsampled})"
        ],
    )


@evaluate_group.command(
    epilog="""
\b
Re-runs the teacher on the stored uint8 images (at their stored resolution, normalised as the
teacher expects) and counts how often its top-1 class is the target label.
Without --teacher, the teacher recorded in the shards is loaded.
"""
)
@shards_argument
@config_options(
    EvaluateConfig,
    only=("teacher", *TEACHER_SETTINGS, *run_options),
    help={"teacher": "timm:<name>[.<tag>], torchvision:<name>, or a teacher file. [default: the shards']"},
)
@verify_option
@common_options
def fidelity_command(
    shards: str, config_path: Optional[str], json_mode: bool, quiet: bool, verify_shards: bool, **options
) -> None:
    """Teacher top-1 agreement with the target labels of the synthesized images."""
    reporter = Reporter(json_mode, quiet)
    cfg = settings(config_path, options)
    from dfkd.evaluate.fidelity import measure_fidelity
    from synth.shards.format import ShardDataset
    from synth.shards.verify import check_integrity
    from synth.teachers.sources import load_teacher, teacher_options, with_recorded_preprocessing
    from synth.teachers.user_code import is_code_spec

    check_integrity(shards, verify_shards, warn=lambda text: click.echo(text, err=True))
    record = ShardDataset(shards).teacher
    spec = cfg.teacher or record.get("spec")
    if not spec:
        raise UserError(f"the shards in '{shards}' name no teacher; pass --teacher TEACHER")
    location = spec.rpartition(":")[0] if is_code_spec(spec) else spec
    if not cfg.teacher and not spec.startswith(("timm:", "torchvision:")) and not _findable(location):
        raise UserError(
            f"the teacher file recorded in the shards, '{location}', cannot be found; pass the teacher with --teacher"
        )
    teacher = load_teacher(spec, options=with_recorded_preprocessing(spec, teacher_options(cfg), record))
    result = measure_fidelity(shards, teacher, cfg, reporter.progress("fidelity"))
    for note in teacher.notes:  # after the measurement: an input error stays the one line printed
        reporter.message(note)
    lines = [f"{c:>6}  {v:.4f}  ({result['counts'][c]} images)" for c, v in result["per_class"].items()]
    reporter.result(result, lines + [f"teacher fidelity: {result['fidelity']:.4f} over {result['images']} images"])


def _findable(location: str) -> bool:
    """A recorded teacher file, or the .py file / importable module of a recorded code spec, is here."""
    if location.endswith(".py") or Path(location).is_file():
        return Path(location).is_file()
    import importlib.util

    return "/" not in location and importlib.util.find_spec(location.split(".")[0]) is not None


@evaluate_group.command(
    epilog="""
\b
DATA is a torchvision ImageFolder tree: DATA/<class>/<image>. Class ids: with --class-map FILE the
file's (JSON {folder: id}, 'folder id' lines, or one folder per line: line k is class k, as timm's
class_map.txt and dfkd export's); else integer folder names are the ids (0, 7, 0042), and ImageNet
WNIDs (n01443537) map through the standard ImageNet-1k class index (timm's: n01443537 is 1). Any
other tree is refused: folders are never numbered by position. Images: shorter side resized to
input_size / crop_pct, centre-cropped to the model's input size, scaled to [0, 1], normalised with
the model's mean/std (the student's from student.json next to the checkpoint).
"""
)
@config_options(
    EvaluateConfig,
    only=("student", "teacher", *TEACHER_SETTINGS, "data", "class_map", "crop_pct", *run_options),
    help={"teacher": "Also score this teacher (reference line)."},
)
@common_options
def accuracy_command(config_path: Optional[str], json_mode: bool, quiet: bool, **options) -> None:
    """Top-1 / top-5 accuracy of the student (and/or the teacher) on real labelled images."""
    reporter = Reporter(json_mode, quiet)
    cfg = recipe_settings(EvaluateConfig, "evaluate", config_path, options)
    if not cfg.data or not (cfg.student or cfg.teacher):
        raise UserError("accuracy needs --data FOLDER and --student CKPT and/or --teacher TEACHER")
    _with_threads(cfg)
    from dfkd.evaluate.accuracy import load_student, measure_accuracy, teacher_classifier
    from synth.teachers.sources import load_teacher, teacher_options

    models, notes = {}, []
    if cfg.student:
        models["student"] = load_student(cfg.student)
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, options=teacher_options(cfg))
        notes = teacher.notes
        models["teacher"] = teacher_classifier(teacher)
    result = {"data": cfg.data}
    for role, classifier in models.items():
        result[role] = measure_accuracy(classifier, cfg.data, cfg, reporter.progress(role))
    for note in notes:  # after the measurement: an input error stays the one line printed
        reporter.message(note)
    reporter.result(
        result,
        [
            f"{role}: top-1 {result[role]['top1']:.2%}  top-{result[role]['k']} "
            f"{result[role]['top5']:.2%}  ({result[role]['images']} images)"
            for role in models
        ],
    )
