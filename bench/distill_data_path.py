"""Distillation throughput: shards through a DataLoader versus the same images held in memory (CPU).

Every row runs the same stage-1 training step (teacher forward, student forward/backward with hidden KD,
AdamW) on the same images; only where the uint8 batches come from differs:
  memory        a uint8 tensor already in RAM, sliced by a random permutation (no per-image work)
  shards        ShardDataset -> PIL -> resize -> uint8 tensor -> DataLoader (no per-image augmentation)
  shards + aug  the same with DeiT's per-image augmentation (random resized crop, flip, RandAugment)
Batch-level augmentation (random erasing, Mixup/CutMix) runs on every row. Rows are interleaved and
repeated; the median img/s is reported with its ratio to the in-memory row. Worker start-up is excluded.

    python bench/distill_data_path.py [--student dearkd_nano_patch4_32] [--batch-size 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import timm
import torch

from dfkd.distill import AugmentConfig, DistillConfig
from dfkd.distill.build import setup
from dfkd.distill.data import make_loader, set_transform
from dfkd.distill.engine import train_step
from dfkd.distill.transforms import train_transform
from synth.shard_writer import write_shard
from synth.teacher_file import save_teacher_file

NO_PER_IMAGE_AUG = dict(rand_augment=None, color_jitter=0.0, scale=(1.0, 1.0), hflip=0.0)


def make_inputs(root: Path, images: int, size: int) -> tuple[str, str]:
    """Random 32-px shards (4 files) and a random-init digits teacher file."""
    rng = np.random.default_rng(0)
    shards = root / "shards"
    shards.mkdir()
    per = images // 4
    for k in range(4):
        write_shard(
            shards / f"shard-{k:06d}.h5",
            rng.integers(0, 256, (per, size, size, 3), dtype=np.uint8),
            np.arange(per) % 10,
            np.arange(k * per, (k + 1) * per),
            rng.normal(size=(per, 10)),
            num_classes=10,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            teacher={},
            config={},
        )
    teacher = root / "teacher.pt"
    save_teacher_file(
        teacher,
        "timm:dfkd_cnn_digits",
        {"num_classes": 10},
        timm.create_model("dfkd_cnn_digits", num_classes=10),
        (0.5,) * 3,
        (0.5,) * 3,
        size,
    )
    return str(shards), str(teacher)


def throughput(run, batches, steps: int, warmup: int) -> float:
    """img/s of `steps` training steps on the batches an iterator yields, after `warmup` untimed steps."""

    def step() -> int:
        images, labels, *_ = next(batches)
        train_step(run.model, run.optimizer, run.prep(images, labels), 1)
        return len(images)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    count = sum(step() for _ in range(steps))
    return count / (time.perf_counter() - start)


def memory_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Endless random batches sliced from tensors in RAM."""
    while True:
        order = torch.randperm(len(images))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            index = order[i : i + batch_size]
            yield images[index], labels[index]


def loader_batches(run, config: DistillConfig, augment: AugmentConfig):
    """Endless batches from the shard DataLoader with the given per-image transform."""
    set_transform(run.dataset, train_transform(run.size, augment, run.mean))
    epoch = 0
    while True:
        yield from make_loader(run.dataset, config.batch_size, config.workers, train=True, epoch=epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="dearkd_nano_patch4_32")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1", help="DataLoader workers to try, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        shards, teacher = make_inputs(Path(tmp), args.images, 32)
        config = DistillConfig(
            shards=shards,
            teacher=teacher,
            student=args.student,
            batch_size=args.batch_size,
            epochs=1,
            stage1_epochs=1,
            device="cpu",
            threads=args.threads,
            drop_path=0.0,
        )
        run = setup(config, torch.device("cpu"))
        raw = run.dataset
        raw.as_pil, raw.transform = False, None
        images = torch.stack([raw[i][0] for i in range(len(raw))])
        labels = torch.from_numpy(raw.labels)
        raw.as_pil = True
        plain = replace(config.augment, **NO_PER_IMAGE_AUG)
        rows = {"memory": lambda: memory_batches(images, labels, args.batch_size)}
        for workers in (int(w) for w in args.workers.split(",")):
            cfg = replace(config, workers=workers)
            rows[f"shards, {workers} workers"] = lambda cfg=cfg: loader_batches(run, cfg, plain)
            rows[f"shards + aug, {workers} workers"] = lambda cfg=cfg: loader_batches(run, cfg, config.augment)
        results: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, batches in rows.items():
                results[name].append(throughput(run, batches(), args.steps, args.warmup))
    base = statistics.median(results["memory"])
    print(
        f"{args.student}, batch {args.batch_size}, 32 px, stage 1 (teacher + hidden KD), {args.threads} torch "
        f"thread(s), {platform.processor() or platform.machine()}, median of {args.repeats} x {args.steps} steps\n"
    )
    print("| data path | img/s | ratio to memory |\n|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
