"""`dfkd evaluate diversity|fidelity|accuracy`, `dfkd inspect` and `dfkd export`: thin layers over dfkd.evaluate."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import click
import yaml

from dfkd.cli.common import Reporter, common_options, overrides
from dfkd.config import apply_overrides, build, load_recipe
from dfkd.evaluate import accuracy as run_accuracy
from dfkd.evaluate import (
    export_shards,
    inspect_shards,
    load_student,
    lpips_diversity,
    teacher_classifier,
)
from dfkd.evaluate import fidelity as run_fidelity
from dfkd.evaluate.lpips_diversity import DEFAULT_PAIRS
from synth.errors import UserError
from synth.runtime import use_threads
from synth.shard_verify import check_integrity
from synth.shards import ShardDataset
from synth.teacher_sources import load_teacher

EVALUATE_EXAMPLES = """
\b
Examples:
  dfkd evaluate diversity shards/ --lpips-backbone alexnet-owt-7be5be79.pth --pairs 500 --json
  dfkd evaluate fidelity shards/ --teacher timm:resnet18
  dfkd evaluate accuracy --student runs/x/student.pth --teacher timm:resnet18 --data imagenet/val --crop-pct 0.875
"""


MAX_GRID_PER_CLASS = 256


@dataclass
class EvaluateConfig:
    """Settings of evaluate, inspect and export (recipe section `evaluate`)."""

    device: str = "auto"
    batch_size: int = 64
    workers: int = 0
    threads: Optional[int] = None
    seed: int = 0
    pairs: Union[int, str] = DEFAULT_PAIRS
    lpips_backbone: Optional[str] = None
    teacher: Optional[str] = None
    teacher_weights: Optional[str] = None
    student: Optional[str] = None
    data: Optional[str] = None
    crop_pct: float = 1.0
    per_class_grid: int = 8

    def validate(self) -> None:
        """Refuse values no command could use."""
        if self.pairs != "all" and not (isinstance(self.pairs, int) and self.pairs > 0):
            raise UserError(f"pairs '{self.pairs}' must be 'all' or a positive number of pairs per class")
        for name, least in (("batch_size", 1), ("per_class_grid", 1), ("workers", 0)):
            if getattr(self, name) < least:
                raise UserError(f"{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}")
        if not 0 < self.crop_pct <= 1:
            raise UserError(f"crop-pct {self.crop_pct} must be in (0, 1]")
        if self.threads is not None and self.threads < 0:
            raise UserError(f"threads must be >= 0 (0 = all cores), not {self.threads}")
        if self.per_class_grid > MAX_GRID_PER_CLASS:
            raise UserError(f"per-class-grid {self.per_class_grid} is too many images per class for one PNG; "
                            f"accepted: 1-{MAX_GRID_PER_CLASS}")


def _settings(config_path: Optional[str], options: dict) -> EvaluateConfig:
    cfg = build(EvaluateConfig, apply_overrides(load_recipe(config_path, "evaluate"), overrides(options)))
    use_threads(cfg.threads)
    return cfg


def _class_label(result: dict, c: int) -> str:
    name = (result.get("class_names") or {}).get(c)
    return f"{c} ({name})" if name else str(c)


device_option = click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
batch_option = click.option("--batch-size", type=int, help="Images per batch. [default: 64]")
threads_option = click.option("--threads", type=int, help="CPU threads. [default: all cores]")
workers_option = click.option("--workers", type=int, help="DataLoader worker processes. [default: 0]")
shards_argument = click.argument("shards", type=click.Path(file_okay=False))
verify_option = click.option("--verify/--no-verify", "verify_shards", default=True,
                             help="Refuse damaged, missing or unfinished shards (reads each shard once). "
                                  "[default: verify]")


@click.group(epilog=EVALUATE_EXAMPLES)
def evaluate() -> None:
    """Score synthesized shards (LPIPS diversity, teacher fidelity) or a student on real images (accuracy)."""


@evaluate.command(epilog="""
\b
Per class: the mean LPIPS (AlexNet, v0.1, inputs in [-1, 1]) over all pairs of its images, or over
at most --pairs seeded random pairs; then the mean over classes. Images under 64 px are upsampled
(bilinear) to 64 px. The AlexNet weights (torchvision's alexnet-owt-7be5be79.pth) come from
--lpips-backbone, else the torch hub cache ($TORCH_HOME/hub/checkpoints), else a download.
""")
@shards_argument
@click.option("--lpips-backbone", type=click.Path(dir_okay=False), help="torchvision AlexNet state_dict file.")
@click.option("--pairs", help="all, or at most M random pairs per class. [default: 1000]")
@click.option("--seed", type=int, help="Seed of the pair sampling. [default: 0]")
@device_option
@batch_option
@threads_option
@common_options
def diversity(shards: str, config_path: Optional[str], json_mode: bool, quiet: bool, **options) -> None:
    """LPIPS diversity of the images of each class (higher is more diverse)."""
    reporter = Reporter(json_mode, quiet)
    pairs = options.pop("pairs")
    cfg = _settings(config_path, {**options, "pairs": int(pairs) if pairs and pairs.isdigit() else pairs})
    result = lpips_diversity(shards, cfg.lpips_backbone, None if cfg.pairs == "all" else cfg.pairs, cfg.seed,
                             cfg.device, cfg.batch_size, reporter.progress("lpips"))
    lines = [f"{_class_label(result, c):>24}  {v:.4f}  ({result['pairs'][c]} pairs)"
             for c, v in result["per_class"].items()]
    upsampled = f", upsampled from {result['stored_resolution']} px" if result["upsampled"] else ""
    reporter.result(result, lines + [f"mean LPIPS over {len(result['per_class'])} classes: {result['mean']:.4f} "
                                     f"(AlexNet v0.1 at {result['resolution']} px{upsampled})"])


@evaluate.command(epilog="""
\b
Re-runs the teacher on the stored uint8 images (at their stored resolution, normalised as the
teacher expects) and counts how often its top-1 class is the target label.
Without --teacher, the teacher recorded in the shards is loaded.
""")
@shards_argument
@click.option("--teacher", help="timm:<name>[.<tag>], torchvision:<name>, or a teacher file. [default: the shards']")
@click.option("--teacher-weights", type=click.Path(dir_okay=False), help="Weights file for the teacher.")
@device_option
@batch_option
@workers_option
@threads_option
@verify_option
@common_options
def fidelity(shards: str, config_path: Optional[str], json_mode: bool, quiet: bool, verify_shards: bool,
             **options) -> None:
    """Teacher top-1 agreement with the target labels of the synthesized images."""
    reporter = Reporter(json_mode, quiet)
    cfg = _settings(config_path, options)
    check_integrity(shards, verify_shards, warn=lambda text: click.echo(text, err=True))
    spec = cfg.teacher or ShardDataset(shards).teacher.get("spec")
    if not spec:
        raise UserError(f"the shards in '{shards}' name no teacher; pass --teacher TEACHER")
    if not cfg.teacher and not spec.startswith(("timm:", "torchvision:")) and not Path(spec).is_file():
        raise UserError(f"the teacher file recorded in the shards, '{spec}', cannot be found; pass its path with "
                        "--teacher FILE")
    teacher = load_teacher(spec, cfg.teacher_weights)
    result = run_fidelity(shards, teacher, cfg.device, cfg.batch_size, cfg.workers, reporter.progress("fidelity"))
    lines = [f"{c:>6}  {v:.4f}  ({result['counts'][c]} images)" for c, v in result["per_class"].items()]
    reporter.result(result, lines + [f"teacher fidelity: {result['fidelity']:.4f} over {result['images']} images"])


@evaluate.command(epilog="""
\b
DATA is a torchvision ImageFolder tree: DATA/<class>/<image>. Class ids: when every folder name is
an integer (e.g. 0, 7, 0042) the id is that integer, else the position in sorted folder-name order;
the ids must be the model's class ids. Images: shorter side resized to input_size / crop_pct,
centre-cropped to the model's input size, scaled to [0, 1], normalised with the model's mean/std
(the student's from student.json next to the checkpoint).
""")
@click.option("--student", type=click.Path(dir_okay=False), help="Student state_dict (student.pth + student.json).")
@click.option("--teacher", help="Also score this teacher (reference line).")
@click.option("--teacher-weights", type=click.Path(dir_okay=False), help="Weights file for the teacher.")
@click.option("--data", type=click.Path(file_okay=False), help="Labelled image folder (ImageFolder layout).")
@click.option("--crop-pct", type=float, help="Centre-crop fraction (0.875: the ImageNet protocol). [default: 1]")
@device_option
@batch_option
@workers_option
@threads_option
@common_options
def accuracy(config_path: Optional[str], json_mode: bool, quiet: bool, **options) -> None:
    """Top-1 / top-5 accuracy of the student (and/or the teacher) on real labelled images."""
    reporter = Reporter(json_mode, quiet)
    cfg = _settings(config_path, options)
    if not cfg.data or not (cfg.student or cfg.teacher):
        raise UserError("accuracy needs --data FOLDER and --student CKPT and/or --teacher TEACHER")
    models = {}
    if cfg.student:
        models["student"] = load_student(cfg.student)
    if cfg.teacher:
        models["teacher"] = teacher_classifier(load_teacher(cfg.teacher, cfg.teacher_weights))
    result = {"data": cfg.data}
    for role, classifier in models.items():
        result[role] = run_accuracy(classifier, cfg.data, cfg.device, cfg.batch_size, cfg.workers, cfg.crop_pct,
                                    reporter.progress(role))
    reporter.result(result, [f"{role}: top-1 {result[role]['top1']:.2%}  top-{result[role]['k']} "
                             f"{result[role]['top5']:.2%}  ({result[role]['images']} images)" for role in models])


@click.command("inspect", epilog="""
\b
Examples:
  dfkd inspect shards/
  dfkd inspect shards/ --grid grid.png --per-class-grid 4 --grid-classes 0-9

The grid has one row per class (its first k images; black cells when it has fewer), the class
name or id in a 128-px label column: (128 + k*(R+2) + 2) x (classes*(R+2) + 2) px for R-px images.
""")
@shards_argument
@click.option("--grid", type=click.Path(dir_okay=False), help="Write a PNG grid of images per class.")
@click.option("--per-class-grid", type=int, help="Images per class in the grid. [default: 8]")
@click.option("--grid-classes", help="Classes in the grid: all, 0-9, or 1,5,7-9. [default: those present]")
@common_options
def inspect_command(shards: str, config_path: Optional[str], json_mode: bool, quiet: bool, grid: Optional[str],
                    per_class_grid: Optional[int], grid_classes: Optional[str]) -> None:
    """Describe a shard directory: counts per class, resolution, teacher, config, format, verify result."""
    reporter = Reporter(json_mode, quiet)
    cfg = _settings(config_path, {"per_class_grid": per_class_grid})
    result = inspect_shards(shards, grid, cfg.per_class_grid, grid_classes)
    counts = list(result["per_class"].values())
    check = result["verify"]
    lines = [
        f"{result['path']}: format v{result['format_version']}, {result['images']} images in {result['shards']} "
        f"shard(s), {result['resolution']} px, {len(counts)} of {result['num_classes']} classes "
        f"({min(counts)}-{max(counts)} images per class), complete: {result['complete']}",
        f"teacher: {result['teacher'].get('spec')}  weights sha256 {str(result['teacher'].get('weights_sha256'))[:12]}",
        f"per class: {', '.join(f'{c}: {n}' for c, n in result['per_class'].items())}",
        "verify: ok" if check["ok"] else f"verify: FAILED: problems {check['problems']}, missing {check['missing']}",
        f"dataset card: {result['card']}" if result["card"] else "dataset card: none (dfkd synthesize writes README.md)",
        "config:",
        *("  " + line for line in yaml.safe_dump(result["config"], sort_keys=False, default_flow_style=None,
                                                  width=100).splitlines()),
    ]
    if grid:
        lines.append(f"grid: {grid} ({result['grid']['width']}x{result['grid']['height']} px)")
    reporter.result(result, lines)
    if not check["ok"]:  # the report is printed; the exit status says it failed
        sys.exit(2)


@click.command(epilog="""
\b
Examples:
  dfkd export shards/ --to imagefolder digits-png/
  dfkd export shards/ --to webdataset digits-wds/ --maxcount 5000 --image-format jpg
  dfkd export shards/ --to hf digits-hf/ [--hf-format parquet]

The shards are verified against their digests first. OUT must be new or empty; the export is
written into a private .OUT.partial-XXXX folder beside it and renamed to OUT when complete (a failed
export leaves no OUT). The set's dataset card (README.md) is copied into OUT.

\b
imagefolder: OUT/<class id>/<sample id>.png (class ids zero-padded to the width of the largest id,
  sample ids to 8 digits); lossless, readable by torchvision/timm ImageFolder readers.
webdataset: OUT/train-NNNNNN.tar with at most --maxcount samples and about
  --shard-size bytes each; per sample <id>.png|jpg, <id>.cls, <id>.logits.npy (float16), <id>.json
  (sample_id, label, resolution); OUT/_info.json describes split "train" for timm
  (create_dataset("wds/NAME", root=OUT, split="train")); readers need pip install "dfkd[wds]".
hf (pip install "dfkd[hf]"): a datasets.Dataset (image, label: ClassLabel with the class names,
  sample_id, logits: float32 when stored), saved with save_to_disk (--hf-format arrow: read it with
  datasets.load_from_disk(OUT)) or as OUT/data/train-00000-of-00001.parquet (--hf-format parquet:
  datasets.load_dataset("parquet", data_files=...) or load_dataset(OUT)).
""")
@shards_argument
@click.option("--to", "fmt", type=click.Choice(["imagefolder", "webdataset", "hf"]), required=True,
              help="Output layout.")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--maxcount", type=int, default=10000, show_default=True, help="webdataset: samples per tar shard.")
@click.option("--shard-size", type=int, default=None, help="webdataset: bytes per tar shard (about). [default: no limit]")
@click.option("--image-format", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="webdataset: image encoding (png is lossless).")
@click.option("--quality", type=int, default=95, show_default=True, help="webdataset: JPEG quality.")
@click.option("--hf-format", type=click.Choice(["arrow", "parquet"]), default="arrow", show_default=True,
              help="hf: save_to_disk (arrow) or a Parquet file.")
@common_options(config=False)  # export has no settings a recipe could hold: --config is refused as unknown
def export(shards: str, fmt: str, out: str, json_mode: bool, quiet: bool,
           maxcount: int, shard_size: Optional[int], image_format: str, quality: int, hf_format: str) -> None:
    """Export verified shards for projects that do not read HDF5 (PNG folders, WebDataset, Hugging Face)."""
    reporter = Reporter(json_mode, quiet)
    options = {"webdataset": {"maxcount": maxcount, "shard_size": shard_size, "image_format": image_format,
                              "quality": quality},
               "hf": {"hf_format": hf_format}}.get(fmt, {})
    result = export_shards(shards, out, fmt, reporter.progress("export"), **options)
    reporter.result(result, [f"exported {result['images']} images of {result['classes']} classes to "
                             f"{result['out']} ({fmt})"])
