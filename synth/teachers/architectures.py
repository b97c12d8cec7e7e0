"""Networks by name, with random weights: a timm model, a torchvision classifier (built as torchvision builds it for
its pretrained weights), or the user's code; what a teacher file's `arch` names."""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.teacher import find_classifier_name

# Torchvision builds these with auxiliary heads (training only) and transform_input=False unless pretrained weights
# are asked for; its pretrained builders use transform_input=True and drop the auxiliary heads after loading. dfkd
# builds them the same way, without the auxiliary heads (their BN layers never run in eval mode).
TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
}
TORCHVISION_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def build_torchvision(name: str, num_classes: Optional[int] = None) -> nn.Module:
    """A torchvision classifier with random weights, built as torchvision builds it for its pretrained weights."""
    import torchvision

    kwargs = dict(TORCHVISION_KWARGS.get(name, {}))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


def torchvision_head_name(model: nn.Module, classifier_name: str) -> str:
    """The top-level module holding the classifier (`fc`, or a `classifier` Sequential such as MobileNetV3's
    Linear-Hardswish-Dropout-Linear): its input is the pooled penultimate embedding."""
    return classifier_name.split(".")[0]


def build_architecture(path: str, payload: dict) -> tuple[nn.Module, Optional[str], list[str]]:
    """(the file's architecture with random weights, the name of its head when not its classifier, notes): a timm
    or torchvision model, or the user code it names (whose sha256 is compared with the recorded one: a difference
    is noted, the weights must still fit)."""
    import timm

    from synth.teachers.user_code import build_from_code, code_sha256, is_code_spec, parse_code_spec

    arch, kwargs = payload["arch"], payload["arch_kwargs"]
    if is_code_spec(arch):
        code = parse_code_spec(arch)
        notes = []
        now = code_sha256(code)
        if payload.get("code_sha256") and now != payload["code_sha256"]:
            notes.append(
                f"note: the code of {arch} changed since '{path}' was written (sha256 {now[:12]}, recorded "
                f"{payload['code_sha256'][:12]}); its weights still have to fit"
            )
        return build_from_code(code, kwargs), None, notes
    if arch.startswith("torchvision:"):
        model = build_torchvision(arch.removeprefix("torchvision:"), kwargs.get("num_classes"))
        return model, torchvision_head_name(model, find_classifier_name(model)), []
    arch = arch.removeprefix("timm:")
    if not timm.is_model(arch):
        raise UserError(f"teacher file '{path}' names unknown timm architecture '{arch}'")
    try:
        return timm.create_model(arch, pretrained=False, **kwargs), None, []
    except Exception as exc:  # noqa: BLE001 - arch_kwargs the architecture does not take
        raise UserError(
            f"teacher file '{path}': cannot build {arch} with arch_kwargs {kwargs} ({type(exc).__name__})"
        ) from None
