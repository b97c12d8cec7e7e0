"""dfkd teacher files (written by `dfkd train-teacher`): a timm architecture and its kwargs, the weights, the
normalisation, the input size, class names and whether the teacher saw grayscale images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line
from synth.teachers import small_cnn  # noqa: F401  (registers the small BN CNN teachers with timm)
from synth.teachers.teacher import Teacher, find_classifier_name, require_bn_layers, teacher_from_model
from synth.teachers.weights import load_weights_strict, read_state_dict

TEACHER_FILE_FORMAT = "dfkd-teacher"
TEACHER_FILE_VERSION = 1


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
) -> None:
    """Write a teacher file: architecture (a timm name and kwargs), weights, normalisation, class names."""
    payload = {
        "format": TEACHER_FILE_FORMAT,
        "format_version": TEACHER_FILE_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "input_size": int(input_size),
        "class_names": list(class_names) if class_names else None,
        "grayscale": bool(grayscale),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_teacher_file(path: str, weights: Optional[str]) -> Teacher:
    """The teacher a teacher file describes (its weights, or those of the `weights` file when given)."""
    import timm

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read teacher file '{path}': {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FILE_FORMAT:
        raise UserError(f"'{path}' is not a dfkd teacher file (written by `dfkd train-teacher`)")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > TEACHER_FILE_VERSION:
        raise UserError(
            f"teacher file '{path}' has format_version {version!r}; "
            f"this dfkd reads up to {TEACHER_FILE_VERSION}, upgrade dfkd"
        )
    _check_teacher_payload(path, payload, weights is not None)
    arch = payload["arch"].removeprefix("timm:")
    if not timm.is_model(arch):
        raise UserError(f"teacher file '{path}' names unknown timm architecture '{arch}'")
    try:
        model = timm.create_model(arch, pretrained=False, **payload["arch_kwargs"])
    except Exception as exc:  # noqa: BLE001 - arch_kwargs the architecture does not take
        raise UserError(
            f"teacher file '{path}': cannot build {arch} with arch_kwargs {payload['arch_kwargs']} "
            f"({type(exc).__name__})"
        ) from None
    require_bn_layers(model, path)
    state_dict = read_state_dict(weights) if weights else payload["state_dict"]
    load_weights_strict(model, state_dict, weights or path, path)
    teacher = teacher_from_model(
        model,
        path,
        payload["mean"],
        payload["std"],
        payload["input_size"],
        find_classifier_name(model),
        payload.get("class_names"),
    )
    teacher.grayscale = bool(payload.get("grayscale", False))
    return teacher


def _check_teacher_payload(path: str, payload: dict, own_weights: bool) -> None:
    """Every field of a teacher file has the type it must have (one line naming the file and the field)."""

    def bad(key: str, accepted: str) -> UserError:
        return UserError(
            f"teacher file '{path}' has a malformed '{key}' ({payload.get(key)!r:.60}); accepted: {accepted}"
        )

    if not isinstance(payload.get("arch"), str):
        raise bad("arch", "a timm architecture name")
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
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise bad(key, "three numbers")
    size = payload.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad("input_size", "a positive whole number of pixels")
    names = payload.get("class_names")
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a list of names, or none")
