"""The Python API (docs/python.md): the commands as functions. Settings are the command's options as keyword arguments
(the flag's name with underscores: `--per-class` is `per_class`, `--a-bn` is `a_bn`), laid over `recipe=` (a shipped
recipe's name or a YAML file) and validated as the command line validates them; errors name the Python parameter.
Each function returns a Result: the fields of the command's `--json` output, as keys and as attributes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from synth.common.errors import UserError

if TYPE_CHECKING:
    import torch.nn as nn

    from synth.common.runtime import Progress
    from synth.teachers.teacher import Teacher

TeacherLike = Union[str, Path, "nn.Module", "Teacher"]


class Result(dict):
    """A command's result: the fields of its `--json` output, readable as `result["x"]` and `result.x`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"this result has no field '{name}'; fields: {', '.join(self)}") from None


def load_teacher(
    teacher: TeacherLike,
    *,
    weights: Optional[str] = None,
    teacher_kwargs: Optional[dict] = None,
    mean: Union[None, str, Sequence[float]] = None,
    std: Union[None, str, Sequence[float]] = None,
    input_size: Optional[int] = None,
    class_names: Union[None, str, Sequence[str]] = None,
    trust_pickle: bool = False,
) -> "Teacher":
    """A teacher as every function here takes it: an nn.Module of yours (mean=, std= and input_size= required),
    `timm:NAME`, `torchvision:NAME`, `module:factory`, `file.py:factory` or a teacher file; `mean`/`std` are numbers
    or a preset (imagenet, cifar10, cifar100, mnist, fashion-mnist, half, none); `class_names` a list or a file."""
    from synth.teachers.preprocessing import Preprocessing
    from synth.teachers.sources import TeacherOptions
    from synth.teachers.sources import load_teacher as load
    from synth.teachers.teacher import Teacher

    if isinstance(teacher, Teacher):
        return teacher
    preprocessing = Preprocessing(
        list(mean) if isinstance(mean, (list, tuple)) else mean,
        list(std) if isinstance(std, (list, tuple)) else std,
        input_size,
        list(class_names) if isinstance(class_names, (list, tuple)) else class_names,
    )
    return _in_python_terms(
        lambda: (
            preprocessing.validate(),
            load(
                teacher if not isinstance(teacher, Path) else str(teacher),
                options=TeacherOptions(weights, dict(teacher_kwargs or {}), preprocessing, trust_pickle),
            ),
        )[1],
        {"preprocessing." + k: k for k in ("mean", "std", "input_size", "class_names")},
    )


def synthesize(
    teacher: TeacherLike, out: Union[str, Path], recipe: Optional[str] = None, *, quiet: bool = False, **settings: Any
) -> Result:
    """`dfkd synthesize`: images from the teacher into verified HDF5 shards in `out` (resumes an interrupted run).
    Settings as `dfkd synthesize`'s options: per_class=, classes="0-3", resolutions=[16, 32], iterations=[200, 200],
    a_bn=10, seed=, threads=, ... (and mean=, std=, input_size=, class_names=, teacher_weights=, teacher_kwargs=
    for the teacher)."""
    from synth.config import SynthesisConfig
    from synth.run.engine import synthesize as run

    config, loaded = _configure(SynthesisConfig, "synthesize", recipe, teacher, settings)
    return Result(_in_python_terms(lambda: run(config, out, _progress("synthesize", quiet), teacher=loaded), {}))


