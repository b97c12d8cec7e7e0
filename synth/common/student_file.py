"""The student file, written and read here for every caller: `student.pth` (a plain state_dict, loadable with
`timm.create_model(name, num_classes=N, checkpoint_path=...)`) and `student.json` beside it (the timm model, its
classes, input size, mean/std and the keyword arguments that rebuild it). `dfkd distill` writes it; `dfkd evaluate
accuracy`, the demo and Adaptive DeepInversion's competitor read it.

A student from the user's own code (`module:factory` / `file.py:factory`) is recorded by its spec (a file's path
absolute), `student_kwargs` and the sha256 of its code; reading it back imports and runs that code
(synth.teachers.user_code) and loads the plain state_dict of that network into it.

The student's architecture must be registered with timm before it is read: the DearKD students register on
`import dfkd.models`, the small BN CNNs on `import synth.teachers.small_cnn` (this foundation module imports no
other room, so its callers do)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line

if TYPE_CHECKING:
    from synth.teachers.user_code import CodeSpec

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


def load_student(checkpoint: str | Path, message: Optional[Callable[[str], None]] = None) -> Classifier:
    """The student of `checkpoint` (`student.pth`) built as its `student.json` says (a timm model, or the user's code,
    run again; `message` gets the note when that code changed), in eval mode."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"student checkpoint '{path}' does not exist")
    meta_path, meta = read_student_json(path)
    if "code_sha256" in meta:
        model = _load_code_student(path, meta, message or (lambda text: print(text, file=sys.stderr)))
    else:
        model = _load_timm_student(path, meta_path, meta)
    return Classifier(model.eval(), int(meta["num_classes"]), int(meta["input_size"]), meta["mean"], meta["std"])


def _load_timm_student(path: Path, meta_path: Path, meta: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(meta["model"]):
        raise UserError(
            f"'{meta_path}' names model '{meta['model']}', which timm does not know (the DearKD students are "
            "registered by `import dfkd.models`; register any other architecture with timm first)"
        )
    try:
        return timm.create_model(
            meta["model"],
            num_classes=int(meta["num_classes"]),
            checkpoint_path=str(path),
            **meta.get("model_kwargs", {}),
        )
    except Exception as exc:  # noqa: BLE001 - unreadable or mismatched weights are a user problem
        raise UserError(f"checkpoint '{path}' does not load into {meta['model']}: {first_line(exc)}") from None


def _load_code_student(path: Path, meta: dict[str, Any], message: Callable[[str], None]) -> nn.Module:
    """The user's network rebuilt from its recorded spec and kwargs, its weights loaded; a 1-channel one runs on
    the channels' mean of the RGB input every reader gives it."""
    from synth.teachers.channels import GrayInput, input_channels
    from synth.teachers.user_code import code_sha256, parse_code_spec

    spec = parse_code_spec(meta["model"])
    net = build_code_net(spec, dict(meta.get("student_kwargs") or {}), int(meta["num_classes"]))
    if code_sha256(spec) != meta["code_sha256"]:
        message(
            f"note: the code of student {spec.text} changed since '{path}' was trained (sha256 "
            f"{str(meta['code_sha256'])[:12]}, now {code_sha256(spec)[:12]}); its weights are loaded into it as it is"
        )
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - unreadable or mismatched weights are a user problem
        raise UserError(f"checkpoint '{path}' does not load into student {spec.text}: {first_line(exc)}") from None
    return GrayInput(net) if input_channels(net) == 1 else net


def build_code_net(spec: CodeSpec, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    """The user's network: its factory called with `num_classes` (when it takes that keyword and `kwargs` do not
    give it) and `kwargs`; one line for a factory that fails."""
    from synth.teachers.user_code import accepts, build_from_code, load_factory

    if "num_classes" not in kwargs and accepts(load_factory(spec), "num_classes"):
        kwargs = {"num_classes": num_classes, **kwargs}
    try:
        return build_from_code(spec, kwargs, "student")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"student {spec.text} failed to build: {type(exc).__name__}: {first_line(exc)}") from None


def code_record(spec: CodeSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What student.json records of a student from the user's code (beside num_classes, input size, mean, std)."""
    from synth.teachers.user_code import code_sha256

    return {"model": spec.text, "student_kwargs": kwargs, "code_sha256": code_sha256(spec)}
