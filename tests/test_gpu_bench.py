"""bench/gpu.py --smoke: the GPU benchmark's code paths (bf16 autocast, FLOP counting, student step) run on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from synth.config import LossWeights
from synth.inversion.step import compiled_inversion_step, inversion_step
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import EmbeddingTap

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_prints_its_tables():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "## Synthesis" in out and "## Student training" in out and "## Numerics" in out
    rows = [line for line in out.splitlines() if line.startswith("| dfkd_cnn_tiny | 8 |")]
    assert len(rows) == 2  # both schedules, eager
    images_per_hour = float(rows[0].split("|")[7].replace(",", ""))
    assert images_per_hour > 0
    assert "(2.00x forward)" in out  # input-gradient backward counted as one more forward, no weight gradients
    check = [line for line in out.splitlines() if line.startswith("| DeepInversion terms |")]
    assert check and check[0].rstrip().endswith("PASS |")  # bf16 DeepInversion terms track fp32 on CPU too


def test_the_step_the_benchmark_times_is_public(random_teacher):
    """bench/gpu.py times `inversion_step` (eager) and `compiled_inversion_step(option)`: loss terms, a total to
    backpropagate to the image, and no compiled step without a compile option."""
    assert compiled_inversion_step(False) is None
    teacher = load_teacher(random_teacher)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    bn_loss, tap = BNStatisticsLoss(teacher.bn_layers), EmbeddingTap(teacher.embedding_module)
    try:
        terms = inversion_step(teacher.model, x, torch.tensor([0, 0, 1, 1]), bn_loss, tap, LossWeights(), None)
        terms["total"].backward()
    finally:
        bn_loss.remove()
        tap.remove()
    assert {"ce", "bn", "total"} <= set(terms) and x.grad is not None and torch.isfinite(x.grad).all()
