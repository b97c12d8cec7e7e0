"""The student file, written and read here for every caller: `student.pth` (a plain state_dict, loadable with
`timm.create_model(name, num_classes=N, checkpoint_path=...)`) and `student.json` beside it (the timm model, its
classes, input size, mean/std and the keyword arguments that rebuild it). `dfkd distill` writes it; `dfkd evaluate
accuracy`, the demo and Adaptive DeepInversion's competitor read it.

The student's architecture must be registered with timm before it is read: the DearKD students register on
`import dfkd.models`, the small BN CNNs on `import synth.teachers.small_cnn` (this foundation module imports no
other room, so its callers do)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line

STUDENT_KEYS = ("model", "num_classes", "input_size", "mean", "std")  # what every student.json holds


@dataclass
class Classifier:
    """A model in eval mode with the input size and normalisation it expects."""

    model: torch.nn.Module
    num_classes: int
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]


def save_student(weights: str | Path, model: nn.Module, info: dict[str, Any]) -> None:
    """`weights` (the state_dict on the CPU) and its description `info` beside it (the same name, `.json`), each
    written to a `.tmp` file first and renamed, so a reader never sees half a file."""
    weights = Path(weights)
    tmp = weights.with_name(weights.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    meta = weights.with_suffix(".json")
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, meta)


def read_student_json(weights: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, content) of the description of the student weights `weights`: `<name>.json` beside them, else
    `student.json` in their folder; it must hold STUDENT_KEYS."""
    path = Path(weights)
    meta_path = next((p for p in (path.with_suffix(".json"), path.parent / "student.json") if p.is_file()), None)
    if meta_path is None:
        raise UserError(
            f"no {path.stem}.json or student.json next to '{path}' (written by dfkd distill: {', '.join(STUDENT_KEYS)})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or any(key not in meta for key in STUDENT_KEYS):
        raise UserError(f"'{meta_path}' is not a student description (needs {', '.join(STUDENT_KEYS)})")
    return meta_path, meta


def load_student(checkpoint: str | Path) -> Classifier:
    """The student of `checkpoint` (`student.pth`) built as the timm model its `student.json` names, in eval mode."""
    import timm

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"student checkpoint '{path}' does not exist")
    meta_path, meta = read_student_json(path)
    if not timm.is_model(meta["model"]):
        raise UserError(
            f"'{meta_path}' names model '{meta['model']}', which timm does not know (the DearKD students are "
            "registered by `import dfkd.models`; register any other architecture with timm first)"
        )
    try:
        model = timm.create_model(
            meta["model"],
            num_classes=int(meta["num_classes"]),
            checkpoint_path=str(path),
            **meta.get("model_kwargs", {}),
        )
    except Exception as exc:  # noqa: BLE001 - unreadable or mismatched weights are a user problem
        raise UserError(f"checkpoint '{path}' does not load into {meta['model']}: {first_line(exc)}") from None
    return Classifier(model.eval(), int(meta["num_classes"]), int(meta["input_size"]), meta["mean"], meta["std"])
