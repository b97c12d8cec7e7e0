"""The BN-statistics term's two forms, and the low-fidelity guard rail."""

import pytest
import torch
import torch.nn as nn

from synth.common.runtime import Progress
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.terms import BNStatisticsLoss
from synth.run.engine import synthesize

torch.set_num_threads(1)


def _net(scale: float = 1.0) -> nn.Sequential:
    """conv -> BN -> ReLU -> conv -> BN with fixed running statistics; `scale` multiplies the second conv's output
    and, consistently, the second BN's running statistics (mean x scale, variance x scale^2)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5)).eval()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        net[3].weight *= scale
        net[3].bias *= scale
        net[4].running_mean *= scale
        net[4].running_var *= scale**2
    return net


def _bn_loss(net: nn.Sequential, layers: list, norm: str, first: float = 10.0) -> float:
    loss = BNStatisticsLoss(layers, first, norm)
    net(torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1)))
    value = float(loss.loss())
    loss.remove()
    return value


def test_normalized_term_is_invariant_to_rescaling_a_layers_statistics():
    plain, scaled = _net(), _net(scale=1000.0)
    normalized = [_bn_loss(n, [n[1], n[4]], "normalized") for n in (plain, scaled)]
    assert normalized[1] == pytest.approx(normalized[0], rel=1e-4)
    paper = [_bn_loss(n, [n[1], n[4]], "paper") for n in (plain, scaled)]
    assert paper[1] > 100 * paper[0]  # the paper form grows with the layer's scale


def test_normalized_term_is_invariant_to_duplicating_bn_layers():
    net = _net()
    once = _bn_loss(net, [net[1], net[4]], "normalized", first=1.0)
    twice = _bn_loss(net, [net[1], net[1], net[4], net[4]], "normalized", first=1.0)
    assert twice == pytest.approx(once, rel=1e-6)
    paper_once, paper_twice = (
        _bn_loss(net, layers, "paper", first=1.0) for layers in ([net[1], net[4]], [net[1], net[1], net[4], net[4]])
    )
    assert paper_twice == pytest.approx(2 * paper_once, rel=1e-6)  # the paper form grows with depth


def test_paper_form_is_deepinversions_weighted_sum():
    net = _net()
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    inputs = [net[:1](x), net[:4](x)]
    expected = 0.0
    for weight, bn, h in zip((10.0, 1.0), (net[1], net[4]), inputs):
        var, mean = torch.var_mean(h, dim=(0, 2, 3), correction=0)
        expected += weight * float(
            torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
        )
    assert _bn_loss(net, [net[1], net[4]], "paper") == pytest.approx(expected, rel=1e-5)


def _tiny(teacher, **losses) -> SynthesisConfig:
    return SynthesisConfig(
        teacher=teacher,
        classes="all",
        per_class=2,
        classes_per_batch=10,
        images_per_class=2,
        threads=1,
        device="cpu",
        schedule=Schedule(resolutions=(16, 32), iterations=(30, 30)),
        losses=LossWeights(**{"bn_norm": "paper", "bn": 1.0, "ep": 0.0, "triplet": 0.0, **losses}),
    )


def test_low_fidelity_warning_fires_on_a_misweighted_run_and_not_on_a_healthy_one(digits_teacher, tmp_path):
    notes = []
    progress = Progress(message=notes.append)
    healthy = synthesize(_tiny(digits_teacher), tmp_path / "ok", progress)
    assert healthy["fidelity"] >= 0.8 and not healthy["low_fidelity"]
    assert not any("low fidelity" in n for n in notes)
    swamped = synthesize(_tiny(digits_teacher, ce=1.0, bn=1000.0), tmp_path / "bad", progress)
    assert swamped["low_fidelity"] and swamped["fidelity"] < 0.5
    assert sum("low fidelity" in n for n in notes) == 1
    assert "swamps the class term" in next(n for n in notes if "low fidelity" in n)
