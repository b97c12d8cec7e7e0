"""dfkd teacher files (written by `dfkd train-teacher` and `dfkd import-teacher`; docs/teachers.md): the architecture
(a timm name, or the user's `module:factory` / `file.py:factory` with the sha256 of its code) and its keyword arguments,
the weights, the normalisation, the input size, class names and whether the teacher saw grayscale images. Read with
`torch.load(weights_only=True)`: data, never pickled code (a file naming user code imports that code, as the spec
would)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line
from synth.teachers import small_cnn  # noqa: F401  (registers the small BN CNN teachers with timm)
from synth.teachers.architectures import build_architecture
from synth.teachers.teacher import Teacher, find_classifier_name, require_bn_layers
from synth.teachers.weights import load_weights_strict, read_state_dict

TEACHER_FILE_FORMAT = "dfkd-teacher"
TEACHER_FILE_VERSION = 2  # 2: architectures from user code (code_sha256), one-channel networks (input_channels)


def save_teacher_file(
    path: str | Path,
    arch: str,
    arch_kwargs: dict,
    model: nn.Module,
    mean,
    std,
    input_size: int,
    class_names: Optional[list[str]] = None,
    extra: Optional[dict] = None,
    grayscale: bool = False,
    code_sha256: Optional[str] = None,
) -> None:
    """Write a teacher file: architecture (a timm name, or a user code spec with `code_sha256`) and kwargs, weights
    (of the network itself: a GrayInput wrapper is taken off), normalisation (one value per channel the network
    takes), class names. Version 1 where a version-1 reader can read it, else 2."""
    from synth.teachers.channels import GrayInput

    channels = 1 if isinstance(model, GrayInput) else 3
    model = model.net if isinstance(model, GrayInput) else model
    payload = {
        "format": TEACHER_FILE_FORMAT,
        "format_version": 1 if code_sha256 is None and channels == 3 else TEACHER_FILE_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mean": [float(v) for v in mean][:channels],
        "std": [float(v) for v in std][:channels],
        "input_size": int(input_size),
        "class_names": list(class_names) if class_names else None,
        "grayscale": bool(grayscale),
        "extra": dict(extra or {}),
        **({"code_sha256": code_sha256} if code_sha256 is not None else {}),
        **({"input_channels": 1} if channels == 1 else {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_teacher_source(path: str) -> tuple[str, Optional[dict]]:
    """(what a file given as a teacher holds, its content when read): "teacher" (a dfkd teacher file, its checked
    payload), "pickle" (a whole pickled model, which weights_only loading refuses; None) or "weights" (tensors: a
    state_dict, or a dict holding one; None). The file is read once."""
    if Path(path).suffix == ".safetensors":
        return "weights", None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            return "pickle", None
        raise UserError(f"cannot read teacher file '{path}': {first_line(exc)}") from None
    if isinstance(payload, dict) and payload.get("format") == TEACHER_FILE_FORMAT:
        return "teacher", _checked_version(path, payload)
    if isinstance(payload, dict) and payload.get("format") is None:
        return "weights", None
    raise UserError(f"'{path}' is not a dfkd teacher file (written by `dfkd train-teacher` or `dfkd import-teacher`)")


def read_pickled_model(path: str) -> nn.Module:
    """A whole pickled model (torch.save(model)); unpickling runs code, so callers ask the user first."""
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - e.g. its class cannot be imported here
        raise UserError(f"cannot unpickle '{path}': {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"'{path}' unpickles to {type(model).__name__}, not a torch.nn.Module")
    return model


def read_teacher_payload(path: str) -> dict:
    """The content of a dfkd teacher file, its format and version checked."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read teacher file '{path}': {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FILE_FORMAT:
        raise UserError(
            f"'{path}' is not a dfkd teacher file (written by `dfkd train-teacher` or `dfkd import-teacher`)"
        )
    return _checked_version(path, payload)


def _checked_version(path: str, payload: dict) -> dict:
    """`payload`, refused in one line when a newer dfkd wrote it."""
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > TEACHER_FILE_VERSION:
        raise UserError(
            f"teacher file '{path}' has format_version {version!r}; "
            f"this dfkd reads up to {TEACHER_FILE_VERSION}, upgrade dfkd"
        )
    return payload


def load_teacher_file(path: str, weights: Optional[str], payload: Optional[dict] = None) -> Teacher:
    """The teacher a teacher file describes (its weights, or those of the `weights` file when given); `payload`: its
    content when the caller has read it already (read_teacher_source)."""
    from synth.teachers.channels import wrap_model

    payload = payload if payload is not None else read_teacher_payload(path)
    _check_teacher_payload(path, payload, weights is not None)
    model, head_name, notes = build_architecture(path, payload)
    require_bn_layers(model, path)
    state_dict = read_state_dict(weights) if weights else payload["state_dict"]
    load_weights_strict(model, state_dict, weights or path, path)
    teacher = wrap_model(
        model,
        path,
        payload["mean"],
        payload["std"],
        payload["input_size"],
        find_classifier_name(model),
        payload.get("class_names"),
        head_name,
    )
    teacher.grayscale = teacher.grayscale or bool(payload.get("grayscale", False))
    if "code_sha256" in payload:
        teacher.source = {
            "kind": "code",
            "arch": payload["arch"],
            "kwargs": payload["arch_kwargs"],
            "code_sha256": payload["code_sha256"],
        }
    mean = [round(v, 4) for v in payload["mean"]]
    std = [round(v, 4) for v in payload["std"]]
    teacher.notes = [
        *notes,
        f"teacher preprocessing: mean {mean}, std {std}, {payload['input_size']} px (from the teacher file)",
    ]
    return teacher


def _check_teacher_payload(path: str, payload: dict, own_weights: bool) -> None:
    """Every field of a teacher file has the type it must have (one line naming the file and the field)."""

    def bad(key: str, accepted: str) -> UserError:
        return UserError(
            f"teacher file '{path}' has a malformed '{key}' ({payload.get(key)!r:.60}); accepted: {accepted}"
        )

    if not isinstance(payload.get("arch"), str):
        raise bad("arch", "a timm architecture name, module:factory or file.py:factory")
    if not isinstance(payload.get("arch_kwargs", {}), dict):
        raise bad("arch_kwargs", "a mapping of keyword arguments")
    payload.setdefault("arch_kwargs", {})
    state = payload.get("state_dict")
    if not own_weights and not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise bad("state_dict", "tensors by name")
    for key in ("mean", "std"):
        value = payload.get(key)
        if not (
            isinstance(value, (list, tuple))
            and len(value) in (1, 3)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise bad(key, "one number per input channel (1 or 3)")
    size = payload.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad("input_size", "a positive whole number of pixels")
    names = payload.get("class_names")
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a list of names, or none")