def distill(
    shards: Union[str, Path, Sequence[Union[str, Path]]],
    teacher: TeacherLike,
    out: Union[str, Path],
    recipe: Optional[str] = None,
    *,
    quiet: bool = False,
    **settings: Any,
) -> Result:
    """`dfkd distill`: a student trained on `shards` (one directory or several) from `teacher`, written to `out`.
    Settings as `dfkd distill`'s options: student=, epochs=, batch_size=, distillation=, val_data=, threads=, ...;
    with a recipe, epochs= keeps its share of stage-1 and warm-up epochs, as the command does."""
    import torch.nn as nn

    from dfkd.distill.build import shards_teacher_record
    from dfkd.distill.config import DistillConfig, rescale_epochs
    from dfkd.distill.trainer import train_student

    roots = [str(shards)] if isinstance(shards, (str, Path)) else [str(s) for s in shards]
    settings = {**settings, "shards": ",".join(roots)}
    if isinstance(teacher, nn.Module):  # its preprocessing: as given, else as its shards recorded it
        record = shards_teacher_record(roots[0])
        channels = int(record.get("input_channels", 3))
        teacher = load_teacher(
            teacher,
            weights=settings.pop("teacher_weights", None),
            mean=settings.pop("mean", None) or (record.get("mean") or [None])[:channels] if record else None,
            std=settings.pop("std", None) or (record.get("std") or [None])[:channels] if record else None,
            input_size=record.get("input_size"),
            trust_pickle=settings.pop("trust_pickle", False),
        )
    config, loaded = _configure(DistillConfig, "distill", recipe, teacher, settings, rescale=rescale_epochs)
    return Result(_in_python_terms(lambda: train_student(config, out, _progress("distill", quiet), teacher=loaded), {}))


def evaluate_accuracy(
    data: Union[str, Path],
    student: Union[None, str, Path] = None,
    teacher: Optional[TeacherLike] = None,
    recipe: Optional[str] = None,
    *,
    quiet: bool = False,
    **settings: Any,
) -> Result:
    """`dfkd evaluate accuracy`: top-1/top-5 of a student (student.pth) and/or a teacher on a labelled image folder."""
    from dfkd.evaluate.accuracy import load_student, measure_accuracy, teacher_classifier
    from dfkd.evaluate.config import EvaluateConfig

    if student is None and teacher is None:
        raise UserError("evaluate_accuracy needs student= and/or teacher=")
    settings = {**settings, "data": str(data), **({"student": str(student)} if student is not None else {})}
    config, loaded = _configure(EvaluateConfig, "evaluate", recipe, teacher, settings)

    def measure() -> dict:
        models = {}
        if student is not None:
            models["student"] = load_student(config.student)
        if loaded is not None:
            models["teacher"] = teacher_classifier(loaded)
        return {
            "data": str(data),
            **{role: measure_accuracy(m, config.data, config, _progress(role, quiet)) for role, m in models.items()},
        }

    return Result(_in_python_terms(measure, {}))


def evaluate_fidelity(
    shards: Union[str, Path],
    teacher: Optional[TeacherLike] = None,
    recipe: Optional[str] = None,
    *,
    quiet=False,
    **settings,
) -> Result:
    """`dfkd evaluate fidelity`: how often the teacher's top-1 class is the target label of the shards' images (the
    teacher that made them when `teacher` is None)."""
    from dfkd.evaluate.config import EvaluateConfig
    from dfkd.evaluate.fidelity import measure_fidelity
    from synth.shards.format import ShardDataset
    from synth.teachers.sources import load_teacher as load
    from synth.teachers.sources import teacher_options, with_recorded_preprocessing

    config, loaded = _configure(EvaluateConfig, "evaluate", recipe, teacher, settings)
    if loaded is None:
        record = ShardDataset(str(shards)).teacher
        spec = record.get("spec")
        if not spec:
            raise UserError(f"the shards in '{shards}' name no teacher; pass teacher=")
        loaded = _in_python_terms(
            lambda: load(spec, options=with_recorded_preprocessing(spec, teacher_options(config), record)), {}
        )
    return Result(
        _in_python_terms(lambda: measure_fidelity(str(shards), loaded, config, _progress("fidelity", quiet)), {})
    )


def evaluate_diversity(shards: Union[str, Path], recipe: Optional[str] = None, *, quiet=False, **settings) -> Result:
    """`dfkd evaluate diversity`: the mean LPIPS distance between images of a class (lpips_backbone= names
    torchvision's AlexNet weights file when it is not in the torch hub cache)."""
    from dfkd.evaluate.config import EvaluateConfig
    from dfkd.evaluate.lpips_diversity import measure_lpips_diversity

    config, _ = _configure(EvaluateConfig, "evaluate", recipe, None, settings)
    return Result(_in_python_terms(lambda: measure_lpips_diversity(str(shards), config, _progress("lpips", quiet)), {}))


