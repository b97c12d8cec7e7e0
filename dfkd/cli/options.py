"""Command-line options generated from config dataclasses (synth.common.settings): each setting's flag, type, accepted
values, help and `[default: ...]` come from its one field declaration."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Callable, Iterator, Optional

import click

from dfkd.recipe_loader import apply_overrides, build, load_recipe

PREFIX = "cfg__"  # click parameter names of generated options: cfg__losses__bn is the setting losses.bn
PRINT_CONFIG = "dfkd.print_config"  # the click context's mark of --print-config (dfkd.cli.common)
NAMES = "dfkd.setting_names"  # the click context's {setting: how errors name it} (recipe_settings, common_options)


def config_options(
    cls: type, only: Optional[tuple[str, ...]] = None, help: Optional[dict[str, str]] = None
) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per flagged field of `cls` (nested configs included, in field order).
    `only`: the dotted names to offer (a command that uses part of a shared config); `help`: per-command wording
    for some of them (the default shown still comes from the field)."""
    entries = [(name, f, kind) for name, f, kind in _flagged(cls) if only is None or name in only]

    def decorate(func: Callable) -> Callable:
        for name, f, kind in reversed(entries):  # click lists options in the order they are applied, last first
            func = _option(name, f, kind, (help or {}).get(name))(func)
        return func

    return decorate


def flagged_settings(cls: type) -> list[tuple[str, str]]:
    """(dotted name, flag) of every setting of `cls` that has a command-line flag (`losses.bn`, `--a-bn`)."""
    return [(name, _flag(f)) for name, f, _ in _flagged(cls)]


def _flag(f: dataclasses.Field) -> str:
    """A setting's flag: its declared flag string, else --<name-with-dashes>."""
    flag = f.metadata["flag"]
    return flag if isinstance(flag, str) else "--" + f.name.replace("_", "-")


def config_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The generated options the user gave, as dotted-key overrides of a recipe (`losses.bn`: 0.1)."""
    return {
        key[len(PREFIX) :].replace("__", "."): value
        for key, value in options.items()
        if key.startswith(PREFIX) and value is not None
    }


def recipe_settings(
    cls: type, section: str, config_path: Optional[str], options: dict[str, Any], extra: Optional[dict] = None
) -> Any:
    """The recipe's `section` (its base recipes included) with the options given (and `extra` overrides), built as
    `cls` and checked (and printed under --print-config: `show_if_asked`). Errors name each setting as the user gave
    it (`user_terms`), here and for the rest of the command (common_options reads the names from the context)."""
    recipe, overrides = load_recipe(config_path, section), config_overrides(options)
    names = user_terms(cls, overrides, _dotted_keys(recipe))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[NAMES] = names
    config = build(cls, apply_overrides(recipe, {**overrides, **(extra or {})}))  # common_options renames errors
    show_if_asked(section, config)
    return config


def user_terms(cls: type, flags_given: dict[str, Any], recipe_keys: set[str]) -> dict[str, str]:
    """{dotted setting: how an error names it}: the flag where the user typed it (or left it at its default), the
    recipe key where the recipe set it (`per_class (recipe key)`)."""
    return {
        name: f"{name} (recipe key)" if name in recipe_keys and name not in flags_given else flag.split("/")[0]
        for name, flag in flagged_settings(cls)
    }


def rename_settings(message: str, names: dict[str, str]) -> str:
    """`message` with each setting name it mentions (`per_class`, `schedule.resolutions`: names with `_` or `.`; a
    one-word name is also a word of prose) written as `names` says; a flag already given beside a name
    ("schedule.lr (--lr)") is dropped."""
    identifiers = [n for n in names if "_" in n or "." in n]  # one-word names (teacher, seed) are also prose
    pattern = "|".join(re.escape(n) for n in sorted(identifiers, key=len, reverse=True))
    if not pattern:
        return message
    message = re.sub(rf"(?<![\w.-])({pattern})(?![\w.]) \(--[a-z0-9-]+\)", r"\1", message)
    return re.sub(rf"(?<![\w.-])({pattern})(?![\w.]| \(recipe key\))", lambda m: names[m.group(1)], message)


def _dotted_keys(data: dict, prefix: str = "") -> set[str]:
    """The dotted names of every leaf of a nested recipe mapping."""
    keys: set[str] = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys |= _dotted_keys(value, f"{name}.") if isinstance(value, dict) else {name}
    return keys


def show_if_asked(section: str, config: Any) -> None:
    """Under --print-config: print `config` as a recipe (YAML, defaults filled in) and end the command, exit 0."""
    context = click.get_current_context(silent=True)
    if context is not None and context.meta.get(PRINT_CONFIG):
        import json

        import yaml

        plain = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists: plain YAML
        click.echo(yaml.safe_dump({section: plain}, sort_keys=False), nl=False)
        context.exit(0)


def format_default(value: Any) -> str:
    """How a default reads in --help: on/off, 1e-4, 0.25, 112,224."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value and abs(value) < 1e-3:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    return str(value)


def _flagged(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, type without Optional) of every flagged field, nested configs included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _flagged(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("flag"):
            yield f"{prefix}{f.name}", f, _without_optional(hints[f.name])


def _option(name: str, f: dataclasses.Field, kind: Any, help_text: Optional[str]) -> Callable[[Callable], Callable]:
    meta = f.metadata
    flag = _flag(f)
    text = help_text or meta["help"]
    default = meta["default_text"] or (None if f.default in (None, dataclasses.MISSING) else format_default(f.default))
    if default is not None and not (kind is bool and "/" not in flag):  # an on-only flag needs no default
        text = f"{text} [default: {default}]"
    param = PREFIX + name.replace(".", "__")
    if kind is bool:
        return click.option(flag, param, is_flag=True, default=None, help=text)
    return click.option(flag, param, type=_click_type(kind, meta), default=None, help=text)


def _without_optional(kind: Any) -> Any:
    """A field's type without Optional; str for any other union (the recipe check converts the text)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return kind


def _click_type(kind: Any, meta: dict) -> Any:
    if meta["choices"]:
        return click.Choice(meta["choices"])
    if meta["path"]:
        return click.Path(dir_okay=meta["path"] == "dir", file_okay=meta["path"] == "file")
    return kind if kind in (int, float) else str
