"""ZSKD's Fashion-MNIST setting, like for like: a LeNet-5 teacher and a LeNet-5-Half student, both the user's own classes
(bench/zskd_models.py, given to dfkd as `file.py:factory` specs), the student distilled from dfkd shards only.

    python bench/zskd.py [--out bench-zskd] [--threads 1] [--rows half2k,half5k,nano2k]

The steps are what a user with their own network runs, through the command line: train the LeNet-5 on the 60,000
real training images with their own code (here: this script, 1 x 32 x 32, Fashion-MNIST mean/std, flips and 2-px
shifts), `dfkd import-teacher` it, `dfkd synthesize --config fashion` from it, `dfkd distill` the student on the shards
alone, `dfkd evaluate accuracy` on the official 10,000 test images. Every step resumes (its output is kept); each
row's result is written to OUT/rows/<row>.json with the CPU seconds of its steps. Rows:

  half2k, half5k, half10k, half20k
                            LeNet-5-Half on 2,000 / 5,000 / 10,000 / 20,000 DeepInversion images (the `fashion`
                            recipe's synthesis and distillation, student replaced)
  half5k-seed1, half20k-seed1  their distillation with seed 1
  half20k-e240              half20k for 240 epochs instead of the recipe's 120
  gen20k-lr4                20,000 images from the generator engine (--engine generator), distilled at 4x the lr
  half5k-nomix[-noaug], half5k-lr4
                            half5k's distillation without Mixup/CutMix (and RandAugment), or at 4x the lr: a
                            0.03 M-parameter CNN is not a ViT, and the recipe's regularisation was tuned for one
  nano2k                    the recipe's DearKD nano student on the same teacher's 2,000 images
  half-di2k, half-gen2k[-seed1], half-gen2k-*
                            screening the generator engine's settings at 2,000 images by the 2-CPU-minute LeNet-5-Half
                            student (`--teacher-file`: the sets of another teacher, e.g. bench/fashion.py's)

Published (ZSKD, Table: Fashion-MNIST): LeNet-5 teacher 0.9084, LeNet-5-Half by ZSKD 0.7962 (0.876 x) from 48,000
data impressions; KegNet (Yoo et al., NeurIPS 2019): 0.8523 from a ResNet-14 teacher at 0.9250 (0.921 x).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zskd_models import LeNet5  # noqa: E402  (the user's own network, beside this script)

from dfkd.api import load_teacher  # noqa: E402
from dfkd.evaluate.embedding_diversity import measure_embedding_diversity  # noqa: E402

MODELS = Path(__file__).resolve().parent / "zskd_models.py"
TEACHER_SPEC = f"{MODELS}:LeNet5"
HALF_SPEC = f"{MODELS}:lenet5_half"
EP = ["--a-ep", "50", "--ep-margin", "0.3", "--a-triplet", "0.5", "--triplet-margin", "0.3"]  # intra-divergence
SETS = {  # set: (images per class, synthesis flags beside the `fashion` recipe)
    "di2k": (200, []),
    "di5k": (500, []),
    "di10k": (1000, []),
    "di20k": (2000, []),
    "di2k-it50": (200, ["--iterations", "50,50"]),  # the pixel engine at 50 + 50 iterations
    "gen20k": (2000, ["--engine", "generator"]),  # the generator engine: 5 steps per batch from meta-learned weights
    # screening the generator engine at 2,000 images (LeNet-5-Half rows: about 2 CPU minutes each)
    "gen2k": (200, ["--engine", "generator"]),
    "gen2k-steps10": (200, ["--engine", "generator", "--generator-steps", "10"]),
    "gen2k-nometa": (200, ["--engine", "generator", "--no-meta"]),
    "gen2k-ep": (200, ["--engine", "generator", *EP]),
    "gen2k-crop": (200, ["--engine", "generator", "--generator-augment", "crop"]),
    "gen2k-mlr05": (200, ["--engine", "generator", "--meta-lr", "0.5"]),
    "gen2k-warm200": (200, ["--engine", "generator", "--warmup-steps", "200"]),
    "gen2k-ep5": (200, ["--engine", "generator", *EP[2:], "--a-ep", "5", "--ep-margin", "0.3"]),
    "gen2k-epnoise": (200, ["--engine", "generator", *EP, "--noise-lr", "0.01"]),
    "gen2k-epnoisebn": (200, ["--engine", "generator", *EP, "--noise-lr", "0.01", "--a-bn", "30"]),
    "gen2k-ep5noise": (200, ["--engine", "generator", *EP, "--a-ep", "5", "--noise-lr", "0.01"]),
    "gen2k-ipc2": (200, ["--engine", "generator", "--images-per-class", "2"]),  # units of 20 images, 100 units
    "gen2k-ipc5": (200, ["--engine", "generator", "--images-per-class", "5"]),
    "gen2k-ipc2-ep5": (200, ["--engine", "generator", "--images-per-class", "2", *EP, "--a-ep", "5"]),
    "gen10k": (1000, ["--engine", "generator"]),
    "gen10k-ep5": (1000, ["--engine", "generator", *EP, "--a-ep", "5"]),
    "gen2k-warm500": (200, ["--engine", "generator", "--warmup-steps", "500"]),
    "gen2k-ep5-warm200": (200, ["--engine", "generator", *EP, "--a-ep", "5", "--warmup-steps", "200"]),
    "gen2k-noise": (200, ["--engine", "generator", "--noise-lr", "0.01"]),
    "gen2k-bn30": (200, ["--engine", "generator", "--a-bn", "30"]),
    "gen2k-w64": (200, ["--engine", "generator", "--generator-width", "64"]),
}
NO_MIX = ["--mixup", "0", "--cutmix", "0"]
ROWS = {  # row: (set, student spec (None: the recipe's DearKD nano), seed, epochs (None: the recipe's), other flags)
    "half2k": ("di2k", HALF_SPEC, 0, None, []),
    "half5k": ("di5k", HALF_SPEC, 0, None, []),
    "half5k-seed1": ("di5k", HALF_SPEC, 1, None, []),
    "half5k-nomix": ("di5k", HALF_SPEC, 0, None, NO_MIX),
    "half5k-nomix-noaug": ("di5k", HALF_SPEC, 0, None, [*NO_MIX, "--rand-augment", "none"]),
    "half5k-lr4": ("di5k", HALF_SPEC, 0, None, ["--lr", "0.128"]),
    "half10k": ("di10k", HALF_SPEC, 0, None, []),
    "half20k": ("di20k", HALF_SPEC, 0, None, []),
    "half20k-seed1": ("di20k", HALF_SPEC, 1, None, []),
    "half20k-e240": ("di20k", HALF_SPEC, 0, 240, []),
    "gen20k-lr4": ("gen20k", HALF_SPEC, 0, None, ["--lr", "0.128"]),
    "nano2k": ("di2k", None, 0, None, []),
    "half-di2k": ("di2k", HALF_SPEC, 0, None, []),  # = half2k, under the screening rows' name
    "half-gen2k-seed1": ("gen2k", HALF_SPEC, 1, None, []),
    "half-di2k-it50": ("di2k-it50", HALF_SPEC, 0, None, []),
    # 10,000 generator images for 24 epochs: as many distillation steps as 2,000 for 120 (the budget comparison)
    "half-gen10k-e24": ("gen10k", HALF_SPEC, 0, 24, []),
    "half-gen10k-ep5-e24": ("gen10k-ep5", HALF_SPEC, 0, 24, []),
    **{f"half-{name}": (name, HALF_SPEC, 0, None, []) for name in SETS if name.startswith("gen2k")},
}
PUBLISHED = """Published: ZSKD (Nayak et al., ICML 2019), Fashion-MNIST, LeNet-5 teacher 0.9084 -> LeNet-5-Half 0.7962 (0.876 x)
from 48,000 data impressions; KegNet (Yoo et al., NeurIPS 2019): ResNet-14 teacher 0.9250 -> 0.8523 (0.921 x)."""


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def dfkd(*args: str) -> dict:
    """Run one dfkd command with --json; its JSON result."""
    done = subprocess.run([sys.executable, "-m", "dfkd", *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dfkd {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def train_teacher(out: Path, threads: int, epochs: int = 15) -> float:
    """The user's own training of LeNet-5 on the 60,000 real training images (1 x 32 x 32); its test top-1."""
    from dfkd.data.fashion_mnist import load_fashion_mnist
    from synth.teachers.preprocessing import PRESETS

    weights = out / "lenet5.pth"
    info = out / "lenet5.json"
    if info.is_file():
        return json.loads(info.read_text())["test_top1"]
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    data = load_fashion_mnist(size=32)
    (mean,), (std,) = PRESETS["fashion-mnist"]

    def tensors(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(data[f"{part}_images"][..., 0]).float().div(255).sub(mean).div(std).unsqueeze(1)
        return x, torch.from_numpy(data[f"{part}_labels"])

    (x, y), (xt, yt) = tensors("train"), tensors("test")
    model = LeNet5()
    steps = epochs * (len(x) // 128)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(len(x) // 128):
            batch = order[i * 128 : (i + 1) * 128]
            images = _shift_flip(x[batch])
            loss = F.cross_entropy(model(images), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        top1 = _top1(model, xt, yt)
        print(f"teacher epoch {epoch + 1}/{epochs}: test top-1 {top1:.4f}", file=sys.stderr)
    torch.save(model.state_dict(), weights)
    info.write_text(json.dumps({"test_top1": top1, "epochs": epochs}) + "\n")
    return top1


def _shift_flip(images: torch.Tensor) -> torch.Tensor:
    """Random 2-px shifts (zero padding) and horizontal flips."""
    padded = F.pad(images, (2, 2, 2, 2))
    dx, dy = np.random.randint(0, 5, 2)
    out = padded[..., dy : dy + 32, dx : dx + 32]
    flip = torch.rand(len(out)) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(
        sum((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum() for i in range(0, len(x), 1000)) / len(x)
    )


def lenet5_teacher(out: Path, threads: int) -> tuple[Path, float]:
    """The LeNet-5 trained with the user's own code and imported as a teacher file, and its test top-1."""
    started = cpu_seconds()
    teacher_top1 = train_teacher(out, threads)
    teacher_file = out / "lenet5-teacher.pt"
    if not teacher_file.is_file():
        dfkd(
            "import-teacher",
            "--teacher",
            TEACHER_SPEC,
            "--teacher-weights",
            str(out / "lenet5.pth"),
            "--mean",
            "fashion-mnist",
            "--std",
            "fashion-mnist",
            "--input-size",
            "32",
            "--out",
            str(teacher_file),
        )
    print(f"teacher: LeNet-5 test top-1 {teacher_top1:.4f} ({cpu_seconds() - started:.0f} CPU s)", file=sys.stderr)
    return teacher_file, teacher_top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-zskd")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the recipe's)")
    parser.add_argument("--teacher-file", default=None, help="screen the rows' sets for this teacher file instead")
    args = parser.parse_args()
    unknown = [row for row in args.rows.split(",") if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    real_test = out / "real-test"
    if not real_test.is_dir():
        dfkd("real-images", "--dataset", "fashion-mnist", "--out", str(real_test))
    if args.teacher_file:  # another teacher of the same images (its rows screen sets for it)
        teacher_file = Path(args.teacher_file).resolve()
        teacher_top1 = dfkd(
            "evaluate", "accuracy", "--teacher", str(teacher_file), "--data", str(real_test), "--threads", threads
        )["teacher"]["top1"]
    else:
        teacher_file, teacher_top1 = lenet5_teacher(out, args.threads)
    teacher = load_teacher(str(teacher_file))  # in this process: the sets' diversity
    for row in args.rows.split(","):
        result_file = out / "rows" / f"{row}.json"
        if result_file.is_file():
            continue
        set_name, student, seed, row_epochs, flags = ROWS[row]
        shards = out / "sets" / set_name
        before = cpu_seconds()
        dfkd(
            "synthesize",
            "--config",
            "fashion",
            "--teacher",
            str(teacher_file),
            "--out",
            str(shards),
            "--per-class",
            str(SETS[set_name][0]),
            "--threads",
            threads,
            *SETS[set_name][1],
        )
        synthesis = cpu_seconds() - before
        fidelity = dfkd("evaluate", "fidelity", str(shards), "--threads", threads)["fidelity"]
        diversity = measure_embedding_diversity(shards, teacher)
        run = out / "runs" / row
        before, wall = cpu_seconds(), time.time()
        extra = ["--student", student] if student else []
        epochs = row_epochs or args.epochs
        extra += (["--epochs", str(epochs)] if epochs else []) + flags
        summary = dfkd(
            "distill",
            "--config",
            "fashion",
            "--shards",
            str(shards),
            "--teacher",
            str(teacher_file),
            "--out",
            str(run),
            "--seed",
            str(seed),
            "--threads",
            threads,
            *extra,
        )
        distillation = cpu_seconds() - before
        accuracy = dfkd(
            "evaluate",
            "accuracy",
            "--student",
            str(run / "student.pth"),
            "--data",
            str(real_test),
            "--threads",
            threads,
        )
        result = {
            "row": row,
            "set": set_name,
            "student": student or "dearkd_nano_patch4_32",
            "seed": seed,
            "images": summary["images"],
            "epochs": summary["epochs"],
            "top1": accuracy["student"]["top1"],
            "teacher_top1": teacher_top1,
            "ratio": accuracy["student"]["top1"] / teacher_top1,
            "fidelity": fidelity,
            "embedding_diversity": diversity["mean"],
            "near_duplicates": diversity["near_duplicates"],
            "synthesis_cpu_s": round(synthesis),
            "distill_cpu_s": round(distillation),
            "distill_wall_s": round(time.time() - wall),
        }
        result_file.write_text(json.dumps(result) + "\n")
        print(json.dumps(result), file=sys.stderr)
    print("| row | images | epochs | top-1 | / teacher | synthesis CPU s (set) | distillation CPU s |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        path = out / "rows" / f"{row}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            print(
                f"| {row} | {r['images']} | {r['epochs']} | {r['top1']:.4f} | {r['ratio']:.3f} | "
                f"{r['synthesis_cpu_s']} | {r['distill_cpu_s']} |"
            )
    print(f"\nteacher LeNet-5: {teacher_top1:.4f}\n{PUBLISHED}")


if __name__ == "__main__":
    main()
