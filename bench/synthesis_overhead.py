"""Time per inversion iteration / floor (teacher forward + input-gradient backward), side by side, on CPU.

    python bench/synthesis_overhead.py [--model resnet18] [--iterations 8] [--repeats 5] [--threads N]

The floor and the full iteration (hooks, all DF-DearKD losses, augmentation, Adam step, clamp) are timed
alternately in one process, so machine noise hits both alike; the ratio of the medians is reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import timm
import torch

from synth.inversion import LossWeights, Schedule, invert_batch
from synth.teacher import load_teacher


def floor_seconds(model: torch.nn.Module, batch: int, resolution: int, iterations: int) -> float:
    """Seconds per teacher forward + backward to the input (no parameter gradients)."""
    x = torch.randn(batch, 3, resolution, resolution, requires_grad=True)
    labels = torch.randint(0, 1000, (batch,))
    start = time.perf_counter()
    for _ in range(iterations):
        x.grad = None
        torch.nn.functional.cross_entropy(model(x), labels).backward()
    return (time.perf_counter() - start) / iterations


def iteration_seconds(teacher, batch: int, resolution: int, iterations: int) -> float:
    """Seconds per full inversion iteration (one stage of `iterations`, less one final forward)."""
    labels = torch.arange(batch // 4).repeat_interleave(4)
    schedule = Schedule(resolutions=(resolution,), iterations=(iterations,))
    start = time.perf_counter()
    invert_batch(teacher, labels, LossWeights(), schedule, torch.Generator().manual_seed(0))
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--configs", default="112x32,224x16", help="resolution x batch, comma separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.pth")
        torch.save(timm.create_model(args.model).state_dict(), path)
        teacher = load_teacher(f"timm:{args.model}", path)
    print(f"# {args.model}, {args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()},"
          f" {time.strftime('%Y-%m-%d')}")
    print("| resolution | batch | floor ms | iteration ms | ratio |")
    print("|---|---|---|---|---|")
    for item in args.configs.split(","):
        resolution, batch = (int(v) for v in item.split("x"))
        floor_seconds(teacher.model, batch, resolution, 1)
        iteration_seconds(teacher, batch, resolution, 2)
        floors, iters = [], []
        for _ in range(args.repeats):
            floors.append(floor_seconds(teacher.model, batch, resolution, args.iterations))
            iters.append(iteration_seconds(teacher, batch, resolution, args.iterations))
        floor, full = statistics.median(floors), statistics.median(iters)
        print(f"| {resolution} | {batch} | {floor * 1e3:.1f} | {full * 1e3:.1f} | {full / floor:.2f} |")


if __name__ == "__main__":
    main()
