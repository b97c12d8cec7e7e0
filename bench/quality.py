"""Digits quality benchmark: what each part of the data-free recipe is worth, measured on real held-out digits.

    python bench/quality.py [--out bench-quality] [--recipe digits] [--threads 1] [--rows fm,di,...]

Fixed seeds, one script. The recipe rows distill the recipe's student for the recipe's epochs; every ablation row
runs for --ablation-epochs (default: half the recipe's) and changes one thing against `short`:

  fm, fm-seed1, fm-seed2   DF-DearKD shards, DearKD student, the recipe (function matching); distillation seeds 0-2
  short                    the recipe for --ablation-epochs: the reference of the rows below
  di                       DeepInversion shards (no L_ep, no triplet)
  deit                     a plain DeiT student (no MHCA, no hidden KD)
  hard, soft               hard (teacher argmax) / soft (KL, class head on labels) distillation instead
  stage2                   the last sixth of the epochs as stage 2 (labels only, no teacher)
  hid1, hid30              hidden-layer KD weight a_hid 1 / 30 instead of the recipe's 10
  n400, n1600              400 / 1600 synthesized images instead of 800
  adi                      400 DF-DearKD images + 400 more synthesized against the n400 student (Adaptive
                           DeepInversion, a_adi 1), trained on both sets (compare with short: 800 images in one round)
  real                     the same student and recipe on 800 real training digits (the reference)
  gen, gen-seed1           800 images from the generator engine (--engine generator), the recipe's student and epochs

Rows run in the order given and may be split across processes (`--rows`); each row's result is kept in
OUT/rows/<row>.json and reused, shards and students resume, and a lock makes concurrent processes synthesize a
set once. The table is printed from every finished row. The teacher's held-out accuracy comes first.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfkd.data.image_folder import write_image_folder
from dfkd.data.real import seeded_subset
from dfkd.distill.config import DistillConfig
from dfkd.distill.trainer import train_student
from dfkd.evaluate import load_student, measure_accuracy, teacher_classifier
from dfkd.evaluate.config import EvaluateConfig
from dfkd.evaluate.embedding_diversity import measure_embedding_diversity
from dfkd.pipeline.end_to_end import RealSetup, prepare_teacher, recipe_config
from dfkd.recipe_loader import load_recipe
from synth.config import SynthesisConfig
from synth.run.engine import synthesize

CPU = EvaluateConfig(device="cpu")  # evaluation settings of these runs

# shard sets: name -> synthesis overrides of the recipe
SETS = {
    "df800": {},
    "di800": {"losses.ep": 0.0, "losses.triplet": 0.0},
    "df400": {"per_class": 40},
    "df1600": {"per_class": 160},
    "adi400": {"per_class": 40, "seed": 1, "losses.adi": 1.0, "student_row": "n400"},  # ADI against that row's student
    "gen800": {"engine": "generator"},  # the generator engine (synth/generator), its defaults
}
RECIPE_ROWS = ("fm", "fm-seed1", "fm-seed2")
# rows: name -> (shard sets or "real", distillation overrides, description)
ROWS = {
    "fm": (["df800"], {}, "DF-DearKD 800, DearKD nano, function matching (the recipe)"),
    "fm-seed1": (["df800"], {"seed": 1}, "the same, distillation seed 1"),
    "fm-seed2": (["df800"], {"seed": 2}, "the same, distillation seed 2"),
    "short": (["df800"], {}, "the recipe, ablation epochs"),
    "di": (["di800"], {}, "DeepInversion 800 (no L_ep / triplet)"),
    "deit": (["df800"], {"student": "deit_nano_patch4_32", "loss.a_hid": 0.0}, "plain DeiT nano student"),
    "hard": (["df800"], {"loss.distillation": "hard", "loss.w_cls": 1.0}, "hard distillation"),
    "soft": (["df800"], {"loss.distillation": "soft", "loss.w_cls": 1.0}, "soft distillation (class head on labels)"),
    "stage2": (["df800"], {"stage1_epochs": 5 / 6}, "last sixth of the epochs in stage 2"),
    "hid1": (["df800"], {"loss.a_hid": 1.0}, "hidden-layer KD weight 1 (per-sample KL against MSE)"),
    "hid30": (["df800"], {"loss.a_hid": 30.0}, "hidden-layer KD weight 30"),
    "n400": (["df400"], {}, "400 DF-DearKD images"),
    "n1600": (["df1600"], {}, "1600 DF-DearKD images"),
    "adi": (["df400", "adi400"], {}, "400 + 400 Adaptive DeepInversion images (2 rounds)"),
    "real": ("real:800", {}, "800 real training digits (reference)"),
    "gen": (["gen800"], {"epochs": 80}, "generator engine 800 (its defaults), the recipe's student and 80 epochs"),
    "gen-seed1": (["gen800"], {"epochs": 80, "seed": 1}, "the same, distillation seed 1"),
}


@contextmanager
def locked(path: Path):
    """An exclusive lock on `path` (created), so that concurrent bench processes synthesize a set once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass
