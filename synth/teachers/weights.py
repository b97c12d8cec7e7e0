"""Weights files and state dicts: read them, identify them (sha256), and load them into an architecture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and raw bytes (sorted by name): identifies the weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a raw state_dict, a dict holding `state_dict` or `model`, or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user problem
        raise UserError(f"cannot read weights file '{path}': {first_line(exc)}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"weights file '{path}' holds no state_dict (expected tensors by name, or a dict with "
            "'state_dict' or 'model')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def num_classes_in(state_dict: dict[str, torch.Tensor], classifier_name: str, source: str) -> int:
    """The class count the weights were trained for: the rows of the classifier weight."""
    key = f"{classifier_name}.weight"
    if key not in state_dict:
        raise UserError(f"weights '{source}' have no classifier weight '{key}'; they do not fit this architecture")
    return int(state_dict[key].shape[0])


def load_weights_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, spec: str) -> None:
    """Load weights that must fit the architecture exactly; a mismatch is refused in one line naming keys."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(model, state_dict)
        detail = (
            f"missing {missing[:3]}, unexpected {unexpected[:3]}" if (missing or unexpected) else "tensor shapes differ"
        )
        raise UserError(f"weights '{source}' do not fit {spec}: {detail}") from exc


def _key_mismatch(model: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """(missing, unexpected) weight names, sorted."""
    own = set(model.state_dict())
    return sorted(own - set(state_dict)), sorted(set(state_dict) - own)
