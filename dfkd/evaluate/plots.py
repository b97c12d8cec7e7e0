"""Plots of a distillation run (`curves.png` beside `metrics.jsonl`) and accuracy bars, drawn by matplotlib headless
(Agg; imported only when a plot is drawn) and written as synth.shards.pictures writes PNGs: only when the bytes change, and
never over a picture dfkd did not write."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from synth.common.errors import UserError
from synth.shards.pictures import figure_png, write_png
from synth.shards.synthesis_plot import integer_axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVES = "curves.png"
METRICS = "metrics.jsonl"
TERMS = ("loss", "cls", "dist", "hid")  # the total and its terms, as train_one_epoch records them
TOLERANCE = 1e-3  # the weighted terms add up to the recorded total within this share of the largest total
DRAW_SHARE = 20  # during a run, redraw only after 20x the last draw's time: plotting stays under ~5 % of the run


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The epoch records of RUN_DIR/metrics.jsonl (the last record of each epoch, in order)."""
    path = Path(run_dir) / METRICS
    records = {}
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["epoch"]] = record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}); expected a dfkd distill metrics.jsonl") from None
    return [records[epoch] for epoch in sorted(records)]


def loss_terms(records: list[dict]) -> Optional[dict[str, list[float]]]:
    """The weighted terms that add up to each epoch's total loss: cls and dist (head weights 1) and hid times a_hid,
    read off the records (total - cls - dist = a_hid x hid); None when the records do not fit that (other head
    weights), and the plot shows the raw terms."""
    cls, dist, hid = ([r.get(name, 0.0) for r in records] for name in TERMS[1:])
    rest = [r["loss"] - c - d for r, c, d in zip(records, cls, dist)]
    ratios = sorted(x / h for x, h in zip(rest, hid) if h > 0)
    a_hid = float(f"{ratios[len(ratios) // 2]:.3g}") if ratios else 0.0
    scale = max(abs(r["loss"]) for r in records) or 1.0
    if any(abs(x - a_hid * h) > TOLERANCE * scale for x, h in zip(rest, hid)):
        return None
    terms = {"cls: class head": cls, "dist: distillation head": dist}
    if a_hid and any(hid):
        terms[f"hid x {a_hid:g}: hidden-layer MSE"] = [a_hid * h for h in hid]
    return {label: values for label, values in terms.items() if any(values)}


def draw_curves(records: list[dict], title: str) -> bytes:
    """`curves_figure` as PNG bytes."""
    return figure_png(curves_figure(records, title))


def curves_figure(records: list[dict], title: str) -> Figure:
    """Training loss as weighted terms stacked to the total, learning rate and (when measured) real-data top-1 per
    epoch on an axis fitted to it, the stage boundary marked."""
    from matplotlib.figure import Figure

    validated = [r for r in records if r.get("val_top1") is not None]
    figure = Figure(figsize=(14 if validated else 10, 3.8), dpi=80, layout="constrained")
    axes = figure.subplots(1, 3 if validated else 2, width_ratios=(1.6, 1, 1) if validated else (1.6, 1))
    epochs = [r["epoch"] for r in records]
    _loss_panel(axes[0], records, epochs)
    axes[1].plot(epochs, [r["lr"] for r in records], "o-", markersize=2)
    axes[1].set(title="learning rate", ylabel="at the epoch's end")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if validated:
        _accuracy_panel(axes[2], validated, records)
    boundary = next((r["epoch"] for r in records if r.get("stage") == 2), None)
    for ax in axes:
        ax.set_xlabel("epoch")
        integer_axis(ax, epochs)
        if boundary is not None:
            ax.axvline(boundary - 0.5, color="gray", linestyle="--", linewidth=1)
            ax.text(boundary - 0.5, 1, " stage 2", transform=ax.get_xaxis_transform(), va="top", fontsize="small")
    figure.suptitle(title)
    return figure


