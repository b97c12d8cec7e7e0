"""Each synthesis loss against a hand computation on small tensors."""

import math

import pytest
import torch
import torch.nn as nn

from synth.inversion.terms import BNStatisticsLoss, bn_stat_distance, intra_divergence, l2_prior, triplet, tv_prior


def test_bn_distance_zero_when_batch_matches_running_stats():
    x = torch.randn(8, 3, 5, 5)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert bn_stat_distance(x, mean, var).item() == pytest.approx(0.0, abs=1e-6)


def test_bn_distance_hand_computed():
    x = torch.zeros(2, 2, 1, 1)
    x[1] = 2.0  # channel means 1, biased variances 1
    got = bn_stat_distance(x, torch.tensor([1.0, 4.0]), torch.tensor([1.0, 1.0]))
    assert got.item() == pytest.approx(3.0)  # ||(0, -3)|| + ||(0, 0)||


def test_bn_hooks_weight_first_layer():
    bn1, bn2 = nn.BatchNorm2d(1).eval(), nn.BatchNorm2d(1).eval()
    loss = BNStatisticsLoss([bn1, bn2], first_multiplier=10.0)
    x = torch.full((1, 1, 2, 2), 2.0)  # mean 2, var 0 vs running (0, 1): distance 2 + 1 = 3 at bn1
    bn2(bn1(x))
    expected = 10 * 3.0 + bn_stat_distance(bn1(x), torch.zeros(1), torch.ones(1)).item()
    assert loss.loss().item() == pytest.approx(expected, rel=1e-5)
    loss.remove()
    assert not bn1._forward_hooks


def test_tv_prior_hand_computed():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    # horizontal: two diffs of 1 -> sqrt(2); vertical: 0; diagonal (1,0)-(0,1): 0-1 -> 1; diagonal (0,0)-(1,1): 1
    assert tv_prior(x).item() == pytest.approx(math.sqrt(2) + 0 + 1 + 1)


def test_l2_prior_is_mean_image_norm():
    x = torch.zeros(2, 1, 1, 2)
    x[0, 0, 0] = torch.tensor([3.0, 4.0])
    assert l2_prior(x).item() == pytest.approx(2.5)


def _emb(*points):
    return torch.tensor(points, dtype=torch.float32)


def test_intra_divergence_picks_nearest_same_class_sample():
    # class 0: a at angle 0, b at 0.2 rad, c at 1.2 rad; class 1 far away. Nearest of a is b.
    e = _emb([1, 0], [math.cos(0.2), math.sin(0.2)], [math.cos(1.2), math.sin(1.2)], [-1, 0], [-1, 0.1])
    labels = torch.tensor([0, 0, 0, 1, 1])
    d = torch.cdist(e / e.norm(dim=1, keepdim=True), e / e.norm(dim=1, keepdim=True))
    nearest = torch.tensor([d[0, 1], d[1, 0], d[2, 1], d[3, 4], d[4, 3]])
    margin = 0.5
    expected = torch.relu(margin - nearest).mean()
    assert intra_divergence(e, labels, margin).item() == pytest.approx(expected.item(), rel=1e-5)
    assert intra_divergence(e, labels, form="unbounded").item() == pytest.approx(-nearest.mean().item(), rel=1e-5)


def test_intra_divergence_skips_anchors_without_positive_and_rejects_unknown_form():
    e = _emb([1, 0], [1, 0], [0, 1])
    labels = torch.tensor([0, 0, 1])
    assert intra_divergence(e, labels, margin=0.5).item() == pytest.approx(0.5, abs=1e-5)  # anchors 0, 1 at distance 0
    with pytest.raises(ValueError):
        intra_divergence(e, labels, form="other")


def test_triplet_zero_when_classes_separated_positive_otherwise():
    labels = torch.tensor([0, 0, 1, 1])
    separated = _emb([1, 0], [1, 0.01], [-1, 0], [-1, 0.01])
    assert triplet(separated, labels, margin=0.5).item() == pytest.approx(0.0)
    mixed = _emb([1, 0], [-1, 0], [1, 0.01], [-1, 0.01])
    assert triplet(mixed, labels, margin=0.5).item() > 1.0


def test_losses_are_differentiable():
    e = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    (intra_divergence(e, labels, margin=2.0) + triplet(e, labels)).backward()
    assert e.grad is not None and e.grad.abs().sum() > 0
