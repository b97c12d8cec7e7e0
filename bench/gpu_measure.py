"""The measurements of bench/gpu.py (run that script, not this module): matmul rate, FLOP counting, inversion
iteration and floor timing and student training throughput (the numerics check is in bench/gpu_numerics.py)."""

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
from synth.inversion.invert import InversionResult, invert_batch
from synth.inversion.step import inversion_step
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import EmbeddingTap, Teacher


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


def batch_labels(batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Batch = classes x 4 images each (at least two classes, two images per class: the triplet's needs)."""
    per_class = 4 if batch >= 8 else 2
    return (torch.arange(batch // per_class) % num_classes).repeat_interleave(per_class).to(device)


def count_flops(teacher: Teacher, batch: int, resolution: int, device: torch.device) -> tuple[float, float]:
    """(FLOPs of one inversion iteration per image, forward FLOPs per image), counted on an eager fp32 step."""
    from torch.utils.flop_counter import FlopCounterMode

    n = 8
    labels = batch_labels(n, teacher.num_classes, device)
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


def invert(
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
) -> InversionResult:
    """`invert_batch` on one batch at one resolution in a bench mode, with the bench's autocast dtype and
    channels_last unless `autocast` is False (the fp32 reference)."""
    labels = batch_labels(batch, teacher.num_classes, setup.device)
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
    invert(setup, teacher, model, batch, resolution, setup.warmup + 1, mode)
    warm = setup.clock() - start
    start = setup.clock()
    invert(setup, teacher, model, batch, resolution, 1, mode)
    one = setup.clock() - start
    start = setup.clock()
    invert(setup, teacher, model, batch, resolution, 1 + setup.iterations, mode)
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
