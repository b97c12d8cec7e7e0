"""The files of a distillation run: checkpoint.pt, metrics.jsonl, curves.png, student.pth and student.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from dfkd.evaluate.plots import CURVES, CurvesDuringRun
from synth.common.errors import UserError
from synth.common.student_file import save_student

CHECKPOINT_FORMAT = "dfkd-distill-checkpoint"
CHECKPOINT_VERSION = 1


class Output:
    """Every file a run writes; only the main process (rank 0 under DDP) writes."""

    def __init__(self, root: str | Path, main: bool = True, message: Optional[Callable[[str], None]] = None):
        self.root, self.main = Path(root), main
        self._curves = CurvesDuringRun(self.root, message)
        self.checkpoint = self.root / "checkpoint.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.student = self.root / "student.pth"
        self.student_json = self.root / "student.json"
        self.curves_png = self.root / CURVES

    def prepare(self, resume: bool) -> Optional[dict]:
        """The checkpoint to resume from (None: a fresh run); refuses to start over an existing one."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output '{self.root}' exists and is not a directory")
        if self.checkpoint.is_file() and not resume:
            raise UserError(f"'{self.checkpoint}' exists; pass --resume to continue it or choose another --out")
        if not (resume and self.checkpoint.is_file()):
            # results without a checkpoint belong to another run (or a copy): never overwrite them
            others = [p.name for p in (self.student, self.student_json, self.metrics) if p.exists()]
            if others:
                raise UserError(
                    f"'{self.root}' holds {', '.join(others)} of another run but no checkpoint.pt to "
                    "resume; choose another --out (dfkd does not overwrite them)"
                )
            return None
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, overwritten or foreign files
            raise UserError(
                f"cannot read '{self.checkpoint}' ({type(exc).__name__}); it is damaged: continue "
                "from a copy or choose another --out"
            ) from None
        if (
            not isinstance(state, dict)
            or state.get("format") != CHECKPOINT_FORMAT
            or state.get("version", 0) > CHECKPOINT_VERSION
        ):
            raise UserError(f"'{self.checkpoint}' is not a dfkd distill checkpoint this version can read")
        if self.main and self.metrics.is_file():  # drop records of an epoch that ran after the last checkpoint
            kept = [
                line
                for line in self.metrics.read_text().splitlines()
                if line and json.loads(line)["epoch"] <= state["epoch"]
            ]
            self._atomic_text(self.metrics, "".join(line + "\n" for line in kept))
        return state

    def save_checkpoint(self, state: dict) -> None:
        """Write checkpoint.pt atomically (tmp + os.replace), creating the directory on the first write."""
        if self.main:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.checkpoint)

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")

    def draw_curves(self, final: bool = False) -> None:
        """Redraw curves.png from metrics.jsonl (during the run only when the last draw is not too recent)."""
        if self.main:
            self._curves.draw(final)

    def export_student(self, student: nn.Module, info: dict) -> None:
        """student.pth and student.json (synth.common.student_file)."""
        if self.main:
            save_student(self.student, student, info)

    @staticmethod
    def _atomic_text(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
