"""Time per inversion iteration / floor (teacher forward + input-gradient backward), side by side, on CPU.

    python bench/synthesis_overhead.py [--model resnet18] [--iterations 8] [--repeats 5] [--threads N]
                                       [--configs 112x32,224x16] [--compile] [--no-eager]

The floor and the full iteration (hooks, all DF-DearKD losses, augmentation, Adam step, clamp) are timed
alternately in one process, so machine noise hits both alike; the ratio of the medians is reported. With
`--clock cpu` (the default with one thread) times are the process's CPU time, which a busy shared machine
inflates far less than wall time (time spent waiting for a core is not counted). The
iteration time is (T(1 + n) - T(1)) / n for `invert_batch` runs of 1 + n and 1 iterations, so per-batch
costs (noise draw, hook set-up, the final no-grad forward, uint8 conversion) do not count: over 2000
iterations they vanish. `--compile` adds a column for `invert_batch(..., compile=True)` (torch.compile of the
step; the cold compile time per shape is printed to stderr). On a shared machine use `--threads 1`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import timm
import torch

from synth.config import LossWeights, Schedule
from synth.inversion.invert import invert_batch
from synth.teachers.sources import load_teacher

CLOCK = time.perf_counter


def floor_seconds(model: torch.nn.Module, batch: int, resolution: int, iterations: int) -> float:
    """Seconds per teacher forward + backward to the input (no parameter gradients)."""
    x = torch.randn(batch, 3, resolution, resolution, requires_grad=True)
    labels = torch.randint(0, model.num_classes, (batch,))
    start = CLOCK()
    for _ in range(iterations):
        x.grad = None
        torch.nn.functional.cross_entropy(model(x), labels).backward()
    return (CLOCK() - start) / iterations


def _run(teacher, batch: int, resolution: int, iterations: int, compile: bool | str) -> float:
    labels = (torch.arange(batch // 4) % teacher.num_classes).repeat_interleave(4)
    schedule = Schedule(resolutions=(resolution,), iterations=(iterations,))
    start = CLOCK()
    invert_batch(
        teacher,
        labels,
        LossWeights(),
        schedule,
        torch.Generator().manual_seed(0),
        **({"compile": compile} if compile else {}),
    )
    return CLOCK() - start


def iteration_seconds(teacher, batch: int, resolution: int, iterations: int, compile: bool | str = False) -> float:
    """Seconds per full inversion iteration: a run of 1 + `iterations` less a run of 1, over `iterations`."""
    return (
        _run(teacher, batch, resolution, 1 + iterations, compile) - _run(teacher, batch, resolution, 1, compile)
    ) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--configs", default="112x32,224x16", help="resolution x batch, comma separated")
    parser.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        help="also time invert_batch(compile=...) (True, or a mode/backend name)",
    )
    parser.add_argument("--no-eager", action="store_true", help="only the floor and the compiled column")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default=None,
        help="wall (perf_counter) or cpu (process_time); default cpu with one thread, else wall",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    CLOCK = time.process_time if clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.pth")
        torch.save(timm.create_model(args.model).state_dict(), path)
        teacher = load_teacher(f"timm:{args.model}", path)
    columns = ([] if args.no_eager else [("eager", False)]) + ([("compiled", args.compile)] if args.compile else [])
    print(
        f"# {args.model}, {args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()},"
        f" {time.strftime('%Y-%m-%d')}, {args.iterations} iterations x {args.repeats} repeats, medians, {clock} clock"
    )
    head = " | ".join(f"{name} ms | {name} ratio" for name, _ in columns)
    print(f"| resolution | batch | floor ms | {head} | ms per image-iteration |")
    print("|---|---|---|" + "---|---|" * len(columns) + "---|")
    for item in args.configs.split(","):
        resolution, batch = (int(v) for v in item.split("x"))
        floor_seconds(teacher.model, batch, resolution, 1)
        for name, option in columns:  # warm-up; compiles each shape once
            start = time.perf_counter()
            _run(teacher, batch, resolution, 2, option)
            print(f"# warm-up {name} {resolution}x{batch}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        floors, times = [], {name: [] for name, _ in columns}
        for _ in range(args.repeats):
            floors.append(floor_seconds(teacher.model, batch, resolution, args.iterations))
            for name, option in columns:
                times[name].append(iteration_seconds(teacher, batch, resolution, args.iterations, option))
        floor = statistics.median(floors)
        cells = " | ".join(
            f"{statistics.median(times[name]) * 1e3:.1f} | {statistics.median(times[name]) / floor:.2f}"
            for name, _ in columns
        )
        per_image = statistics.median(times[columns[0][0]]) / batch * 1e3
        print(f"| {resolution} | {batch} | {floor * 1e3:.1f} | {cells} | {per_image:.2f} |", flush=True)


if __name__ == "__main__":
    main()
