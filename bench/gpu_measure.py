"""The measurements of bench/gpu.py (run that script, not this module): matmul rate, FLOP counting, inversion
iteration and floor timing, the bf16-vs-fp32 numerics check and student training throughput."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import timm
import torch
import torch.nn.functional as F

import synth  # noqa: F401  (registers the small teacher CNNs with timm)
from synth.config import LossWeights, Schedule
from synth.inversion import invert_batch
from synth.losses import BNStatisticsLoss
from synth.step import compiled_inversion_step, inversion_step
from synth.teacher import EmbeddingTap, Teacher
from synth.teacher_sources import load_teacher

# (row, weights, tolerances: worst loss-term relative error, image-gradient cosine, final-loss relative error after
# 10 iterations, mean absolute pixel difference in [0, 1] after 10 iterations). The intra-divergence and triplet
# terms work on distances between nearly identical embeddings, where bf16's 8-bit mantissa costs the most, hence
# the looser second row.
CHECKS = (
    ("DeepInversion terms", LossWeights(ep=0.0, triplet=0.0), (5e-2, 0.99, 0.05, 0.02)),
    ("all DF-DearKD terms", LossWeights(), (5e-2, 0.98, 0.10, 0.05)),
)


@dataclass
class Setup:
    """Device, dtypes and sizes of one bench run."""

    device: torch.device
    dtype: Optional[torch.dtype]
    channels_last: bool
    resolutions: tuple[int, int]
    models: list[str]
    batches: dict[str, int]
    iterations: int
    warmup: int
    modes: list[str]
    student: str
    student_teacher: str
    student_batch: int
    student_resolution: int
    student_steps: int
    deadline: float
    notes: list[str] = field(default_factory=list)
    longest_compile: float = 0.0

    def sync(self) -> None:
        """Wait for the device (host clocks then measure device work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clock(self) -> float:
        """Synchronised wall clock."""
        self.sync()
        return time.perf_counter()

    def fits(self, what: str, needs: float) -> bool:
        """Whether `needs` seconds remain before the deadline; note it when not."""
        left = self.deadline - time.perf_counter()
        if left < needs:
            self.notes.append(f"skipped {what}: {left:.0f} s of the time budget left, about {needs:.0f} s needed")
            return False
        return True


def compile_option(mode: str) -> bool | str:
    """invert_batch's `compile` value for a bench mode."""
    return {"eager": False, "compiled": True, "cudagraphs": "reduce-overhead"}[mode]


def make_teacher(name: str, device: torch.device, num_classes: Optional[int] = None) -> Teacher:
    """A timm model with random weights, saved to a temp file and loaded the way users load teachers."""
    torch.manual_seed(0)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(name, pretrained=False, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pth")
        torch.save(model.state_dict(), path)
        teacher = load_teacher(f"timm:{name}", path, device=device)
    return teacher


def matmul_rate(setup: Setup) -> float:
    """FLOP/s of a large square matrix multiply in the bench dtype (bf16 on GPU, fp32 on CPU)."""
    n = 8192 if setup.device.type == "cuda" else 256
    dtype = setup.dtype if setup.device.type == "cuda" and setup.dtype else torch.float32
    a = torch.randn(n, n, device=setup.device, dtype=dtype)
    b = torch.randn(n, n, device=setup.device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if setup.device.type == "cuda" else 5
    start = setup.clock()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (setup.clock() - start)


def _labels(batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Batch = classes x 4 images each (at least two classes, two images per class: the triplet's needs)."""
    per_class = 4 if batch >= 8 else 2
    return (torch.arange(batch // per_class) % num_classes).repeat_interleave(per_class).to(device)


def count_flops(teacher: Teacher, batch: int, resolution: int, device: torch.device) -> tuple[float, float]:
    """(FLOPs of one inversion iteration per image, forward FLOPs per image), counted on an eager fp32 step."""
    from torch.utils.flop_counter import FlopCounterMode

    n = 8
    labels = _labels(n, teacher.num_classes, device)
    x = torch.randn(n, 3, resolution, resolution, device=device, requires_grad=True)
    bn_loss, tap = BNStatisticsLoss(teacher.bn_layers), EmbeddingTap(teacher.classifier)
    try:
        with FlopCounterMode(display=False) as counter:
            terms = inversion_step(teacher.model, x, labels, bn_loss, tap, LossWeights(), None)
            terms["total"].backward()
        iteration = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            teacher.model(x)
        forward = counter.get_total_flops()
    finally:
        bn_loss.remove()
        tap.remove()
    return iteration / n, forward / n


def _invert(
    setup: Setup,
    teacher: Teacher,
    model: torch.nn.Module,
    batch: int,
    resolution: int,
    iterations: int,
    mode: str,
    seed: int = 0,
    autocast: bool = True,
    weights: Optional[LossWeights] = None,
):
    labels = _labels(batch, teacher.num_classes, setup.device)
    schedule = Schedule(resolutions=(resolution,), iterations=(iterations,))
    return invert_batch(
        teacher,
        labels,
        weights or LossWeights(),
        schedule,
        torch.Generator().manual_seed(seed),
        channels_last=setup.channels_last and autocast,
        autocast_dtype=setup.dtype if autocast else None,
        model=model,
        compile=compile_option(mode),
    )


def iteration_seconds(
    setup: Setup, teacher: Teacher, model: torch.nn.Module, batch: int, resolution: int, mode: str
) -> tuple[float, float]:
    """(seconds per inversion iteration, warm-up seconds incl. compilation) for one mode and shape."""
    start = setup.clock()
    _invert(setup, teacher, model, batch, resolution, setup.warmup + 1, mode)
    warm = setup.clock() - start
    start = setup.clock()
    _invert(setup, teacher, model, batch, resolution, 1, mode)
    one = setup.clock() - start
    start = setup.clock()
    _invert(setup, teacher, model, batch, resolution, 1 + setup.iterations, mode)
    many = setup.clock() - start
    return max(many - one, 1e-9) / setup.iterations, warm


def floor_seconds(setup: Setup, model: torch.nn.Module, batch: int, resolution: int, num_classes: int) -> float:
    """Seconds per teacher forward + backward to the input (bf16, channels_last as the inversion): the floor."""
    x = torch.randn(batch, 3, resolution, resolution, device=setup.device, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), device=setup.device)

    def once() -> None:
        x.grad = None
        inp = x.contiguous(memory_format=torch.channels_last) if setup.channels_last else x
        with _autocast(setup):
            logits = model(inp)
        F.cross_entropy(logits.float(), labels).backward()

    for _ in range(setup.warmup):
        once()
    start = setup.clock()
    for _ in range(setup.iterations):
        once()
    return (setup.clock() - start) / setup.iterations


def _autocast(setup: Setup):
    if setup.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=setup.device.type, dtype=setup.dtype)


@contextlib.contextmanager
def _true_fp32():
    """TF32 off while the fp32 reference runs (the bench allows it elsewhere)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def numerics_check(
    setup: Setup, teacher: Teacher, model: torch.nn.Module, batch: int, modes: list[str]
) -> tuple[list[str], bool]:
    """bf16 (+channels_last, +compile) step and short inversion against fp32 eager; table lines and the verdict."""
    resolution = setup.resolutions[0]
    labels = _labels(batch, teacher.num_classes, setup.device)
    x = torch.randn(batch, 3, resolution, resolution, device=setup.device)

    def step(mode: str, low_precision: bool, weights: LossWeights) -> tuple[dict[str, float], torch.Tensor]:
        inp = x.clone().requires_grad_(True)
        aug = inp.contiguous(memory_format=torch.channels_last) if low_precision and setup.channels_last else inp * 1
        bn_loss, tap = BNStatisticsLoss(teacher.bn_layers, weights.bn_first), EmbeddingTap(teacher.classifier)
        try:
            fn = compiled_inversion_step(compile_option(mode)) or inversion_step
            terms = fn(model, aug, labels, bn_loss, tap, weights, setup.dtype if low_precision else None)
            terms["total"].backward()
        finally:
            bn_loss.remove()
            tap.remove()
        return {k: float(v.detach()) for k, v in terms.items()}, inp.grad.detach().float()

    ok, lines = True, []
    for label, weights, tol in CHECKS:
        if label != "all DF-DearKD terms" and setup.device.type == "cuda":
            modes_here = ["eager"]  # other weights would compile new graphs: eager only for this row
        else:
            modes_here = modes
        with _true_fp32():
            ref_terms, ref_grad = step("eager", False, weights)
            ref_run = _invert(
                setup, teacher, model, batch, resolution, 10, "eager", seed=1, autocast=False, weights=weights
            )
        for mode in modes_here:
            terms, grad = step(mode, True, weights)
            worst = max(abs(terms[k] - ref_terms[k]) / max(abs(ref_terms[k]), 1e-3) for k in ref_terms)
            cosine = float(F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0))
            run = _invert(setup, teacher, model, batch, resolution, 10, mode, seed=1, weights=weights)
            loss_rel = abs(run.losses["total"] - ref_run.losses["total"]) / max(abs(ref_run.losses["total"]), 1e-6)
            pixel = float((run.images.float() - ref_run.images.float()).abs().mean() / 255)
            values = (worst, cosine, loss_rel, pixel)
            passed = values[0] <= tol[0] and values[1] >= tol[1] and values[2] <= tol[2] and values[3] <= tol[3]
            ok &= passed
            path = str(setup.dtype).replace("torch.", "") + ("+channels_last" if setup.channels_last else "")
            lines.append(
                f"| {label} | {path} {mode} | {worst:.1e} (<= {tol[0]}) | {cosine:.4f} (>= {tol[1]}) | "
                f"{loss_rel:.1e} (<= {tol[2]}) | {pixel:.4f} (<= {tol[3]}) | {'PASS' if passed else 'FAIL'} |"
            )
    return lines, ok


def student_images_per_second(setup: Setup, compiled: bool) -> tuple[float, float]:
    """(training images/s, model FLOPs per image) of DearKD-Ti with a no-grad CNN teacher, AdamW, CE on both heads."""
    from torch.utils.flop_counter import FlopCounterMode

    import dfkd.models  # noqa: F401  (registers the DearKD students with timm)

    cuda = setup.device.type == "cuda"
    res, batch = setup.student_resolution, setup.student_batch
    num_classes = 10 if res <= 64 else 1000
    torch.manual_seed(0)
    student = timm.create_model(setup.student, num_classes=num_classes).to(setup.device).train()
    student.set_distilled_training(True)
    teacher = timm.create_model(setup.student_teacher, num_classes=num_classes).to(setup.device).eval()
    teacher.requires_grad_(False)
    if setup.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=0.05, fused=cuda or None)
    forward = torch.compile(student) if compiled else student
    images = torch.randn(batch, 3, res, res, device=setup.device)
    labels = torch.randint(0, num_classes, (batch,), device=setup.device)

    def step() -> None:
        with torch.no_grad(), _autocast(setup):
            target = teacher(images.contiguous(memory_format=torch.channels_last) if setup.channels_last else images)
        with _autocast(setup):
            cls, dist = forward(images)
        loss = F.cross_entropy(cls.float(), labels) + F.cross_entropy(dist.float(), target.float().argmax(1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(setup.warmup + 1):
        step()
    start = setup.clock()
    for _ in range(setup.student_steps):
        step()
    seconds = setup.clock() - start
    flops = 0.0
    if not compiled:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops() / batch
    return batch * setup.student_steps / seconds, flops