def parameters(cls: type) -> dict[str, str]:
    """{Python parameter: dotted setting} of a config class: each flagged setting's flag with underscores."""
    from dfkd.cli.options import flagged_settings

    return {flag.lstrip("-").split("/")[0].replace("-", "_"): name for name, flag in flagged_settings(cls)}


# the settings that build an in-memory teacher, by Python parameter -> load_teacher's keyword
_TEACHER_PARAMETERS = {
    "weights": "weights",
    "teacher_weights": "weights",
    "teacher_kwargs": "teacher_kwargs",
    "mean": "mean",
    "std": "std",
    "input_size": "input_size",  # distill's input_size is the student's: its teacher's size comes from the shards
    "class_names": "class_names",
    "trust_pickle": "trust_pickle",
}


def _configure(cls, section, recipe, teacher, settings, rescale=None):
    """(the config, the teacher loaded here or None): settings mapped onto the recipe and validated; an in-memory
    teacher (nn.Module or Teacher) is loaded here with its mean/std/input_size settings."""
    import torch.nn as nn

    from dfkd.distill.config import DistillConfig
    from dfkd.recipe_loader import apply_overrides, build, load_recipe
    from synth.teachers.teacher import Teacher

    names = parameters(cls)
    in_memory = isinstance(teacher, (nn.Module, Teacher))
    loaded = None
    if in_memory:
        taken = [k for k in _TEACHER_PARAMETERS if k in settings and not (k == "input_size" and cls is DistillConfig)]
        loaded = load_teacher(teacher, **{_TEACHER_PARAMETERS[k]: settings.pop(k) for k in taken})
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]}=; accepted: {', '.join(sorted(names))}")
    overrides = {names[k]: _plain(v) for k, v in settings.items()}
    if teacher is not None:
        overrides["teacher"] = _describe(teacher, loaded)
    reverse = {dotted: python for python, dotted in names.items()}

    def make():
        data = load_recipe(recipe, section)
        scaled = rescale(data, overrides)[0] if rescale is not None else {}
        return build(cls, apply_overrides(data, {**overrides, **scaled}))

    return _in_python_terms(make, reverse), loaded


def _describe(teacher: TeacherLike, loaded) -> str:
    """The teacher spec a config records: the spec given, or the loaded teacher's (python:Class in memory)."""
    return str(teacher) if loaded is None else loaded.spec


def _plain(value: Any) -> Any:
    """Settings as recipes hold them: paths as text, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _in_python_terms(call, names: dict[str, str]):
    """Run `call`; a UserError's flags (`--per-class`) and setting names (`schedule.resolutions`) become the Python
    parameters (`per_class`, `resolutions`)."""
    try:
        return call()
    except UserError as exc:
        raise UserError(python_terms(str(exc), names)) from None


def python_terms(message: str, names: dict[str, str]) -> str:
    """`message` with dotted setting names from `names` and `--flags` written as Python parameters."""
    from dfkd.cli.options import rename_settings

    message = rename_settings(message, names)
    return re.sub(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _progress(desc: str, quiet: bool) -> "Progress":
    """A tqdm bar on stderr and notes on stderr; nothing under quiet."""
    import sys

    from tqdm.auto import tqdm

    from synth.common.runtime import Progress

    state: dict[str, Any] = {}

    def start(total: int) -> None:
        state["bar"] = tqdm(total=total, desc=desc, unit="img", disable=quiet or not total, file=sys.stderr)

    def advance(n: int, info: dict) -> None:
        if "bar" in state:
            state["bar"].update(n)

    def close() -> None:
        if "bar" in state:
            state.pop("bar").close()

    def message(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr)

    return Progress(start=start, advance=advance, message=message, close=close)


__all__ = [
    "Result",
    "load_teacher",
    "synthesize",
    "distill",
    "evaluate_accuracy",
    "evaluate_fidelity",
    "evaluate_diversity",
    "parameters",
]
