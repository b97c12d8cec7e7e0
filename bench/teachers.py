"""Teacher families with one recipe: does the synthesis loss balance transfer across architectures?

    python bench/teachers.py [--out bench-teachers] [--archs dfkd_cnn_digits,resnet18,regnetx_002,mobilenetv3_small_100]
        [--synth '{"losses.bn_norm": "normalized"}'] [--per-class 80] [--distill-epochs 0] [--teacher-epochs 40]
        [--threads 1]

For each timm architecture: train a digits teacher (`dfkd train-teacher --epochs N`, reused when present),
synthesize the `digits` recipe's set from it with the given overrides, and report teacher accuracy on the held-out
real digits, fidelity, the other teachers' agreement with the labels (each set judged by every other family's
teacher: do the images carry the digit, or only this teacher's reading of it?), intra-class embedding distance,
the last iteration's CE and BN terms, synthesis seconds and (with --distill-epochs N) the real-digit accuracy of
the recipe's student distilled on the set for N epochs. Fixed seeds; finished steps are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from dfkd.data.digits import load_digits_split
from dfkd.data.image_folder import write_image_folder
from dfkd.distill.config import DistillConfig
from dfkd.distill.trainer import train_student
from dfkd.evaluate import load_student, measure_accuracy, teacher_classifier
from dfkd.evaluate.config import EvaluateConfig
from dfkd.evaluate.embedding_diversity import measure_embedding_diversity
from dfkd.evaluate.fidelity import measure_fidelity
from dfkd.pipeline.end_to_end import recipe_config
from dfkd.pipeline.teacher_training import TeacherTrainingConfig, train_teacher
from synth.config import SynthesisConfig
from synth.run.engine import synthesize
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import Teacher

CPU = EvaluateConfig(device="cpu")  # evaluation settings of these runs


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line (None: sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-teachers")
    parser.add_argument("--recipe", default="digits")
    parser.add_argument("--archs", default="dfkd_cnn_digits,resnet18,regnetx_002,mobilenetv3_small_100")
    parser.add_argument("--synth", default="{}", help="JSON overrides of the recipe's synthesize section")
    parser.add_argument("--tag", default="", help="name of this synthesis variant (folder name)")
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--distill-epochs", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, default=TeacherTrainingConfig.epochs)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main() -> None:
    """Bench every architecture in turn (one JSON line each), save the rows and print the table."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    real_test = real_test_folder(out)
    overrides = {**json.loads(args.synth), **({"per_class": args.per_class} if args.per_class else {})}
    rows = []
    for arch in args.archs.split(","):
        rows.append(bench_arch(args, out, arch, real_test, overrides))
        print(json.dumps(rows[-1]), flush=True)
    add_cross_fidelity(out, args, rows)
    (out / f"results-{args.tag or 'default'}.json").write_text(json.dumps(rows, indent=2))
    print_table(args.recipe, overrides, rows)


def real_test_folder(out: Path) -> Path:
    """The held-out real digits as an image folder, `out/real-test` (written unless present)."""
    split = load_digits_split(seed=0)
    real_test = out / "real-test"
    if not real_test.is_dir():
        write_image_folder(split.test_images, split.test_labels, real_test)
    return real_test


