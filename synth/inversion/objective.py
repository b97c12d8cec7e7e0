"""The synthesis objective: one registered function per loss term, weighted by the `LossWeights` field of the same
name. Adding a term is one `@term` function here plus one weight field in synth.config.LossWeights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from synth.inversion.competitor import competition
from synth.inversion.terms import BNStatisticsLoss, intra_divergence, l2_prior, triplet, tv_prior


@dataclass
class IterationView:
    """What the loss terms of one iteration see: the teacher's logits and embedding on the augmented view, the
    view itself, the target labels, the BN hooks, the weights (for a term's own settings, such as margins) and the
    frozen student's logits when one competes."""

    logits: torch.Tensor
    embedding: torch.Tensor
    augmented: torch.Tensor
    labels: torch.Tensor
    bn_loss: BNStatisticsLoss
    weights: Any
    student_logits: Optional[torch.Tensor] = None


TermFunction = Callable[[IterationView], Optional[torch.Tensor]]
TERMS: dict[str, tuple[TermFunction, bool]] = {}  # name -> (function, computed even at weight 0); summed in this order


def term(name: str, always: bool = False) -> Callable[[TermFunction], TermFunction]:
    """Register a loss term under the name of its weight field; `always`: computed and logged even at weight 0.
    A term that returns None does not apply to this iteration."""

    def register(function: TermFunction) -> TermFunction:
        TERMS[name] = (function, always)
        return function

    return register


@term("ce", always=True)
def _cross_entropy(view: IterationView) -> torch.Tensor:
    return F.cross_entropy(view.logits, view.labels)


@term("bn", always=True)
def _bn_statistics(view: IterationView) -> torch.Tensor:
    return view.bn_loss.loss()


@term("tv")
def _total_variation(view: IterationView) -> torch.Tensor:
    return tv_prior(view.augmented)


@term("l2")
def _l2(view: IterationView) -> torch.Tensor:
    return l2_prior(view.augmented)


@term("ep")
def _intra_divergence(view: IterationView) -> torch.Tensor:
    return intra_divergence(view.embedding, view.labels, view.weights.ep_margin, view.weights.ep_form)


@term("triplet")
def _triplet(view: IterationView) -> torch.Tensor:
    return triplet(view.embedding, view.labels, view.weights.triplet_margin)


@term("adi")
def _competition(view: IterationView) -> Optional[torch.Tensor]:
    return competition(view.logits, view.student_logits) if view.student_logits is not None else None


def objective(view: IterationView) -> dict[str, torch.Tensor]:
    """Every applicable term (unweighted, detached) and their weighted sum "total" (to backpropagate); no host
    synchronisation."""
    terms = {}
    for name, (function, always) in TERMS.items():
        if always or getattr(view.weights, name):
            value = function(view)
            if value is not None:
                terms[name] = value
    terms["total"] = sum(getattr(view.weights, name) * value for name, value in terms.items())
    return {name: value.detach() if name != "total" else value for name, value in terms.items()}
