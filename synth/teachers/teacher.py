"""A CNN teacher: the model with its normalisation, classifier and BatchNorm layers, and the embedding tap.

Loading one: `synth.teachers.sources.load_teacher` (timm, torchvision, or a dfkd teacher file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.weights import state_dict_sha256

_FROZEN_BN_NAMES = ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")


def normalization(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel image statistics (a teacher's or a student's mean and std) as tensors shaped (1, C, 1, 1), to
    broadcast over (B, C, H, W) batches; `dtype` None: torch's default float type."""
    return (
        torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1),
        torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1),
    )


@dataclass
class Teacher:
    """A teacher in eval mode with everything synthesis and distillation need to know about it."""

    model: nn.Module
    spec: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    classifier: nn.Module
    weights_sha256: str
    class_names: Optional[list[str]] = None
    bn_layers: list[nn.Module] = field(default_factory=list)
    grayscale: bool = False  # the teacher saw grayscale images (R = G = B): synthesis optimises one channel
    head: Optional[nn.Module] = None
    min_input: Optional[int] = None  # one size every stage below it is shown at (synth.teachers.input_size)
    stage_inputs: dict[int, int] = field(default_factory=dict)  # a stage it fails on -> the size it is shown at
    input_channels: int = 3  # 1: the network takes one channel (synth.teachers.channels.GrayInput feeds it)
    source: dict[str, Any] = field(default_factory=dict)  # how it was built: kwargs, code sha256 (recorded)
    notes: list[str] = field(default_factory=list)  # one line each: where its preprocessing came from

    @property
    def embedding_module(self) -> nn.Module:
        """The module whose input is the pooled penultimate embedding: the head (torchvision's multi-layer
        `classifier` Sequential, e.g. MobileNetV3 or VGG) or, where the head is one layer, the classifier itself."""
        return self.head if self.head is not None else self.classifier

    def to(self, device: torch.device | str) -> "Teacher":
        """Move the model to a device (in place) and return self."""
        self.model.to(device)
        return self

    def pixel_bounds(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of valid pixels [0, 1] in normalised space, shaped (1, 3, 1, 1)."""
        mean, std = normalization(self.mean, self.std, device)
        return (0 - mean) / std, (1 - mean) / std

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (B, 3, H, W) to the teacher's normalised input space."""
        mean, std = normalization(self.mean, self.std, images01.device)
        return (images01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] (clamped)."""
        mean, std = normalization(self.mean, self.std, x.device)
        return (x * std + mean).clamp(0, 1)

    def gray_affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (1, 3, 1, 1) each: one channel in the first channel's normalised space (B, 1, H, W)
        * scale + shift is the same gray image in the teacher's 3-channel normalised space."""
        mean, std = normalization(self.mean, self.std, device)
        return std[:, :1] / std, (mean[:, :1] - mean) / std

    def describe(self) -> dict[str, Any]:
        """A JSON-able description stored in shards and manifests."""
        return {
            "spec": self.spec,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "weights_sha256": self.weights_sha256,
            "bn_layers": len(self.bn_layers),
            **({"grayscale": True} if self.grayscale else {}),
            **({"input_channels": self.input_channels} if self.input_channels != 3 else {}),
            **self.source,
        }


class EmbeddingTap:
    """Captures a module's input on every forward; given `Teacher.embedding_module`, the pooled penultimate
    features (the input of the whole classification head, not of its last layer)."""

    def __init__(self, module: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        self.value = inputs[0].flatten(1)

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()


def find_bn_layers(model: nn.Module) -> list[nn.Module]:
    """All BatchNorm layers with running statistics, in forward-definition order (BatchNormAct2d, SyncBN, frozen BN)."""
    layers = []
    for name, module in model.named_modules():
        is_bn = isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) or type(module).__name__ in _FROZEN_BN_NAMES
        if not is_bn:
            continue
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            raise UserError(
                f"BatchNorm layer '{name}' has no running statistics (track_running_stats=False); "
                "synthesis needs a teacher whose BN layers keep running mean and variance"
            )
        layers.append(module)
    return layers


def running_bn_layers(model: nn.Module, layers: list[nn.Module], input_size: int) -> list[nn.Module]:
    """The subset of `layers` that a forward pass in eval mode actually runs (one dummy image at `input_size`).

    Some architectures hold BN layers that inference never reaches (e.g. auxiliary heads run only in training);
    their hooks would never fire, so the BN loss must not wait for them. If the dummy forward fails, all layers are
    kept (the error then shows up in synthesis with its own message)."""
    seen: set[int] = set()
    handles = [layer.register_forward_hook(lambda m, i, o: seen.add(id(m))) for layer in layers]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    except Exception:  # noqa: BLE001 - a model that needs another input keeps every layer
        return list(layers)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [layer for layer in layers if id(layer) in seen]


def require_bn_layers(model: nn.Module, spec: str) -> None:
    """Refuse a teacher without BatchNorm layers: DeepInversion matches their running statistics."""
    if not find_bn_layers(model):
        raise UserError(f"teacher {spec} has no BatchNorm layers; DeepInversion needs BN running statistics to match")


def find_classifier_name(model: nn.Module) -> str:
    """The name of the last Linear (or 1x1 conv) layer: the classifier whose input is the embedding."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            name = module_name
    if name is None:
        raise UserError("the teacher has no Linear classifier layer whose input could serve as its embedding")
    return name


def teacher_from_model(
    model: nn.Module,
    spec: str,
    mean,
    std,
    input_size: int,
    classifier_name: str,
    class_names: Optional[list[str]] = None,
    head_name: Optional[str] = None,
) -> Teacher:
    """Wrap a loaded model: its classifier (the last layer, which sets the class count), the head whose input is
    the embedding (`head_name`, default the classifier), and the BN layers that a forward pass runs."""
    if not all(math.isfinite(float(v)) for v in (*mean, *std)) or min(float(v) for v in std) <= 0:
        raise UserError(
            f"teacher '{spec}' has a degenerate normalisation (mean {list(mean)}, std {list(std)}); "
            "accepted: finite means and stds > 0"
        )
    classifier = model.get_submodule(classifier_name)
    num_classes = classifier.weight.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    bn_layers = running_bn_layers(model, find_bn_layers(model), int(input_size))
    if not bn_layers:
        raise UserError(
            f"teacher {spec} runs no BatchNorm layer in inference; DeepInversion needs BN running statistics to match"
        )
    return Teacher(
        model=model,
        spec=spec,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        input_size=int(input_size),
        classifier=classifier,
        weights_sha256=state_dict_sha256(model.state_dict()),
        class_names=class_names,
        bn_layers=bn_layers,
        head=model.get_submodule(head_name) if head_name else None,
    )
