"""Load a teacher: `timm:<name>[.<tag>]`, `torchvision:<name>` (pretrained weights from the caches, or a weights
file), the user's own network (`package.module:factory`, `path/to/model.py:factory`, an in-memory nn.Module, or a whole
pickled model with trust_pickle), or a dfkd teacher file (`synth.teachers.checkpoint`). Its preprocessing (mean, std,
input size, class names) comes from what the user states, else from its source; where dfkd has to assume, the
teacher's `notes` say so in one line."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from synth.common.errors import UserError
from synth.teachers.architectures import (
    TORCHVISION_AUX_PREFIXES,
    TORCHVISION_KWARGS,
    build_torchvision,
    torchvision_head_name,
)
from synth.teachers.channels import wrap_model
from synth.teachers.checkpoint import load_teacher_file, read_pickled_model, read_teacher_source
from synth.teachers.downloads import hub_cached_download, timm_weights_file
from synth.teachers.preprocessing import PRESETS, Preprocessing, per_channel
from synth.teachers.teacher import Teacher, find_classifier_name, require_bn_layers
from synth.teachers.user_code import build_from_code, code_sha256, is_code_spec, parse_code_spec, parse_kwargs
from synth.teachers.weights import load_weights_strict, num_classes_in, read_state_dict

IMAGENET_MEAN, IMAGENET_STD = PRESETS["imagenet"]
SPECS_TEXT = "timm:<name>[.<tag>], torchvision:<name>, module:factory, file.py:factory, or a teacher file"


@dataclass
class TeacherOptions:
    """Everything besides the spec that says how to build a teacher: its weights file, the keyword arguments of its
    builder, the preprocessing the user states, and whether a pickled model may be unpickled (runs its code)."""

    weights: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    trust_pickle: bool = False
    origin: str = "as given"  # where the preprocessing came from, for the note ("from the shards' record")


def teacher_options(config: Any) -> TeacherOptions:
    """The TeacherOptions of a command's config (its teacher_weights, teacher_kwargs, preprocessing, trust_pickle)."""
    return TeacherOptions(
        config.teacher_weights,
        parse_kwargs(config.teacher_kwargs, "teacher_kwargs"),
        getattr(config, "preprocessing", None) or Preprocessing(),
        config.trust_pickle,
    )


def with_recorded_preprocessing(spec: Union[str, nn.Module], options: TeacherOptions, record: dict) -> TeacherOptions:
    """The teacher as its shards were made: where the user states no mean/std, the mean, std and input size recorded
    with the shards (`record`: their teacher description), and for user code its recorded builder kwargs. A teacher
    file carries its own."""
    own = isinstance(spec, nn.Module) or is_code_spec(spec)
    kwargs = (options.kwargs or dict(record.get("kwargs") or {})) if own else options.kwargs
    given = options.preprocessing
    # a file spec is a teacher file, unless it is a pickle (which loads only with trust_pickle): no need to read it
    teacher_file = (
        isinstance(spec, str) and Path(spec).is_file() and not is_code_spec(spec) and not options.trust_pickle
    )
    if teacher_file or not record or "mean" not in record or given.mean is not None or given.std is not None:
        return TeacherOptions(options.weights, kwargs, given, options.trust_pickle, options.origin)
    channels = int(record.get("input_channels", 3))
    recorded = Preprocessing(
        mean=list(record["mean"][:channels]),
        std=list(record["std"][:channels]),
        input_size=given.input_size or record.get("input_size"),
        class_names=given.class_names,
    )
    return TeacherOptions(options.weights, kwargs, recorded, options.trust_pickle, "from the shards' record")


def load_teacher(
    spec: Union[str, nn.Module],
    weights: Optional[str] = None,
    device: str | torch.device = "cpu",
    options: Optional[TeacherOptions] = None,
) -> Teacher:
    """Load a teacher (see the module docstring), in eval mode, on `device`; `weights` overrides options.weights."""
    options = options or TeacherOptions()
    options = replace(options, weights=weights or options.weights)
    if isinstance(spec, nn.Module):
        teacher = _own_network(spec, f"python:{type(spec).__qualname__}", options, {"kind": "in-memory"})
    elif spec.startswith("timm:"):
        teacher = _load_timm(spec, options)
    elif spec.startswith("torchvision:"):
        teacher = _load_torchvision(spec, options)
    elif is_code_spec(spec) and not Path(spec).is_file():
        teacher = _load_code(spec, options)
    elif Path(spec).is_file():
        teacher = _load_file(spec, options)
    else:
        raise UserError(f"teacher '{spec}' is not {SPECS_TEXT} (an existing file)")
    teacher.model.eval().requires_grad_(False)
    return teacher.to(device)


