"""Recipes: plain YAML data validated against dataclasses, with command-line overrides (dotted keys)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from synth.errors import UserError, first_line

T = TypeVar("T")
SECTIONS = {"synthesize", "distill", "evaluate", "train_teacher"}  # one per command that reads a recipe


def recipe_names() -> list[str]:
    """Names of the shipped recipes (recipes/NAME.yaml in the repository, installed as the package dfkd.recipes)."""
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("dfkd.recipes").iterdir() if p.name.endswith(".yaml"))


def packaged_recipe(name: str) -> Path:
    """The path of a shipped recipe, by name (`digits` or `digits.yaml`), resolved with importlib.resources so that
    it works in any install (editable or not, from any working directory)."""
    from importlib.resources import files

    resource = files("dfkd.recipes").joinpath(name if name.endswith(".yaml") else f"{name}.yaml")
    if not resource.is_file():
        raise UserError(
            f"recipe '{name}' does not exist (a file path, or a shipped recipe: {', '.join(recipe_names())})"
        )
    return Path(str(resource))


def resolve_recipe(path: str) -> Path:
    """A recipe file path as given; or, when no such file exists and `path` is a bare name (no folder), the shipped
    recipe of that name."""
    file = Path(path)
    if file.is_file():
        return file
    if file.parent == Path("."):
        return packaged_recipe(path)
    raise UserError(f"recipe '{path}' does not exist")


def load_recipe(path: Optional[str], section: str) -> dict:
    """The `section` mapping of a YAML recipe (or the whole file when it has no such section); {} without a path.
    `path` is a file, or the name of a shipped recipe (`digits`, `df_dearkd_imagenet.yaml`)."""
    if not path:
        return {}
    file = resolve_recipe(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"recipe '{path}' is not a readable UTF-8 YAML file ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"recipe '{path}' is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe '{path}' must be a mapping of settings")
    if SECTIONS & data.keys():
        unknown = sorted(set(data) - SECTIONS)
        if unknown:
            raise UserError(
                f"recipe '{path}' has a section '{unknown[0]}' that no command reads; accepted: "
                f"{', '.join(sorted(SECTIONS))}"
            )
        return dict(data.get(section) or {})
    return data


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Copy of `data` with dotted-key overrides applied ("schedule.iterations": [..]); None values are skipped."""
    result = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = result
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return result


def build(cls: type[T], data: dict, where: str = "") -> T:
    """Instantiate dataclass `cls` from plain data, checking keys and types; nested dataclasses recurse."""
    if not isinstance(data, dict):
        raise UserError(f"setting '{where or cls.__name__}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown setting '{_join(where, unknown[0])}'; accepted: {', '.join(sorted(fields))}")
    values = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"missing required setting '{_join(where, missing[0])}'")
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if check:
        check()
    return instance


def as_dict(instance: Any) -> dict:
    """A dataclass config as plain JSON-able data."""
    return dataclasses.asdict(instance)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(kind: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"setting '{where}' must be a list, not {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"setting '{where}' must be true or false, not {value!r}")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise UserError(f"setting '{where}' must be a number ({kind.__name__}), not {value!r}") from None
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and value != number):
            raise UserError(f"setting '{where}' must be an integer, not {value!r}")
        return number
    if kind is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"setting '{where}' must be text, not {value!r}")
        return str(value)
    return value
