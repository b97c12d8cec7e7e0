"""`dfkd import-teacher`: pack a network (any teacher spec) with its weights, preprocessing and class names into one
dfkd teacher file, after checking that synthesis can use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from synth.common.errors import UserError, first_line
from synth.common.settings import (
    check_teacher_options,
    setting,
    teacher_kwargs_setting,
    teacher_setting,
    teacher_weights_setting,
    trust_pickle_setting,
)
from synth.teachers.preprocessing import Preprocessing


@dataclass
class ImportConfig:
    """What `dfkd import-teacher` packs: the teacher spec and how to build it (recipe section `import_teacher`)."""

    teacher: Optional[str] = teacher_setting()
    teacher_weights: Optional[str] = teacher_weights_setting()
    teacher_kwargs: Optional[Union[str, dict]] = teacher_kwargs_setting()
    trust_pickle: bool = trust_pickle_setting()
    preprocessing: Preprocessing = setting(
        factory=Preprocessing, help="The teacher's input normalisation, size and class names."
    )

    def validate(self) -> None:
        """A teacher is named and its options are well formed."""
        if not self.teacher:
            raise UserError(
                "no teacher given: pass --teacher (timm:NAME, torchvision:NAME, module:factory, file.py:factory)"
            )
        check_teacher_options(self)


def import_teacher(config: ImportConfig, out: str | Path) -> dict[str, Any]:
    """Load the teacher as synthesis would, check it (BatchNorm layers, a classifier, a dry forward of two blank
    images at its input size giving one logit per class, class names one per class), write the teacher file
    atomically and describe it."""
    from synth.teachers.checkpoint import read_teacher_source, save_teacher_file
    from synth.teachers.sources import load_teacher, teacher_options
    from synth.teachers.user_code import is_code_spec

    config.validate()
    spec = config.teacher
    if Path(spec).is_file() and not is_code_spec(spec) and read_teacher_source(spec)[0] == "pickle":
        raise UserError(
            f"'{spec}' is a pickled model: a teacher file holds data, not pickled code; pass its class as --teacher "
            "module:factory (or file.py:factory) and its state_dict as --teacher-weights"
        )
    teacher = load_teacher(spec, options=teacher_options(config))
    _dry_forward(teacher)
    arch, kwargs, sha = _architecture(spec, config, teacher)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory; give the teacher file's path, e.g. {out / 'teacher.pt'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_teacher_file(
        out,
        arch,
        kwargs,
        teacher.model,
        teacher.mean,
        teacher.std,
        teacher.input_size,
        teacher.class_names,
        extra={"imported_from": spec},
        grayscale=teacher.grayscale,
        code_sha256=sha if is_code_spec(arch) else None,
    )
    return {
        "out": str(out),
        "arch": arch,
        "arch_kwargs": kwargs,
        **({"code_sha256": sha} if sha else {}),
        "num_classes": teacher.num_classes,
        "input_channels": teacher.input_channels,
        "input_size": teacher.input_size,
        "mean": list(teacher.mean[: teacher.input_channels]),
        "std": list(teacher.std[: teacher.input_channels]),
        "class_names": teacher.class_names,
        "bn_layers": len(teacher.bn_layers),
        "weights_sha256": teacher.weights_sha256,
        "notes": teacher.notes,
    }


def _dry_forward(teacher) -> None:
    """Two blank images at the teacher's input size must give (2, num_classes) logits."""
    import torch

    size = teacher.input_size
    try:
        with torch.no_grad():
            logits = teacher.model(torch.zeros(2, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - the network's own error, in one line
        raise UserError(
            f"teacher {teacher.spec} fails on blank {size}-px images ({type(exc).__name__}: {first_line(exc)}); "
            "pass the size it was trained at with --input-size"
        ) from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, teacher.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(
            f"teacher {teacher.spec} returns {shape} for 2 images, not (2, {teacher.num_classes}) logits (one per "
            "class of its last Linear layer); return the logits alone from forward()"
        )


def _architecture(spec: str, config: ImportConfig, teacher) -> tuple[str, dict, Optional[str]]:
    """(arch, arch_kwargs, code sha256) to record: how a later run rebuilds the network before loading weights."""
    import torch.nn as nn

    from synth.teachers.checkpoint import read_teacher_payload
    from synth.teachers.user_code import code_sha256, is_code_spec, parse_code_spec, parse_kwargs

    kwargs = parse_kwargs(config.teacher_kwargs, "teacher_kwargs")
    if spec.startswith("timm:"):
        return spec, {**kwargs, "num_classes": teacher.num_classes}, None
    if spec.startswith("torchvision:"):
        return spec, {"num_classes": teacher.num_classes}, None
    if is_code_spec(spec) and not Path(spec).is_file():
        code = parse_code_spec(spec)
        return code.text, kwargs, code_sha256(code)
    payload = read_teacher_payload(spec)  # a teacher file: re-packed (new class names or preprocessing)
    assert isinstance(teacher.model, nn.Module)
    return payload["arch"], payload["arch_kwargs"], payload.get("code_sha256")