def _load_file(path: str, options: TeacherOptions) -> Teacher:
    """A dfkd teacher file; a whole pickled model (only with trust_pickle); a bare state_dict is refused."""
    kind, payload = read_teacher_source(path)
    if kind == "teacher":
        teacher = load_teacher_file(path, options.weights, payload)
        return _restated(teacher, options.preprocessing, options.origin)
    if kind == "pickle":
        if not options.trust_pickle:
            raise UserError(
                f"'{path}' holds a whole pickled model (torch.save(model)); unpickling runs code from the file: pass "
                "--trust-pickle if you trust it, or save model.state_dict() and pass --teacher module:factory "
                "--teacher-weights FILE"
            )
        return _own_network(read_pickled_model(path), path, options, {"kind": "pickle"})
    raise UserError(
        f"'{path}' holds weights but no architecture; pass the architecture as --teacher ({SPECS_TEXT}) and this file "
        "as --teacher-weights"
    )


def _load_code(spec: str, options: TeacherOptions) -> Teacher:
    """The user's own network from `module:factory` or `file.py:factory`, built with options.kwargs."""
    code = parse_code_spec(spec)
    model = build_from_code(code, options.kwargs)
    source = {"kind": "code", "kwargs": options.kwargs, "code_sha256": code_sha256(code)}
    return _own_network(model, code.text, options, source)


def _own_network(model: nn.Module, spec: str, options: TeacherOptions, source: dict) -> Teacher:
    """A network dfkd knows nothing about: its weights from options.weights (else as built), and its preprocessing
    as the user states it (mean, std and input size are required: nothing to take them from)."""
    require_bn_layers(model, spec)
    if options.weights:
        load_weights_strict(model, read_state_dict(options.weights), options.weights, spec)
    given = options.preprocessing
    missing = [
        name
        for name, value in (("mean", given.mean), ("std", given.std), ("input size", given.input_size))
        if value is None
    ]
    if missing:
        raise UserError(
            f"teacher {spec} is your own network, so dfkd cannot tell its {' and '.join(missing)}: pass --mean, --std "
            f"(numbers or a preset: {', '.join(PRESETS)}) and --input-size as it was trained (Python: mean=, std=, "
            "input_size=)"
        )
    teacher = wrap_model(model, spec, given.mean_values(), given.std_values(), given.input_size, None, None)
    teacher.source = source
    teacher.notes.append(_note(teacher, options.origin))
    return _restated(teacher, Preprocessing(class_names=given.class_names))


def _restated(teacher: Teacher, given: Preprocessing, origin: str = "as given") -> Teacher:
    """`teacher` with the preprocessing the user stated laid over what its source says (one note per change)."""
    if not given.given:
        return teacher
    changes = []
    if given.mean is not None or given.std is not None:
        mean = per_channel(
            given.mean_values() or teacher.mean[: teacher.input_channels], teacher.input_channels, "mean", teacher.spec
        )
        std = per_channel(
            given.std_values() or teacher.std[: teacher.input_channels], teacher.input_channels, "std", teacher.spec
        )
        factor = 3 if teacher.input_channels == 1 else 1
        teacher.mean, teacher.std = tuple(mean * factor), tuple(std * factor)
        changes.append("mean/std")
    if given.input_size is not None:
        teacher.input_size = given.input_size
        changes.append("input size")
    names = given.names()
    if names is not None:
        if len(names) != teacher.num_classes:
            raise UserError(
                f"class_names lists {len(names)} names but teacher {teacher.spec} has {teacher.num_classes} classes"
            )
        teacher.class_names = names
        changes.append("class names")
    if changes and teacher.source.get("kind") not in ("code", "pickle", "in-memory"):
        teacher.notes = [_note(teacher, f"{', '.join(changes)} {origin}, the rest from {teacher.spec}")]
    return teacher


def _note(teacher: Teacher, where: str) -> str:
    """One line: the preprocessing the teacher will be run with, and where it came from."""
    mean = [round(v, 4) for v in teacher.mean[: teacher.input_channels]]
    std = [round(v, 4) for v in teacher.std[: teacher.input_channels]]
    return f"teacher preprocessing: mean {mean}, std {std}, {teacher.input_size} px ({where})"