def _loss_panel(ax: Axes, records: list[dict], epochs: list[int]) -> None:
    """The weighted terms as stacked bars with the total on top (the raw terms as lines when the weights do not
    show), the legend beside the axes."""
    total = [r["loss"] for r in records]
    terms = loss_terms(records)
    if terms is None:
        for term in TERMS[1:]:
            ax.plot(epochs, [r.get(term, 0.0) for r in records], "o-", markersize=2, linewidth=1, label=term)
        ax.plot(epochs, total, "k.-", linewidth=2, label="total (weighted sum)")
        ax.set(title="training loss by term (unweighted)")
    else:
        width, bottom = (0.8 if len(epochs) <= 30 else 1.0), [0.0] * len(epochs)
        for label, values in terms.items():
            ax.bar(epochs, values, width, bottom=bottom, linewidth=0, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.plot(epochs, total, "k.-", linewidth=1, markersize=3, label="total (the sum)")
        ax.set(title="training loss: weighted terms stacked to the total")
    ax.set_ylabel("loss per image\n(KL or CE in nats; hid: MSE)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _accuracy_panel(ax: Axes, validated: list[dict], records: list[dict]) -> None:
    """Real-data top-1 at the validation epochs, each point labelled (left of a point on the axis' right edge), on
    an axis fitted to the values."""
    epochs, top1 = [r["epoch"] for r in validated], [r["val_top1"] for r in validated]
    ax.plot(epochs, top1, "o-", markersize=4)
    for epoch, value in zip(epochs, top1):
        right = epoch == records[-1]["epoch"] and len(records) > 1
        ax.annotate(
            f"{value:.3f}",
            (epoch, value),
            textcoords="offset points",
            xytext=(-4 if right else 0, 6),
            ha="right" if right else "center",
            fontsize=8,
        )
    ax.set_ylim(*accuracy_limits(top1))
    ax.set(title="real-data top-1 (--val-data)", ylabel="top-1 (axis fitted to the values)")


def accuracy_limits(values: list[float]) -> tuple[float, float]:
    """Y limits around accuracies in [0, 1]: their range and a margin, at least 0.02 tall, inside [0, 1], and above
    that a tenth of the height for the values' labels."""
    low, high = min(values), max(values)
    pad = max(0.15 * (high - low), 0.01)
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    if high - low < 0.02:
        low, high = (high - 0.02, high) if high >= 1.0 else (low, low + 0.02)
    return low, high + 0.1 * (high - low)


def write_curves(run_dir: str | Path, message: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """Redraw RUN_DIR/curves.png from its metrics.jsonl; its path, or None when no epoch is recorded yet."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return None
    title = f"distillation {run_dir.resolve().name}: {len(records)} epoch{'s' if len(records) != 1 else ''}"
    write_png(run_dir / CURVES, draw_curves(records, title), message)
    return run_dir / CURVES


class CurvesDuringRun:
    """Redraws curves.png while a run trains: always when asked for the last time, otherwise only once training has
    taken DRAW_SHARE times the last draw's time since it ended."""

    def __init__(self, run_dir: str | Path, message: Optional[Callable[[str], None]] = None):
        self.run_dir, self.message, self.next_draw = Path(run_dir), message, 0.0

    def draw(self, final: bool = False) -> None:
        """Redraw unless the last draw was too recent (and this is not the last)."""
        started = time.monotonic()
        if final or started >= self.next_draw:
            write_curves(self.run_dir, self.message)
            ended = time.monotonic()
            self.next_draw = ended + DRAW_SHARE * (ended - started)


def draw_bars(values: dict[str, float], title: str) -> bytes:
    """Horizontal bars of accuracies in [0, 1], each labelled with its value: PNG bytes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 0.5 + 0.45 * len(values)), dpi=80)
    ax = figure.subplots()
    names = list(values)[::-1]
    bars = ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.bar_label(bars, labels=[f"{values[n]:.4f}" for n in names], padding=3)
    ax.set(xlim=(0, 1.15), title=title)
    figure.tight_layout()
    return figure_png(figure)
