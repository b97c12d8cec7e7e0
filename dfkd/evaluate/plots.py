"""Plots of a distillation run (`curves.png` beside `metrics.jsonl`) and accuracy bars, drawn by matplotlib headless
(Agg; imported only when a plot is drawn) and written as synth.shards.pictures writes PNGs: only when the bytes change, and
never over a picture dfkd did not write."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from synth.common.errors import UserError
from synth.shards.pictures import figure_png, write_png

CURVES = "curves.png"
METRICS = "metrics.jsonl"
TERMS = ("loss", "cls", "dist", "hid")  # the total and its terms, as train_one_epoch records them
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


def draw_curves(records: list[dict], title: str) -> bytes:
    """Training loss by term, learning rate and (when measured) real-data top-1 per epoch, the stage boundary
    marked: PNG bytes."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    validated = [r for r in records if r.get("val_top1") is not None]
    figure = Figure(figsize=(12 if validated else 8, 3.4), dpi=80)
    axes = figure.subplots(1, 3 if validated else 2)
    epochs = [r["epoch"] for r in records]
    for term in TERMS:
        values = [r.get(term, 0.0) for r in records]
        if any(values):
            axes[0].plot(epochs, values, "o-", markersize=2, label=term, linewidth=2 if term == "loss" else 1)
    axes[0].set(title="training loss by term", xlabel="epoch")
    axes[0].legend(fontsize="small")
    axes[1].plot(epochs, [r["lr"] for r in records], "o-", markersize=2)
    axes[1].set(title="learning rate", xlabel="epoch")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if validated:
        axes[2].plot([r["epoch"] for r in validated], [r["val_top1"] for r in validated], "o-", markersize=4)
        axes[2].set(title="real-data top-1 (--val-data)", xlabel="epoch", ylim=(-0.02, 1.02))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    boundary = next((r["epoch"] for r in records if r.get("stage") == 2), None)
    for ax in axes if boundary is not None else ():
        ax.axvline(boundary - 0.5, color="gray", linestyle="--", linewidth=1)
        ax.text(boundary - 0.5, 1, " stage 2", transform=ax.get_xaxis_transform(), va="top", fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return figure_png(figure)


def write_curves(run_dir: str | Path, message: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """Redraw RUN_DIR/curves.png from its metrics.jsonl; its path, or None when no epoch is recorded yet."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return None
    title = f"distillation {run_dir.resolve().name}: {len(records)} epochs"
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
