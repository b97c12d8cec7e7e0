"""GPU throughput of synthesis and student training: images per GPU-hour, model FLOP utilisation, bf16 numerics.

    python bench/gpu.py                 # one GPU, under 8 minutes (K timed iterations per shape, extrapolated)
    python bench/gpu.py --smoke         # CPU, tiny models, 16 -> 32 px, 2 iterations, no compile (a test runs it)

Synthesis: for each teacher (timm resnet50 and regnety_160, random weights saved to a temp file and loaded with
`load_teacher('timm:<name>', path)`), each mode (eager; compiled = `invert_batch(compile=True)`; optionally
cudagraphs = `compile="reduce-overhead"`) and each resolution (112, 224), one inversion iteration is timed as
(T(1 + K) - T(1)) / K of `invert_batch` runs (bf16 autocast, channels_last, all DF-DearKD losses on), after a
warm-up run that also compiles. Images per GPU-hour for a schedule = batch * 3600 / sum_r(iterations_r * t_r)
(per-batch costs, a noise draw and one final forward, are left out: under 0.1% of 3000 iterations).
Schedules: DeepInversion 2k@112 + 1k@224 ("setting 0") and DF-DearKD 2k@112 + 2k@224.

FLOPs: counted with torch.utils.flop_counter.FlopCounterMode on one eager iteration (teacher forward, all
losses, backward to the image), i.e. matmul and convolution FLOPs only (BN statistics, TV, optimiser: not
counted). The teacher's weights need no gradient, so each convolution's backward computes the gradient with
respect to its input only (about 1x its forward FLOPs) and not the weight gradient (the other 1x a training
step pays): an iteration is about 2x the forward FLOPs. The table prints the counted forward FLOPs per image
too, so that ratio can be read off (resnet50 at 224: 4.1 GMACs = 8.2 GFLOPs forward). MFU = counted FLOPs per
second / the measured rate of a large bf16 matrix multiply on the same GPU (not the datasheet peak).

Numerics: the bf16 + channels_last step (eager, and compiled when compiled is a mode) against the fp32 eager step
(TF32 off) from the same images, then a 10-iteration inversion at 112 px from one seed against fp32 eager; for
the DeepInversion terms alone and for all DF-DearKD terms (gpu_numerics.CHECKS holds the tolerances: worst loss-term
relative error 5e-2; image-gradient cosine 0.99 / 0.98; final total loss 5% / 10%; mean pixel difference in
[0, 1] 0.02 / 0.05). The intra-divergence and triplet terms compare nearly identical embeddings, where bf16
costs the most, hence the looser second row. The verdict line says PASS or FAIL (exit status 3 on FAIL, after
all tables; informational in --smoke, whose tiny random teachers fail the second row).

Generator engine (`--engine generator`): per teacher, one generator step (generator forward, teacher forward and
backward through both, Adam on the generator's weights; bf16 autocast) timed as (T(1 + K) - T(1)) / K of
`adapt_unit` runs at the final resolution, the rest of T(1) as the per-unit cost (noise, final images and logits);
images per GPU-hour at 5 and 50 steps per unit (the warm-up units left out: amortised over a long run).

Student: DearKD-Ti (`dearkd_tiny_patch16_224`) training images/s at 224 with regnety_160 as teacher (forward
under no_grad), a plain fused AdamW step, cross-entropy on both heads (class head to the labels, distillation
head to the teacher's argmax), bf16 autocast; random tensors on the GPU as data (the data path is measured by
bench/data_path.py). Eager and the student compiled.

Everything that must fit the time budget (--budget-s, default 450 s) is ordered by importance; a compiled
configuration that would not fit is skipped with a note.

The measurements live in bench/gpu_measure.py and bench/gpu_numerics.py, the tables' printing in
bench/gpu_report.py (imported from this script's folder); this script parses the arguments and runs them teacher
by teacher.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Optional

import torch
from gpu_measure import Setup, count_flops, floor_seconds, iteration_seconds, make_teacher, matmul_rate
from gpu_numerics import numerics_check
from gpu_report import print_numerics, print_student, print_synthesis

from synth.teachers.teacher import Teacher

GENERATOR_STEPS = (5, 50)  # the generator engine's steps per unit: the digits/fashion default, the ImageNet recipe
SCHEDULES = {  # name: ((resolution, iterations), ...) at full scale; --smoke keeps the counts, halves/quarters sizes
    "DeepInversion 2k@112+1k@224": ((0, 2000), (1, 1000)),
    "DF-DearKD 2k@112+2k@224": ((0, 2000), (1, 2000)),
}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line (None: sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, 2 iterations, no compile")
    parser.add_argument("--models", type=lambda s: s.split(","), default=None, help="timm teachers, comma separated")
    parser.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=None,
        help="eager, compiled, cudagraphs (comma separated; default eager,compiled on GPU)",
    )
    parser.add_argument("--batch", type=int, default=None, help="inversion batch for every teacher")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per shape (K)")
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting compiled configurations after this"
    )
    parser.add_argument("--no-student", action="store_true")
    parser.add_argument("--no-check", action="store_true")
    return parser.parse_args(argv)


def build_setup(args: argparse.Namespace) -> Setup:
    """Full (GPU) or smoke (CPU, tiny) settings."""
    start = time.perf_counter()
    if args.smoke:
        torch.set_num_threads(1)
        return Setup(
            device=torch.device("cpu"),
            dtype=torch.bfloat16,
            channels_last=False,
            resolutions=(16, 32),
            models=args.models or ["dfkd_cnn_tiny", "resnet10t"],
            batches={},
            iterations=2,
            warmup=1,
            modes=args.modes or ["eager"],
            student="dearkd_pico_patch4_32",
            student_teacher="dfkd_cnn_tiny",
            student_batch=8,
            student_resolution=32,
            student_steps=2,
            deadline=start + args.budget_s,
        )
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --smoke for the CPU check)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return Setup(
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        channels_last=True,
        resolutions=(112, 224),
        models=args.models or ["resnet50", "regnety_160"],
        batches={"resnet50": 128, "regnety_160": 64},
        iterations=args.iterations,
        warmup=3,
        modes=args.modes or ["eager", "compiled"],
        student="dearkd_tiny_patch16_224",
        student_teacher="regnety_160",
        student_batch=256,
        student_resolution=224,
        student_steps=args.iterations,
        deadline=start + args.budget_s,
    )


def raise_compile_limits() -> None:
    """Several teachers, shapes and modes share one compiled step: let dynamo keep a graph for each."""
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


def print_header(setup: Setup, args: argparse.Namespace) -> float:
    """The run's device, versions and settings, then the measured matmul rate (returned: the MFU denominator)."""
    device_name = (
        torch.cuda.get_device_name(setup.device)
        if setup.device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"
    )
    print(
        f"# bench/gpu.py {'--smoke ' if args.smoke else ''}on {device_name}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, K={setup.iterations} timed iterations per shape, "
        f"dtype {str(setup.dtype).replace('torch.', '')}{', channels_last' if setup.channels_last else ''}"
    )
    rate = matmul_rate(setup)
    shape = "bf16 8192^3" if setup.device.type == "cuda" else "fp32 256^3"
    print(f"# measured matmul rate: {rate / 1e12:.1f} TFLOP/s ({shape}) = the MFU denominator")
    return rate


