"""The whole pipeline on a real dataset (digits, Fashion-MNIST): train a teacher, synthesize shards, distill a DearKD
student, evaluate on the held-out real images.

Each step writes into its own folder of `out`, and a rerun reuses what is finished (the teacher file,
verified shards, the distillation checkpoint), so an interrupted demo resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from dfkd.data.image_folder import write_image_folder
from dfkd.data.real import real_dataset
from dfkd.data.split import RealSplit
from dfkd.distill.config import DistillConfig
from dfkd.distill.trainer import train_student
from dfkd.evaluate import draw_class_grid, load_student, measure_accuracy, teacher_classifier
from dfkd.evaluate.accuracy import measure_shard_accuracy
from dfkd.evaluate.config import EvaluateConfig
from dfkd.evaluate.embedding_diversity import measure_embedding_diversity
from dfkd.evaluate.results_page import write_results_page
from dfkd.pipeline.teacher_training import TeacherTrainingConfig, train_teacher
from dfkd.recipe_loader import apply_overrides, build, load_recipe, packaged_recipe
from synth.common.runtime import Progress
from synth.config import SynthesisConfig
from synth.run.engine import synthesize
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import Teacher

CPU = EvaluateConfig(device="cpu")  # evaluation settings of these runs

T = TypeVar("T")


DEMO_RECIPES = {"digits": "digits", "fashion-mnist": "fashion"}  # each dataset's shipped recipe (`NAME_fast`: --fast)


def default_recipe(fast: bool, dataset: str = "digits") -> Path:
    """The dataset's shipped demo recipe (`digits`, `fashion`, or their `_fast` variants), found with
    importlib.resources in any install."""
    real_dataset(dataset)  # one error line for an unknown name
    return packaged_recipe(DEMO_RECIPES[dataset] + ("_fast" if fast else ""))


@dataclass
class RealSetup:
    """A trained teacher (its file and the loaded model), its data split and the held-out real image folder."""

    teacher_file: Path
    teacher: Teacher
    split: RealSplit
    real_test: Path
    dataset: str


def prepare_teacher(
    out: Path,
    recipe: str,
    progress: Optional[Progress] = None,
    threads: int = 0,
    data_dir: Optional[str] = None,
    download: bool = False,
) -> RealSetup:
    """Train the recipe's teacher on its dataset (unless `out/teacher.pt` exists; `progress` counts its epochs) and
    write the held-out real images as a class folder."""
    overrides = {"threads": threads or None, "data_dir": data_dir, "download": download or None}
    config = build(TeacherTrainingConfig, apply_overrides(load_recipe(recipe, "train_teacher"), overrides))
    out.mkdir(parents=True, exist_ok=True)
    teacher_file = out / "teacher.pt"
    config.fetch_data()  # before the progress bar starts
    if not teacher_file.is_file():
        progress = progress or Progress()
        progress.start(config.epochs)
        try:
            train_teacher(config, teacher_file, on_epoch=lambda epoch, loss: progress.advance(1, {"loss": loss}))
        finally:
            progress.close()
    split = real_dataset(config.dataset).load(config.seed, config.data_dir)
    real_test = out / "real-test"
    if not real_test.is_dir():
        write_image_folder(split.test_images, split.test_labels, real_test)
    return RealSetup(teacher_file, load_teacher(str(teacher_file)), split, real_test, config.dataset)


def recipe_config(kind: type[T], recipe: str, section: str, settings: dict[str, Any]) -> T:
    """The recipe's `section` as a validated `kind` config, with `settings` overriding it (CPU device)."""
    return build(kind, apply_overrides(load_recipe(recipe, section), {"device": "cpu", **settings}))


