"""One declaration per setting: a config dataclass field carries its default, help text, accepted values and
command-line flag; recipe validation (dfkd.recipe_loader) and the command-line options (dfkd.cli.options) read them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from synth.common.errors import UserError

MISSING = dataclasses.MISSING


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: bool | str = False,
    choices: Optional[Sequence[str]] = None,
    default_text: Optional[str] = None,
    path: Optional[str] = None,
    factory: Optional[Callable[[], Any]] = None,
    added: bool = False,
) -> Any:
    """A dataclass field with its documentation.

    `help`: one sentence for `--help` (the default is appended from the field, or `default_text`); `flag`: True
    for `--<name-with-dashes>`, a flag string such as "--a-bn" or "--logits/--no-logits", False for recipe-only
    settings; `choices`: the accepted values (checked by `check_choices` and offered by the option); `path`:
    "file" or "dir" for options naming one; `factory`: default_factory for nested configs; `added`: a setting
    added after a config's identity was fixed, left out of `identity_fields` at its default (so existing shard
    sets still resume)."""
    metadata = {
        "help": help,
        "flag": flag,
        "choices": tuple(choices) if choices else None,
        "default_text": default_text,
        "path": path,
        "added": added,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def identity_fields(config: Any) -> dict[str, Any]:
    """The fields of a config as plain data, without the `added` settings that are at their default."""
    data = dataclasses.asdict(config)
    return {
        f.name: data[f.name]
        for f in dataclasses.fields(config)
        if not (f.metadata.get("added") and getattr(config, f.name) == f.default)
    }


def check_choices(config: Any, where: str = "") -> None:
    """Refuse a field value outside the field's declared `choices` (one line naming the setting and what is accepted)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            name = f"{where}.{f.name}" if where else f.name
            raise UserError(f"{name} '{value}' is not one of {', '.join(choices)}")


def teacher_setting(
    help: str = "timm:<name>[.<tag>], torchvision:<name>, your own network as module:factory or file.py:factory "
    "(this imports and runs that code), or a teacher file (`dfkd train-teacher`, `dfkd import-teacher`).",
) -> Any:
    """The teacher spec, as every command that runs a teacher declares it."""
    return setting(None, help=help, flag=True)


def teacher_kwargs_setting() -> Any:
    """Keyword arguments of the teacher's builder (a JSON object on the command line, a mapping in a recipe)."""
    return setting(
        None,
        flag=True,
        default_text="none",
        help="Keyword arguments for the teacher's factory or timm.create_model, as a JSON object, e.g. "
        "'{\"num_classes\": 10}'.",
    )


def student_kwargs_setting() -> Any:
    """Keyword arguments of the factory of a student from the user's code (a JSON object, or a recipe mapping)."""
    return setting(
        None,
        flag=True,
        default_text="none",
        help="Keyword arguments for your own student's factory (module:factory or file.py:factory), as a JSON "
        "object, e.g. '{\"width\": 2}'; num_classes is passed when the factory takes it.",
    )


def trust_pickle_setting() -> Any:
    """Whether a whole pickled model may be loaded (unpickling runs code from the file)."""
    return setting(
        False,
        flag=True,
        help="Load a teacher saved whole with torch.save(model): unpickling runs code from the file, so only for "
        "files you trust.",
    )


def teacher_weights_setting() -> Any:
    """The teacher's weights file (overrides the library's cache and download)."""
    return setting(
        None, help="Weights file (state_dict, dict with state_dict/model, or .safetensors).", flag=True, path="file"
    )


def threads_setting(help: str = "CPU threads.") -> Any:
    """CPU threads; 0 applies synth.common.runtime's rule (the cores idle at start, shared among this machine's
    processes)."""
    return setting(0, help=help, flag=True, default_text="the idle cores")


def device_setting() -> Any:
    """Where the work runs (synth.common.runtime.resolve_device)."""
    return setting("auto", help="auto, cpu, cuda or cuda:N.", flag=True)


def check_device(name: str) -> None:
    """Refuse a device name other than auto, cpu, cuda or cuda:N."""
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N")


def check_teacher_options(config: Any) -> None:
    """The teacher options that need no teacher: teacher_kwargs is a JSON object, the preprocessing is well formed."""
    from synth.teachers.user_code import parse_kwargs

    parse_kwargs(config.teacher_kwargs, "teacher_kwargs")
    preprocessing = getattr(config, "preprocessing", None)
    if preprocessing is not None:
        preprocessing.validate()
