"""Digits quality benchmark (issue: demo): DF-DearKD against its ablations and a real-data reference.

    python bench/quality.py [--out bench-quality] [--recipe digits] [--threads N]

Fixed seeds, one script. Rows: teacher accuracy on the held-out real digits; the DearKD student trained only on
DF-DearKD shards; ablation 1: shards without L_ep and triplet (plain DeepInversion losses) and with the unbounded
L_ep, same student; ablation 2: a plain DeiT-style student (no MHCA, logit KD only) on the DF-DearKD shards;
reference: the same student trained on as many real training digits. Diversity of each set: mean intra-class
distance in the teacher's embedding space, and LPIPS when --lpips-backbone is given. Finished steps are reused
on a rerun (shards resume, distillation resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dfkd.config import load_recipe
from dfkd.data.digits import write_image_folder
from dfkd.demo import prepare_digits, recipe_config
from dfkd.distill.config import DistillConfig
from dfkd.distill.trainer import distill
from dfkd.evaluate import accuracy, load_student, lpips_diversity, teacher_classifier
from dfkd.evaluate.embedding_diversity import embedding_diversity
from synth.engine import SynthesisConfig, synthesize

SYNTHESIS_VARIANTS = {
    "df_dearkd": {},
    "deepinversion": {"losses.ep": 0.0, "losses.triplet": 0.0},
    "unbounded_ep": {"losses.ep_form": "unbounded"},
}
STUDENT_VARIANTS = {
    "dearkd": {},
    "plain": {"student": "deit_nano_patch4_32", "loss.a_hid": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-quality")
    parser.add_argument("--recipe", default="digits")  # a recipe file, or the name of a shipped one
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--lpips-backbone", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's distillation epochs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = {"threads": args.threads} if args.threads else {}
    digits = prepare_digits(out, args.recipe)
    teacher, teacher_file, split, real_test = digits.teacher, digits.teacher_file, digits.split, digits.real_test
    rows = [{"row": "teacher (real training digits)", "accuracy": accuracy(teacher_classifier(teacher), real_test,
                                                                         device="cpu")["top1"]}]

    epochs = {"epochs": args.epochs, "stage1_epochs": round(args.epochs * 5 / 6)} if args.epochs else {}

    def run_student(name: str, source: dict, overrides: dict) -> float:
        started = time.time()
        config = recipe_config(DistillConfig, args.recipe, "distill", {
            **source, "teacher": str(teacher_file), "resume": True, **common, **epochs, **overrides})
        result = distill(config, out / "students" / name)
        top1 = accuracy(load_student(result["student"]), real_test, device="cpu")["top1"]
        print(f"{name}: {top1:.4f} ({time.time() - started:.0f} s)", flush=True)
        return top1

    for variant, losses in SYNTHESIS_VARIANTS.items():
        shards = out / "shards" / variant
        config = recipe_config(SynthesisConfig, args.recipe, "synthesize",
                               {"teacher": str(teacher_file), **common, **losses})
        started = time.time()
        summary = synthesize(config, shards)
        print(f"synthesized {variant}: fidelity {summary['fidelity']:.3f} ({time.time() - started:.0f} s)", flush=True)
        row = {"row": f"shards: {variant}", "fidelity": summary["fidelity"],
               "embedding_diversity": embedding_diversity(shards, teacher)["mean"]}
        if args.lpips_backbone:
            row["lpips"] = lpips_diversity(shards, args.lpips_backbone, device="cpu")["mean"]
        students = STUDENT_VARIANTS if variant == "df_dearkd" else {"dearkd": {}}
        for student, overrides in students.items():
            rows.append({**row, "student": student,
                         "accuracy": run_student(f"{variant}-{student}", {"shards": str(shards)}, overrides)})

    images = summary["images"]
    rng = np.random.default_rng(0)
    keep = rng.permutation(len(split.train_labels))[:images]
    real_train = out / f"real-train-{images}"
    if not real_train.is_dir():
        write_image_folder(split.train_images[keep], split.train_labels[keep], real_train)
    rows.append({"row": f"reference: {images} real training digits", "student": "dearkd",
                 "accuracy": run_student("real-dearkd", {"images": str(real_train)}, {})})

    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n# digits quality, {time.strftime('%Y-%m-%d')}, recipe {args.recipe}, "
          f"{args.epochs or load_recipe(args.recipe, 'distill').get('epochs')} epochs")
    print("| data | student | teacher fidelity | embedding diversity | LPIPS | real held-out accuracy |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["row"], r.get("student", ""), _fmt(r.get("fidelity")), _fmt(r.get("embedding_diversity")),
                 _fmt(r.get("lpips")), _fmt(r.get("accuracy"))]
        print("| " + " | ".join(cells) + " |")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
