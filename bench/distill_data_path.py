"""Distillation data path: DeiT's augmentation per image with PIL (timm's transforms, the path before kornia)
versus batched on uint8 tensors (dfkd.distill.inputs.augment, the training path), CPU.

Both paths read the same shards through the same DataLoader (0 workers, so that the process's CPU time is all of
it) and end in the same normalised, randomly erased, Mixup/CutMix-ed batch; DeiT's settings
(rand-m9-mstd0.5-inc1, random resized crop 0.08-1, flip 0.5, erasing 0.25, Mixup 0.8 / CutMix 1.0):
  pil      ShardDataset -> PIL -> timm's per-image transforms -> uint8 tensor; normalise, timm's random erasing
           and Mixup on the batch (the code before kornia, kept here for the comparison)
  batched  ShardDataset -> uint8 tensor -> per-sample crop, flip, RandAugment, erasing, Mixup on the batch
Per row: images/s, and CPU milliseconds per image (time.process_time) in all and spent on data and augmentation,
at 32 px and 224 px; and at 32 px the nano student's stage-1 training step (teacher + hidden KD) on each path. Rows are
interleaved and repeated; medians are reported.

    python bench/distill_data_path.py [--images 256] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing

from dfkd.distill import AugmentConfig, DistillConfig
from dfkd.distill.build import setup
from dfkd.distill.epoch import train_step
from dfkd.distill.inputs.batch import Batch, BatchMix, BatchPrep
from dfkd.distill.inputs.loaders import make_loader, open_shards
from synth.shards.writer import write_shard
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.teacher import normalization

MEAN, STD = (0.5,) * 3, (0.5,) * 3


def write_shards(root: Path, images: int, size: int) -> str:
    """Random `size`-px shards (2 files) of 10 classes."""
    rng = np.random.default_rng(0)
    root.mkdir()
    per = images // 2
    for k in range(2):
        write_shard(
            root / f"shard-{k:06d}.h5",
            rng.integers(0, 256, (per, size, size, 3), dtype=np.uint8),
            np.arange(per) % 10,
            np.arange(k * per, (k + 1) * per),
            rng.normal(size=(per, 10)),
            num_classes=10,
            mean=MEAN,
            std=STD,
            teacher={},
            config={},
        )
    return str(root)


def pil_transform(size: int, augment: AugmentConfig):
    """The former per-image transform: timm's create_transform on PIL images (uint8 tensor out), with posterize to
    0 bits giving a black image (Pillow 13 refuses 0 bits)."""
    for name in ("Posterize", "PosterizeIncreasing"):
        auto_augment.NAME_TO_OP[name] = lambda img, bits, **_: (
            Image.new(img.mode, img.size) if bits < 1 else auto_augment.posterize(img, bits)
        )
    return create_transform(
        size,
        is_training=True,
        scale=tuple(augment.scale),
        hflip=augment.hflip,
        auto_augment=augment.rand_augment,
        interpolation=augment.interpolation,
        mean=MEAN,
        normalize=False,
    )


class PilPrep:
    """The former batch step: normalise, timm's random erasing (per image, on the batch), Mixup/CutMix."""

    def __init__(self, augment: AugmentConfig):
        self.mean, self.std = normalization(MEAN, STD)
        self.erasing = RandomErasing(augment.reprob, mode="pixel", max_count=1, device="cpu")
        self.mix = BatchMix(augment.mixup, augment.cutmix, augment.mix_prob, augment.switch_prob)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        x = self.erasing((images.float() / 255 - self.mean) / self.std)
        lam = self.mix(x)
        return Batch(x, mixup_target(labels, 10, lam, 0.1))


def batches(shards: str, size: int, batch_size: int, backend: str) -> Iterator[Batch]:
    """Endless prepared batches of one path."""
    augment, dataset = AugmentConfig(), open_shards(shards)
    if backend == "pil":
        dataset.as_pil, dataset.transform, prep = True, pil_transform(size, augment), PilPrep(augment)
    else:
        batched = BatchPrep(MEAN, STD, 10, augment, torch.device("cpu"), size)
        step = iter(range(1 << 30))
        prep = lambda images, labels: batched(images, labels, key=(next(step),))  # noqa: E731
    epoch = 0
    while True:
        for images, labels in make_loader(dataset, batch_size, 0, train=True, epoch=epoch):
            yield prep(images, labels)
        epoch += 1


def measure(source: Iterator[Batch], images: int, train: Callable[[Batch], None] | None) -> tuple[float, ...]:
    """(images/s, CPU ms per image in all, CPU ms per image producing batches) over about `images` images, after
    one untimed batch. CPU time (time.process_time) is robust to other jobs on a shared machine; images/s is not."""
    train = train or (lambda batch: None)
    train(next(source))
    done, data_cpu, started, cpu = 0, 0.0, time.perf_counter(), time.process_time()
    while done < images:
        before = time.process_time()
        batch = next(source)
        data_cpu += time.process_time() - before
        train(batch)
        done += len(batch.inputs)
    return done / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / done, 1000 * data_cpu / done


def nano_trainer(root: Path, shards: str, batch_size: int) -> Callable[[Batch], None]:
    """One stage-1 training step of the nano student (digits-style teacher, hidden KD) per batch."""
    teacher = root / "teacher.pt"
    model = timm.create_model("dfkd_cnn_digits", num_classes=10)
    save_teacher_file(teacher, "timm:dfkd_cnn_digits", {"num_classes": 10}, model, MEAN, STD, 32)
    config = DistillConfig(
        shards=shards,
        teacher=str(teacher),
        student="dearkd_nano_patch4_32",
        batch_size=batch_size,
        epochs=1,
        stage1_epochs=1,
        device="cpu",
        threads=1,
        drop_path=0.0,
    )
    run = setup(config, torch.device("cpu"))
    return lambda batch: train_step(run.model, run.optimizer, batch, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images per row and repeat")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows: dict[str, Callable[[], tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = {size: write_shards(Path(tmp) / f"s{size}", 2 * args.images, size) for size in (32, 224)}
        trainer = nano_trainer(Path(tmp), shards[32], args.batch_size)
        for size, backend in [(s, b) for s in (32, 224) for b in ("pil", "batched")]:
            source = batches(shards[size], size, args.batch_size, backend)
            rows[f"{size} px, data + augmentation, {backend}"] = lambda s=source: measure(s, args.images, None)
        for backend in ("pil", "batched"):
            source = batches(shards[32], 32, args.batch_size, backend)
            rows[f"32 px, nano training step, {backend}"] = lambda s=source: measure(s, args.images, trainer)
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, row in rows.items():
                results[name].append(row())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"batch {args.batch_size}, 1 torch thread, 0 loader workers, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, commit {commit}; median of {args.repeats} x {args.images} images per row\n"
    )
    print("| row | img/s (wall) | CPU ms/img, all | CPU ms/img, data + augmentation |\n|---|---|---|---|")
    for name, values in results.items():
        speed, cpu, data = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"| {name} | {speed:.0f} | {cpu:.2f} | {data:.2f} |")


if __name__ == "__main__":
    main()
