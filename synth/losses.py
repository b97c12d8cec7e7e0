"""DeepInversion and DF-DearKD synthesis losses as small pure functions (SPEC §2), plus the BN-statistics hooks."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def bn_stat_distance(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """||mu(x) - mu^||_2 + ||var(x) - var^||_2 over (N, H, W), biased variance, computed in fp32."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    return torch.linalg.vector_norm(mean - running_mean.float()) + torch.linalg.vector_norm(var - running_var.float())


class BNStatisticsLoss:
    """Forward hooks on every BN layer; after a teacher forward, `loss()` is sum_l w_l * bn_stat_distance(input_l)."""

    def __init__(self, bn_layers: list[nn.Module], first_multiplier: float = 10.0):
        self.first_multiplier = first_multiplier
        self._terms: list[Optional[torch.Tensor]] = [None] * len(bn_layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(bn_layers)]

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._terms[index] = bn_stat_distance(inputs[0], module.running_mean, module.running_var)
        return hook

    def loss(self) -> torch.Tensor:
        """Weighted sum over layers of the last forward's distances (first layer times the multiplier)."""
        terms = self._terms
        if any(t is None for t in terms):
            raise RuntimeError("BNStatisticsLoss.loss() called before a forward pass reached every BN layer")
        return self.first_multiplier * terms[0] + sum(terms[1:], torch.zeros_like(terms[0]))

    def remove(self) -> None:
        """Detach all hooks."""
        for handle in self._handles:
            handle.remove()


def tv_prior(x: torch.Tensor) -> torch.Tensor:
    """Sum over four neighbour directions (horizontal, vertical, both diagonals) of the Frobenius norm of differences."""
    return (
        torch.linalg.vector_norm(x[:, :, :, :-1] - x[:, :, :, 1:])
        + torch.linalg.vector_norm(x[:, :, :-1, :] - x[:, :, 1:, :])
        + torch.linalg.vector_norm(x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
        + torch.linalg.vector_norm(x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    )


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-image L2 norms."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Pairwise L2 distances of the L2-normalised embeddings (gradient-safe at zero)."""
    f = F.normalize(embeddings.float(), dim=1)
    sq = (f[:, None, :] - f[None, :, :]).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


def intra_divergence(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5,
                     form: str = "saturating") -> torch.Tensor:
    """L_ep: push each sample from its nearest same-class sample; `saturating` max(0, m - d) or `unbounded` -d."""
    positive, _ = _pair_masks(labels)
    d = _distances(embeddings)
    nearest = d.masked_fill(~positive, float("inf")).min(dim=1).values
    valid = positive.any(dim=1)
    if form == "saturating":
        per_anchor = F.relu(margin - nearest)
    elif form == "unbounded":
        per_anchor = -nearest
    else:
        raise ValueError(f"intra-divergence form must be 'saturating' or 'unbounded', not {form!r}")
    return _masked_mean(per_anchor, valid)


def triplet(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Batch-hard triplet: mean over anchors of max(0, d(a, hardest positive) - d(a, hardest negative) + margin)."""
    positive, negative = _pair_masks(labels)
    d = _distances(embeddings)
    hardest_positive = d.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_negative = d.masked_fill(~negative, float("inf")).min(dim=1).values
    valid = positive.any(dim=1) & negative.any(dim=1)
    return _masked_mean(F.relu(hardest_positive - hardest_negative + margin), valid)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over valid anchors; 0 (with gradient path) when none is valid. No host sync."""
    values = torch.where(valid, values, torch.zeros_like(values))
    return values.sum() / valid.sum().clamp_min(1)