class QualityRun:
    """One bench process: its arguments, the digits teacher and data, the epochs, and the shard sets made so far."""

    args: argparse.Namespace
    out: Path
    digits: RealSetup
    teacher_top1: float
    recipe_epochs: int
    ablation_epochs: int
    sets: dict[str, dict] = field(default_factory=dict)
    set_table: dict[str, dict] = field(default_factory=lambda: SETS)
    row_table: dict[str, tuple] = field(default_factory=lambda: ROWS)
    recipe_rows: tuple[str, ...] = RECIPE_ROWS

    def shard_set(self, name: str) -> Path:
        """The shard set `name`, synthesized (under a lock) unless there; its fidelity and diversity noted once."""
        path = self.out / "shards" / name
        if name not in self.sets:
            overrides = dict(self.set_table[name])
            if "student_row" in overrides:
                overrides["student"] = str(self.row_student(overrides.pop("student_row")))
            config = recipe_config(
                SynthesisConfig,
                self.args.recipe,
                "synthesize",
                {"teacher": str(self.digits.teacher_file), "threads": self.args.threads, **overrides},
            )
            with locked(self.out / "locks" / name):
                started = time.process_time()
                summary = synthesize(config, path)
            cpu_s = round(time.process_time() - started, 1)
            diversity = measure_embedding_diversity(path, self.digits.teacher)
            self.sets[name] = {
                "fidelity": summary["fidelity"],
                "cpu_s": cpu_s,
                "embedding_diversity": diversity["mean"],
                "near_duplicates": diversity["near_duplicates"],
            }
            print(f"set {name}: {json.dumps(self.sets[name])}", flush=True)
        return path

    def row_student(self, name: str) -> Path:
        """The student file of row `name`, run first if needed."""
        self.run_row(name)
        return self.out / "students" / name / "student.pth"

    def run_row(self, name: str) -> dict:
        """Row `name`'s result: read from OUT/rows/<name>.json, or its student distilled, measured and saved there."""
        result_file = self.out / "rows" / f"{name}.json"
        if result_file.is_file():
            return json.loads(result_file.read_text())
        data, overrides, description = self.row_table[name]
        epochs = self.recipe_epochs if name in self.recipe_rows else self.ablation_epochs
        epochs = overrides.get("epochs", epochs)  # a row may state its own length
        if isinstance(data, str):  # "real:N": N seeded real training images
            source = {"images": str(real_training_digits(self.out, self.digits.split, int(data.split(":")[1])))}
        else:
            source = {"shards": ",".join(str(self.shard_set(s)) for s in data)}
        stage1 = overrides.get("stage1_epochs", 1.0)
        config = recipe_config(
            DistillConfig,
            self.args.recipe,
            "distill",
            {
                **source,
                "teacher": str(self.digits.teacher_file),
                "resume": True,
                "threads": self.args.threads,
                "epochs": epochs,
                **overrides,
                "stage1_epochs": round(stage1 * epochs) if stage1 < 1 else epochs,
            },
        )
        started = time.process_time()
        run = train_student(config, self.out / "students" / name)
        row = {
            "row": name,
            "description": description,
            "data": data,
            "images": run["images"],
            "accuracy": measure_accuracy(load_student(run["student"]), self.digits.real_test, CPU)["top1"],
            "epochs": epochs,
            "cpu_s": round(time.process_time() - started, 1),
            **({"set": self.sets.get(data[0], {})} if not isinstance(data, str) else {}),
        }
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(row, indent=2))
        print(f"row {name}: {row['accuracy']:.4f} ({row['cpu_s']} s CPU)", flush=True)
        return row


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-quality")
    parser.add_argument("--recipe", default="digits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's distillation epochs")
    parser.add_argument(
        "--ablation-epochs", type=int, default=None, help="epochs of the ablation rows [default: half the recipe's]"
    )
    return parser