def run_demo(
    out: str | Path,
    recipe: Optional[str] = None,
    fast: bool = False,
    threads: int = 0,
    lpips_backbone: Optional[str] = None,
    progress_for: Callable[[str], Progress] = lambda step: Progress(),
    dataset: str = "digits",
    data_dir: Optional[str] = None,
    download: bool = False,
) -> dict[str, Any]:
    """Run every step (reusing finished ones), write the results page results.md and return the results as a dict.
    `dataset` picks the default recipe; a given `recipe` names its own dataset."""
    recipe = str(recipe or default_recipe(fast, dataset))
    out = Path(out)
    seconds: dict[str, float] = {}
    common = {"threads": threads} if threads else {}
    setup = _timed(
        seconds,
        "teacher",
        lambda: prepare_teacher(out, recipe, progress_for("train-teacher"), threads, data_dir, download),
    )
    synthesis = _timed(seconds, "synthesize", lambda: _synthesize(out, recipe, setup, common, progress_for))
    distillation = _timed(seconds, "distill", lambda: _distill(out, recipe, setup, common, progress_for))
    evaluation = _timed(seconds, "evaluate", lambda: _evaluate(out, setup, distillation, lpips_backbone))
    result = {
        "dataset": setup.dataset,
        "teacher_accuracy": evaluation["teacher"]["top1"],
        "student_accuracy": evaluation["student"]["top1"],
        "student_synthetic_accuracy": evaluation["student_synthetic"]["top1"],
        "fidelity": synthesis["fidelity"],
        "embedding_diversity": evaluation["diversity"]["mean"],
        "near_duplicates": evaluation["diversity"]["near_duplicates"],
        "lpips_diversity": evaluation["lpips"],
        "synthesized_images": synthesis["images"],
        "test_images": evaluation["teacher"]["images"],
        "student": distillation["model"],
        "epochs": distillation["epochs"],
        "stage1_epochs": distillation["stage1_epochs"],
        "grid": str(out / "grid.png"),
        "out": str(out),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    page = write_results_page(
        result, results_table(result), out, out / "shards", setup.real_test, distillation["curves"]
    )
    return {**result, "results_page": str(page)}


def _timed(seconds: dict[str, float], step: str, run: Callable[[], T]) -> T:
    """`run()`, its wall-clock seconds recorded as `seconds[step]`."""
    started = time.time()
    result = run()
    seconds[step] = time.time() - started
    return result


def _synthesize(
    out: Path, recipe: str, setup: RealSetup, common: dict[str, Any], progress_for: Callable[[str], Progress]
) -> dict[str, Any]:
    """Synthesize the recipe's shards from the teacher into `out/shards`."""
    config = recipe_config(SynthesisConfig, recipe, "synthesize", {"teacher": str(setup.teacher_file), **common})
    return synthesize(config, out / "shards", progress_for("synthesize"))


def _distill(
    out: Path, recipe: str, setup: RealSetup, common: dict[str, Any], progress_for: Callable[[str], Progress]
) -> dict[str, Any]:
    """Distill the recipe's student on the shards into `out/student` (resuming), validated on the held-out real images."""
    config = recipe_config(
        DistillConfig,
        recipe,
        "distill",
        {
            "shards": str(out / "shards"),
            "teacher": str(setup.teacher_file),
            "val_data": str(setup.real_test),
            "resume": True,
            **common,
        },
    )
    return train_student(config, out / "student", progress_for("distill"))


def _evaluate(
    out: Path, setup: RealSetup, distillation: dict[str, Any], lpips_backbone: Optional[str]
) -> dict[str, Any]:
    """Student and teacher accuracy on the held-out real images, the student's on its shards, the shards' diversity (LPIPS
    too with a backbone) and the class grid `out/grid.png`."""
    classifier = load_student(distillation["student"])
    student = measure_accuracy(classifier, setup.real_test, CPU)
    student_synthetic = measure_shard_accuracy(classifier, out / "shards", CPU)
    teacher = measure_accuracy(teacher_classifier(setup.teacher), setup.real_test, CPU)
    diversity = measure_embedding_diversity(out / "shards", setup.teacher)
    lpips = None
    if lpips_backbone:
        from dfkd.evaluate import measure_lpips_diversity

        lpips = measure_lpips_diversity(out / "shards", replace(CPU, lpips_backbone=lpips_backbone))["mean"]
    draw_class_grid(out / "shards", per_class=8).save(out / "grid.png")
    return {
        "student": student,
        "student_synthetic": student_synthetic,
        "teacher": teacher,
        "diversity": diversity,
        "lpips": lpips,
    }


def results_table(result: dict[str, Any]) -> list[str]:
    """The demo's results as markdown table lines."""
    lpips = result["lpips_diversity"]
    rows = [
        (
            f"teacher accuracy (held-out real {result['dataset']}, {result['test_images']} images)",
            f"{result['teacher_accuracy']:.4f}",
            result["seconds"]["teacher"],
        ),
        ("teacher fidelity on synthesized images", f"{result['fidelity']:.4f}", result["seconds"]["synthesize"]),
        ("intra-class distance, teacher embedding", f"{result['embedding_diversity']:.3f}", ""),
        ("near-duplicate images (a same-class image within pixel RMS 0.05)", f"{result['near_duplicates']:.3f}", ""),
        ("LPIPS diversity", f"{lpips:.3f}" if lpips is not None else "n/a (no --lpips-backbone)", ""),
        (
            f"student accuracy ({result['student']}, trained on shards only)",
            f"{result['student_accuracy']:.4f}",
            result["seconds"]["distill"],
        ),
        ("student accuracy on its synthesized training images", f"{result['student_synthetic_accuracy']:.4f}", ""),
        ("evaluation", "", result["seconds"]["evaluate"]),
    ]
    return ["| step | value | seconds |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
