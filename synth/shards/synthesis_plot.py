"""The figure of `synthesis.png`: each work unit's teacher fidelity and its final loss, split into the weighted terms
that add up to the total (docs/method.md, "Synthesis objective"). Drawn by synth.shards.pictures from the unit log
and the manifest's config; matplotlib is imported only here, when a plot is drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TERM_NAMES = {  # the log's term names -> what they are (synth.inversion.objective)
    "ce": "cross-entropy",
    "bn": "BN statistics",
    "tv": "total variation",
    "l2": "L2 prior",
    "ep": "intra-divergence",
    "triplet": "triplet",
    "adi": "competition (ADI)",
}
TOLERANCE = 1e-3  # weighted terms must add up to the logged total within this share of it


def weighted_terms(records: list[dict], weights: dict) -> Optional[dict[str, np.ndarray]]:
    """Each logged term times its weight, per unit; None when the weights are unknown or the products do not add up
    to the logged totals (then the plot shows the raw terms)."""
    names = [name for name in records[0]["losses"] if name != "total"]
    if not names or any(not isinstance(weights.get(name), (int, float)) for name in names):
        return None
    terms = {name: np.array([weights[name] * r["losses"].get(name, np.nan) for r in records]) for name in names}
    total = np.array([r["losses"]["total"] for r in records])
    summed = np.sum(list(terms.values()), axis=0)
    if not np.allclose(summed, total, rtol=TOLERANCE, atol=TOLERANCE * np.nanmax(np.abs(total))):
        return None
    return {name: values for name, values in terms.items() if np.nanmax(np.abs(values)) > 0}


def draw_synthesis(records: list[dict], config: dict, title: str) -> Figure:
    """Teacher fidelity per unit beside the stacked weighted loss terms per unit (their top is the total)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.8), dpi=80, layout="constrained")
    fidelity, losses = figure.subplots(1, 2, width_ratios=(1, 1.5))
    units = np.array([r["unit"] for r in records])
    fidelity.plot(units, [r["fidelity"] for r in records], "o-", markersize=3)
    fidelity.set(
        title="teacher fidelity per unit", ylabel="share of the unit's images\nthe teacher reads as their class"
    )
    fidelity.set_ylim(-0.05, 1.05)
    terms = weighted_terms(records, config.get("losses") or {})
    if terms is None:
        _raw_terms(losses, units, records)
    else:
        _stacked_terms(losses, units, terms, [r["losses"]["total"] for r in records], config.get("losses") or {})
    batch = config.get("classes_per_batch"), config.get("images_per_class")
    what = f"{batch[0]} classes x {batch[1]} images" if all(batch) else "images"
    for ax in (fidelity, losses):
        ax.set_xlabel("work unit")
        integer_axis(ax, units)
    figure.suptitle(title)
    figure.supxlabel(f"a work unit is one batch of {what}, optimised together", fontsize="small")
    return figure


def _stacked_terms(ax: Axes, units: np.ndarray, terms: dict[str, np.ndarray], total: list[float], weights: dict):
    """Weighted terms as stacked bars (positive up, negative down) and the total as a line on top."""
    width = 0.8 if len(units) <= 30 else 1.0
    up, down = np.zeros(len(units)), np.zeros(len(units))
    mean_total = float(np.mean(np.abs(total))) or 1.0
    for name, values in terms.items():
        values = np.nan_to_num(values)
        share = float(np.mean(values)) / mean_total
        label = f"{TERM_NAMES.get(name, name)} x {weights[name]:g} ({percent(share)})"
        ax.bar(units, values, width, bottom=np.where(values >= 0, up, down), linewidth=0, label=label)
        up, down = np.where(values >= 0, up + values, up), np.where(values < 0, down + values, down)
    ax.plot(units, total, "k.-", linewidth=1, markersize=4, label="total (the sum; % = mean share)")
    ax.set(title="final loss per unit: weight x term, stacked to the total", ylabel="weighted loss (last iteration)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _raw_terms(ax: Axes, units: np.ndarray, records: list[dict]) -> None:
    """The logged terms unweighted (the weights are unknown), log scale."""
    for name in records[0]["losses"]:
        values = [r["losses"].get(name, np.nan) for r in records]
        if np.nanmax(values) > 0:
            label = "total (weighted sum)" if name == "total" else f"{TERM_NAMES.get(name, name)} (unweighted)"
            ax.plot(units, values, label=label, linewidth=2 if name == "total" else 1)
    ax.set(title="final loss terms per unit (weights unknown)", yscale="log", ylabel="loss (last iteration)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def integer_axis(ax: Axes, values: np.ndarray | list) -> None:
    """Whole-number ticks over `values` with half a step of margin, few enough never to run together."""
    from matplotlib.ticker import MaxNLocator

    low, high = min(values), max(values)
    ax.set_xlim(low - 0.5, high + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(8, high - low + 1), integer=True, min_n_ticks=1))


def percent(share: float) -> str:
    """A share as a whole percentage, "<1%" for a small positive one."""
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"