def mode_seconds(
    setup: Setup, name: str, teacher: Teacher, model: torch.nn.Module, batch: int, mode: str
) -> tuple[dict[int, float], float]:
    """Seconds per iteration at each resolution (fewer when the budget skips one) and the warm-up total of a mode."""
    times, warm = {}, 0.0
    for r in setup.resolutions:
        if mode != "eager" and not setup.fits(f"{name} {mode} {r}px", 1.5 * max(setup.longest_compile, 60.0)):
            break
        times[r], w = iteration_seconds(setup, teacher, model, batch, r, mode)
        warm += w
        if mode != "eager":
            setup.longest_compile = max(setup.longest_compile, w)
    return times, warm


def synthesis_rows(
    setup: Setup, args: argparse.Namespace, name: str, teacher: Teacher, model: torch.nn.Module, batch: int, rate: float
) -> list[str]:
    """One teacher's synthesis table rows: each mode and schedule, then FLOPs and the floor per resolution."""
    rows = []
    flops = {r: count_flops(teacher, batch, r, setup.device) for r in setup.resolutions}
    floors = {r: floor_seconds(setup, model, batch, r, teacher.num_classes) for r in setup.resolutions}
    for mode in setup.modes:
        times, warm = mode_seconds(setup, name, teacher, model, batch, mode)
        if len(times) < len(setup.resolutions):
            continue
        for schedule, stages in SCHEDULES.items():
            per_batch = sum(iters * times[setup.resolutions[i]] for i, iters in stages)
            flops_batch = sum(iters * flops[setup.resolutions[i]][0] * batch for i, iters in stages)
            label = (
                schedule
                if not args.smoke
                else schedule.replace("112", str(setup.resolutions[0])).replace("224", str(setup.resolutions[1]))
            )
            rows.append(
                f"| {name} | {batch} | {label} | {mode} | "
                + " | ".join(f"{times[r] * 1e3:.1f} ({times[r] / floors[r]:.2f}x)" for r in setup.resolutions)
                + f" | {batch * 3600 / per_batch:,.0f} | {100 * flops_batch / per_batch / rate:.1f}% "
                f"| {warm:.0f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)  # partial results survive a kill
    for r in setup.resolutions:
        it, fwd = flops[r]
        rows.append(
            f"| {name} | | FLOPs/image at {r}px: forward {fwd / 1e9:.3f} G, iteration {it / 1e9:.3f} G "
            f"({it / max(fwd, 1):.2f}x forward); floor {floors[r] * 1e3:.1f} ms | | | | | | |"
        )
    return rows


def generator_rows(setup: Setup, name: str, teacher: Teacher, batch: int) -> list[str]:
    """One teacher's generator-engine rows: ms per generator step and per-unit cost at the final resolution, images
    per GPU-hour at each of GENERATOR_STEPS."""
    from synth.config import Schedule, SynthesisConfig
    from synth.generator.adapt import adapt_unit
    from synth.generator.network import build_generator

    resolution = setup.resolutions[-1]
    config = SynthesisConfig(teacher=name, engine="generator", schedule=Schedule(resolutions=setup.resolutions))
    network = build_generator(config.generator, teacher.num_classes, resolution, 3, 0).to(setup.device)
    labels = torch.arange(batch, device=setup.device) % teacher.num_classes

    def seconds(steps: int) -> float:
        start = setup.clock()
        adapt_unit(network, teacher, labels, config, steps, torch.Generator().manual_seed(0))
        return setup.clock() - start

    seconds(setup.warmup + 1)
    one, many = seconds(1), seconds(1 + setup.iterations)
    step = max(many - one, 1e-9) / setup.iterations
    unit = max(one - step, 0.0)
    rows = [
        f"| generator | {name} | {batch} | {steps} @ {resolution}px | {step * 1e3:.1f} | {unit * 1e3:.1f} | "
        f"{batch * 3600 / (steps * step + unit):,.0f} |"
        for steps in GENERATOR_STEPS
    ]
    print(*rows, sep="\n", file=sys.stderr, flush=True)
    return rows


def print_generator(rows: list[str]) -> None:
    """The generator engine's table."""
    print("\n## Generator engine (--engine generator; eager, bf16 autocast on CUDA)")
    print("| engine | teacher | batch | steps per unit | ms/step | ms per unit besides the steps | images/GPU-hour |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


def bench_teachers(
    setup: Setup, args: argparse.Namespace, rate: float, started: float
) -> tuple[list[str], list[str], bool, int]:
    """Every teacher's synthesis rows (its generator-engine rows in setup.generator_rows), then the numerics check
    on the first: (rows, lines, verdict, its batch)."""
    rows, check_lines, ok, check_batch = [], [], True, 0
    setup.generator_rows = []
    for name in setup.models:
        teacher = make_teacher(name, setup.device)
        model = teacher.model.to(memory_format=torch.channels_last) if setup.channels_last else teacher.model
        batch = args.batch or setup.batches.get(name, 8)
        rows += synthesis_rows(setup, args, name, teacher, model, batch, rate)
        setup.generator_rows += generator_rows(setup, name, teacher, batch)
        if not args.no_check and name == setup.models[0]:
            modes = [m for m in setup.modes if m == "eager" or setup.fits(f"numerics check {m}", 60.0)]
            check_lines, ok = numerics_check(setup, teacher, model, batch, modes)
            check_batch = batch
        print(f"# {name} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        del teacher, model
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, check_lines, ok, check_batch


def main(argv: Optional[list[str]] = None) -> int:
    """Run the bench; exit status 3 when the numerics check fails (not in --smoke)."""
    args = parse_args(argv)
    setup = build_setup(args)
    raise_compile_limits()
    started = time.perf_counter()
    rate = print_header(setup, args)
    rows, check_lines, ok, check_batch = bench_teachers(setup, args, rate, started)
    print_synthesis(setup, rows)
    print_generator(setup.generator_rows)
    if not args.no_student:
        print_student(setup, rate)
    if check_lines:
        print_numerics(setup, args.smoke, check_lines, ok, check_batch)
    for note in setup.notes:
        print(f"note: {note}")
    print(f"# total {time.perf_counter() - started:.0f} s")
    return 0 if ok or args.smoke else 3


if __name__ == "__main__":
    sys.exit(main())