def bench_arch(
    args: argparse.Namespace, out: Path, arch: str, real_test: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    """One architecture's row: its teacher, the set synthesized from it and (with --distill-epochs) the student."""
    teacher_file = teacher_path(out, args, arch)
    started = time.time()
    if not teacher_file.is_file():
        teacher_file.parent.mkdir(parents=True, exist_ok=True)
        train_teacher(TeacherTrainingConfig(arch=arch, epochs=args.teacher_epochs, threads=args.threads), teacher_file)
    teacher_seconds = time.time() - started
    teacher = load_teacher(str(teacher_file))
    row = {
        "arch": arch,
        "bn_layers": len(teacher.bn_layers),
        "teacher_accuracy": measure_accuracy(teacher_classifier(teacher), real_test, CPU)["top1"],
        "teacher_seconds": round(teacher_seconds, 1),
    }
    shards = shard_path(out, args, arch)
    row.update(synthesis_stats(args, teacher_file, teacher, shards, overrides))
    if args.distill_epochs:
        row["student_accuracy"] = student_accuracy(args, teacher_file, shards, out / "students", arch, real_test)
    return row


def teacher_path(out: Path, args: argparse.Namespace, arch: str) -> Path:
    """The teacher file of `arch` trained for --teacher-epochs."""
    return out / "teachers" / f"{arch}-e{args.teacher_epochs}.pt"


def shard_path(out: Path, args: argparse.Namespace, arch: str) -> Path:
    """The shard directory of `arch`'s set in this variant."""
    return out / "shards" / (args.tag or "default") / arch


def add_cross_fidelity(out: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Each row's `cross_fidelity`: the mean agreement of the other rows' teachers with its set's labels."""
    teachers = {r["arch"]: load_teacher(str(teacher_path(out, args, r["arch"]))) for r in rows}  # each loaded once
    for row in rows:
        shards = shard_path(out, args, row["arch"])
        scores = [
            measure_fidelity(shards, teacher, CPU)["fidelity"]
            for arch, teacher in teachers.items()
            if arch != row["arch"]
        ]
        row["cross_fidelity"] = sum(scores) / len(scores) if scores else None


def synthesis_stats(
    args: argparse.Namespace, teacher_file: Path, teacher: Teacher, shards: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Synthesize the recipe's set into `shards`: fidelity, images, embedding diversity and, from the synthesis log,
    the mean last-iteration CE and BN terms and the seconds spent."""
    config = recipe_config(
        SynthesisConfig, args.recipe, "synthesize", {"teacher": str(teacher_file), "threads": args.threads, **overrides}
    )
    summary = synthesize(config, shards)
    last = [json.loads(line) for line in (shards / "logs" / "synthesis-rank0.jsonl").read_text().splitlines()]
    return dict(
        fidelity=summary["fidelity"],
        images=summary["images"],
        embedding_diversity=measure_embedding_diversity(shards, teacher)["mean"],
        final_ce=sum(r["losses"]["ce"] for r in last) / len(last),
        final_bn=sum(r["losses"]["bn"] for r in last) / len(last),
        synth_seconds=round(sum(r["seconds"] for r in last), 1),
    )


def student_accuracy(
    args: argparse.Namespace, teacher_file: Path, shards: Path, students: Path, arch: str, real_test: Path
) -> float:
    """Real-digit top-1 of the recipe's student distilled on `shards` for --distill-epochs (all in stage 1)."""
    epochs = args.distill_epochs
    run = train_student(
        recipe_config(
            DistillConfig,
            args.recipe,
            "distill",
            {
                "shards": str(shards),
                "teacher": str(teacher_file),
                "resume": True,
                "threads": args.threads,
                "epochs": epochs,
                "stage1_epochs": epochs,
            },
        ),
        students / (args.tag or "default") / arch,
    )
    return measure_accuracy(load_student(run["student"]), real_test, CPU)["top1"]


def print_table(recipe: str, overrides: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The rows as a markdown table."""
    print(f"\n# teacher families, {time.strftime('%Y-%m-%d')}, recipe {recipe}, overrides {overrides}")
    print(
        "| teacher | BN layers | teacher acc | fidelity | other teachers | embedding div | final CE | final BN "
        "| synth s | student |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        student = f"{r['student_accuracy']:.3f}" if "student_accuracy" in r else ""
        print(
            f"| {r['arch']} | {r['bn_layers']} | {r['teacher_accuracy']:.3f} | {r['fidelity']:.3f} | "
            f"{'' if r['cross_fidelity'] is None else format(r['cross_fidelity'], '.3f')} | "
            f"{r['embedding_diversity']:.3f} | {r['final_ce']:.3g} | {r['final_bn']:.3g} | {r['synth_seconds']} | "
            f"{student} |"
        )


if __name__ == "__main__":
    main()
