"""bench/teacher_probe.py: BN layers switched to batch statistics and back, and the probe's table on a real teacher."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from synth.teachers.sources import load_teacher

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("teacher_probe", ROOT / "bench" / "teacher_probe.py")
teacher_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(teacher_probe)


def test_batch_statistics_normalise_with_the_batch_and_leave_the_running_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.eval()
    teacher = SimpleNamespace(bn_layers=[bn])
    running, tracked = (bn.running_mean.clone(), bn.running_var.clone()), int(bn.num_batches_tracked)
    x = torch.randn(16, 4, 8, 8) * 5 + 3  # far from the running statistics
    with torch.no_grad():
        with teacher_probe.batch_statistics(teacher):
            inside = bn(x)
        outside = bn(x)
    standardised = (inside - bn.bias.view(1, -1, 1, 1)) / bn.weight.view(1, -1, 1, 1)
    assert standardised.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # normalised by the batch's own statistics
    assert (standardised.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    assert not torch.allclose(inside, outside)  # and by the running ones again afterwards
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert int(bn.num_batches_tracked) == tracked and not bn.training and bn.track_running_stats


def test_batch_statistics_restore_the_layers_after_an_error(random_teacher):
    teacher = load_teacher(random_teacher)
    with pytest.raises(RuntimeError):
        with teacher_probe.batch_statistics(teacher):
            raise RuntimeError("boom")
    assert all(not layer.training and layer.track_running_stats for layer in teacher.bn_layers)


def test_probe_prints_one_row_of_measurements_per_teacher(digits_teacher):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "teacher_probe.py"), digits_teacher, digits_teacher],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(f"| {Path(digits_teacher).stem} |")]
    assert len(rows) == 2 and rows[0] == rows[1]  # fixed seeds: the same teacher measures the same
    values = [float(cell) for cell in rows[0].strip("|").split("|")[1:]]
    assert len(values) == 6 and all(math.isfinite(v) and v >= 0 for v in values)
    assert 0 < values[3] <= 2  # a distance between unit vectors