def prepare(args: argparse.Namespace, **tables) -> QualityRun:
    """The recipe's teacher (trained once, under a lock) and its held-out accuracy, and the epochs of the rows;
    `tables`: QualityRun's set_table, row_table, recipe_rows (default: the digits rows)."""
    out = Path(args.out)
    with locked(out / "locks" / "teacher"):
        digits = prepare_teacher(out, args.recipe)
    teacher_top1 = measure_accuracy(teacher_classifier(digits.teacher), digits.real_test, CPU)["top1"]
    recipe_epochs = args.epochs or int(load_recipe(args.recipe, "distill")["epochs"])
    ablation_epochs = args.ablation_epochs or recipe_epochs // 2
    return QualityRun(args, out, digits, teacher_top1, recipe_epochs, ablation_epochs, **tables)


def main() -> None:
    """Run the requested rows in order (an unknown name stops there), then print the table of every finished row."""
    parser = build_parser()
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = prepare(args)
    for name in args.rows.split(","):
        if name not in ROWS:
            parser.error(f"unknown row '{name}'; rows: {', '.join(ROWS)}")
        run.run_row(name)
    print_table(run.out, args.recipe, run.teacher_top1)


def real_training_digits(out: Path, split, count: int) -> Path:
    """A seeded `count`-image subset of the real training images as an image folder."""
    folder = out / f"real-train-{count}"
    if not folder.is_dir():
        write_image_folder(*seeded_subset(split.train_images, split.train_labels, count, seed=0), folder)
    return folder


def print_table(
    out: Path, recipe: str, teacher_top1: float, row_table=ROWS, recipe_rows=RECIPE_ROWS, title="digits quality"
) -> None:
    """The markdown table of every finished row, with the mean and spread of the seeded recipe rows."""
    rows = {p.stem: json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))}
    print(f"\n# {title}, {time.strftime('%Y-%m-%d')}, recipe {recipe}; teacher {teacher_top1:.4f}")
    print(
        "| row | what | images | epochs | fidelity | embedding diversity | real held-out top-1 | / teacher "
        "| synthesis CPU s | distillation CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in row_table:
        if name in rows:
            r, s = rows[name], rows[name].get("set", {})
            fid = f"{s['fidelity']:.3f}" if s.get("fidelity") is not None else ""
            div = f"{s['embedding_diversity']:.3f}" if "embedding_diversity" in s else ""
            print(
                f"| {name} | {r['description']} | {r['images']} | {r['epochs']} | {fid} | {div} | "
                f"{r['accuracy']:.4f} | {r['accuracy'] / teacher_top1:.3f} | {s.get('cpu_s', '')} | {r['cpu_s']} |"
            )
    seeded = [rows[n]["accuracy"] for n in recipe_rows if n in rows]
    if len(seeded) > 1:
        print(
            f"\nrecipe over {len(seeded)} seeds: mean {np.mean(seeded):.4f}, min {min(seeded):.4f}, "
            f"max {max(seeded):.4f}"
        )


if __name__ == "__main__":
    main()
