"""Recipes: plain YAML data validated against dataclasses, with command-line overrides (dotted keys)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from synth.common.errors import UserError, first_line

T = TypeVar("T")
SECTIONS = {
    "synthesize",
    "distill",
    "evaluate",
    "train_teacher",
    "import_teacher",
}  # one per command that reads a recipe
BASE = "base"  # the key of a recipe that names the recipe it states its differences from


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
    `path` is a file, or the name of a shipped recipe (`digits`, `df_dearkd_imagenet.yaml`). A recipe may name a
    base recipe (`base: NAME`) and state only what differs (see `inherited`)."""
    if not path:
        return {}
    data = inherited(resolve_recipe(path), path)
    if SECTIONS & data.keys():
        unknown = sorted(set(data) - SECTIONS)
        if unknown:
            raise UserError(
                f"recipe '{path}' has a section '{unknown[0]}' that no command reads; accepted: "
                f"{', '.join(sorted(SECTIONS))}"
            )
        return dict(data.get(section) or {})
    return data


def inherited(file: Path, name: str, chain: tuple[tuple[Path, str], ...] = ()) -> dict:
    """The settings of the recipe `file` over those of its base, if it names one (`base: NAME`: a file beside the
    recipe, `NAME` or `NAME.yaml`, else a shipped recipe), and so on down: mappings merge key by key (dotted keys,
    `optim.lr: 1e-3`, are nested mappings), anything else (lists, null) replaces the base's value."""
    seen = [*chain, (file.resolve(), name)]
    if file.resolve() in (p for p, _ in chain):
        raise UserError(f"recipe '{chain[0][1]}' has a cycle of bases: {' -> '.join(n for _, n in seen)}")
    data = _nested(_read_recipe(file, name))
    base = data.pop(BASE, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UserError(f"recipe '{name}': base must be the name or path of a recipe, not {base!r}")
    return _merged(inherited(_base_file(file, base, name), base, tuple(seen)), data)


def _read_recipe(file: Path, name: str) -> dict:
    """One recipe file's own mapping, as written."""
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"recipe '{name}' is not a readable UTF-8 YAML file ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"recipe '{name}' is not valid YAML: {_yaml_problem(file, name, exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe '{name}' must be a mapping of settings")
    return data


def _yaml_problem(file: Path, name: str, exc: yaml.YAMLError) -> str:
    """Where a YAML syntax error is (the file unless `name` is its path; line and column, counted from 1) and what
    it is, on one line."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return first_line(exc)
    problem = " ".join(str(getattr(exc, "problem", None) or first_line(exc)).split())
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    started = f" ({context} at line {start.line + 1}, column {start.column + 1})" if context and start else ""
    where = "" if Path(name).resolve() == file.resolve() else f"{file}, "
    return f"{where}line {mark.line + 1}, column {mark.column + 1}: {problem}{started}"


def _base_file(recipe: Path, base: str, name: str) -> Path:
    """The file of the base `base` that recipe `name` (at `recipe`) names."""
    beside = recipe.parent / base
    for candidate in (beside, beside.with_name(beside.name + ".yaml")):
        if candidate.is_file():
            return candidate
    if Path(base).parent == Path(".") and base.removesuffix(".yaml") in recipe_names():
        return packaged_recipe(base)
    raise UserError(
        f"recipe '{name}' names base '{base}', which is neither a file beside it nor a shipped recipe "
        f"({', '.join(recipe_names())})"
    )


def _nested(data: dict) -> dict:
    """`data` with dotted keys (`optim.lr`) as nested mappings, at every level."""
    result: dict = {}
    for key, value in data.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        value = _nested(value) if isinstance(value, dict) else value
        for part in reversed(parts[1:]):
            value = {part: value}
        result = _merged(result, {parts[0]: value})
    return result


def _merged(base: dict, over: dict) -> dict:
    """`over` laid on `base`: mappings merge key by key, any other value replaces the base's."""
    result = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = _merged(result[key], value) if both else value
    return result


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
