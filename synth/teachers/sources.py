"""Load a teacher: `timm:<name>[.<tag>]`, `torchvision:<name>` (pretrained weights from the caches, or a weights
file), or a dfkd teacher file (`synth.teachers.checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.checkpoint import load_teacher_file
from synth.teachers.downloads import hub_cached_download, timm_weights_file
from synth.teachers.teacher import Teacher, find_classifier_name, require_bn_layers, teacher_from_model
from synth.teachers.weights import load_weights_strict, num_classes_in, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_teacher(spec: str, weights: Optional[str] = None, device: str | torch.device = "cpu") -> Teacher:
    """Load `timm:<name>[.<tag>]`, `torchvision:<name>` or a dfkd teacher file, in eval mode, on `device`."""
    if spec.startswith("timm:"):
        teacher = _load_timm(spec, weights)
    elif spec.startswith("torchvision:"):
        teacher = _load_torchvision(spec, weights)
    elif Path(spec).is_file():
        teacher = load_teacher_file(spec, weights)
    else:
        raise UserError(f"teacher '{spec}' is not timm:<name>[.<tag>], torchvision:<name>, or an existing teacher file")
    teacher.model.eval().requires_grad_(False)
    return teacher.to(device)


def _load_timm(spec: str, weights: Optional[str]) -> Teacher:
    """A timm model: pretrained weights (cache, else download) or those of a weights file."""
    import timm

    name = spec.removeprefix("timm:")
    if not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}' (see timm.list_models(); tags as in 'regnety_160.deit_in1k')")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise UserError(f"timm model '{name}': {exc}") from None
    model = timm.create_model(name, pretrained=False)
    require_bn_layers(model, spec)
    classifier_name = getattr(cfg, "classifier", None) or find_classifier_name(model)
    if weights:
        state_dict = read_state_dict(weights)
        num_classes = num_classes_in(state_dict, classifier_name, weights)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        load_weights_strict(model, state_dict, weights, spec)
    else:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": timm_weights_file(name, cfg)})
    cfg = model.pretrained_cfg
    class_names = _imagenet_names(model) if model.num_classes == 1000 else None
    return teacher_from_model(
        model,
        spec,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        cfg.get("input_size", (3, 224, 224))[-1],
        classifier_name,
        class_names,
    )


def _imagenet_names(model: nn.Module) -> Optional[list[str]]:
    """ImageNet class descriptions for a 1000-class timm model, or None when timm cannot tell them."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        info = ImageNetInfo(infer_imagenet_subset(model) or "imagenet-1k")
        return [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # noqa: BLE001 - class names are optional decoration
        return None


# Torchvision builds these with auxiliary heads (training only) and transform_input=False unless pretrained weights
# are asked for; its pretrained builders use transform_input=True and drop the auxiliary heads after loading. dfkd
# builds them the same way, without the auxiliary heads (their BN layers never run in eval mode).
_TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
}
_TORCHVISION_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def build_torchvision(name: str, num_classes: Optional[int] = None) -> nn.Module:
    """A torchvision classifier with random weights, built as torchvision builds it for its pretrained weights."""
    import torchvision

    kwargs = dict(_TORCHVISION_KWARGS.get(name, {}))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


def torchvision_head_name(model: nn.Module, classifier_name: str) -> str:
    """The top-level module holding the classifier (`fc`, or a `classifier` Sequential such as MobileNetV3's
    Linear-Hardswish-Dropout-Linear): its input is the pooled penultimate embedding."""
    return classifier_name.split(".")[0]


def _torchvision_input_size(name: str) -> int:
    """The crop size of the model's default pretrained weights (224 when it has none)."""
    import torchvision

    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except Exception:  # noqa: BLE001 - no weights enum: the usual ImageNet size
        return 224


def _load_torchvision(spec: str, weights: Optional[str]) -> Teacher:
    """A torchvision model: its default pretrained weights (cache, else download) or those of a weights file."""
    import torchvision

    name = spec.removeprefix("torchvision:")
    if name not in torchvision.models.list_models():
        raise UserError(f"unknown torchvision model '{name}' (see torchvision.models.list_models())")
    model = build_torchvision(name)
    require_bn_layers(model, spec)
    classifier_name = find_classifier_name(model)
    enum = _torchvision_default_weights(name)
    if weights:
        state_dict = read_state_dict(weights)
        source = weights
    elif enum is None:
        raise UserError(f"torchvision model '{name}' has no pretrained weights; pass --teacher-weights FILE")
    else:
        state_dict = read_state_dict(hub_cached_download(enum.url))
        source = enum.url
    if name in _TORCHVISION_KWARGS:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_TORCHVISION_AUX_PREFIXES)}
    num_classes = num_classes_in(state_dict, classifier_name, source)
    model = build_torchvision(name, num_classes)
    load_weights_strict(model, state_dict, source, spec)
    return teacher_from_model(
        model,
        spec,
        IMAGENET_MEAN,
        IMAGENET_STD,
        _torchvision_input_size(name),
        classifier_name,
        enum.meta.get("categories") if enum is not None else None,  # dropped unless one per class
        torchvision_head_name(model, classifier_name),
    )


def _torchvision_default_weights(name: str):
    """The default weights enum of a torchvision model (its URL, and its class names in `meta["categories"]`),
    or None when it has none."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