def _assumed(teacher: Teacher, what: str) -> None:
    """Record that the normalisation was assumed, and how to state it."""
    teacher.notes = [
        _note(teacher, f"ASSUMED: {what}")
        + "; if the weights were trained with another normalisation or size, pass --mean/--std/--input-size"
    ]


def _load_timm(spec: str, options: TeacherOptions) -> Teacher:
    """A timm model: pretrained weights (cache, else download) or those of a weights file; options.kwargs go to
    timm.create_model (e.g. {"in_chans": 1})."""
    import timm

    name = spec.removeprefix("timm:")
    if not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}' (see timm.list_models(); tags as in 'regnety_160.deit_in1k')")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise UserError(f"timm model '{name}': {exc}") from None
    kwargs = dict(options.kwargs)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UserError(f"timm model '{name}' does not take teacher_kwargs {kwargs}: {exc}") from None
    require_bn_layers(model, spec)
    classifier_name = getattr(cfg, "classifier", None) or find_classifier_name(model)
    if options.weights:
        state_dict = read_state_dict(options.weights)
        kwargs["num_classes"] = num_classes_in(state_dict, classifier_name, options.weights)
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights_strict(model, state_dict, options.weights, spec)
    else:
        file = timm_weights_file(name, cfg)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file}, **kwargs)
    cfg = model.pretrained_cfg
    class_names = _imagenet_names(model) if model.num_classes == 1000 else None
    teacher = wrap_model(
        model,
        spec,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        cfg.get("input_size", (3, 224, 224))[-1],
        classifier_name,
        class_names,
    )
    teacher.source = {"kwargs": options.kwargs} if options.kwargs else {}
    if options.weights and not options.preprocessing.given:
        _assumed(teacher, f"timm's pretrained_cfg of {name}, made for its hub weights, not for {options.weights}")
    else:
        teacher.notes = [_note(teacher, f"timm's pretrained_cfg of {name}")]
    return _restated(teacher, options.preprocessing, options.origin)


def _imagenet_names(model: nn.Module) -> Optional[list[str]]:
    """ImageNet class descriptions for a 1000-class timm model, or None when timm cannot tell them."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        info = ImageNetInfo(infer_imagenet_subset(model) or "imagenet-1k")
        return [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # noqa: BLE001 - class names are optional decoration
        return None


def _torchvision_input_size(name: str) -> int:
    """The crop size of the model's default pretrained weights (224 when it has none)."""
    import torchvision

    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except Exception:  # noqa: BLE001 - no weights enum: the usual ImageNet size
        return 224


def _load_torchvision(spec: str, options: TeacherOptions) -> Teacher:
    """A torchvision model: its default pretrained weights (cache, else download) or those of a weights file."""
    import torchvision

    name = spec.removeprefix("torchvision:")
    if name not in torchvision.models.list_models():
        raise UserError(f"unknown torchvision model '{name}' (see torchvision.models.list_models())")
    model = build_torchvision(name)
    require_bn_layers(model, spec)
    classifier_name = find_classifier_name(model)
    enum = _torchvision_default_weights(name)
    weights = options.weights
    if weights:
        state_dict = read_state_dict(weights)
        source = weights
    elif enum is None:
        raise UserError(f"torchvision model '{name}' has no pretrained weights; pass --teacher-weights FILE")
    else:
        state_dict = read_state_dict(hub_cached_download(enum.url))
        source = enum.url
    if name in TORCHVISION_KWARGS:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TORCHVISION_AUX_PREFIXES)}
    num_classes = num_classes_in(state_dict, classifier_name, source)
    model = build_torchvision(name, num_classes)
    load_weights_strict(model, state_dict, source, spec)
    teacher = wrap_model(
        model,
        spec,
        IMAGENET_MEAN,
        IMAGENET_STD,
        _torchvision_input_size(name),
        classifier_name,
        enum.meta.get("categories") if enum is not None else None,  # dropped unless one per class
        torchvision_head_name(model, classifier_name),
    )
    if weights and not options.preprocessing.given:
        _assumed(teacher, f"ImageNet mean/std and the crop size of {name}'s default weights, not known for {weights}")
    else:
        teacher.notes = [_note(teacher, f"torchvision's ImageNet preprocessing for {name}")]
    return _restated(teacher, options.preprocessing, options.origin)


def _torchvision_default_weights(name: str):
    """The default weights enum of a torchvision model (its URL, and its class names in `meta["categories"]`),
    or None when it has none."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
