"""Networks from the user's own code: `package.module:factory` or `path/to/model.py:factory`, a callable (a class or a
function) returning an `nn.Module`. This imports and runs that code, as `python model.py` would."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from synth.common.errors import UserError, first_line

if TYPE_CHECKING:  # torch loads only to build a network: checking a spec or kwargs needs none
    import torch.nn as nn

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class CodeSpec:
    """Where a factory lives: a module path or a .py file, and the factory's (dotted) name in it."""

    module: str
    factory: str
    file: Optional[Path] = None  # the .py file, for file specs

    @property
    def text(self) -> str:
        """The spec as the user writes it (file specs with an absolute path)."""
        return f"{self.file if self.file is not None else self.module}:{self.factory}"


def is_code_spec(spec: str) -> bool:
    """Whether `spec` names user code (`pkg.module:factory` or `file.py:factory`), not timm:/torchvision:/a file."""
    if spec.startswith(("timm:", "torchvision:")) or ":" not in spec:
        return False
    location, _, factory = spec.rpartition(":")
    return bool(factory) and (location.endswith(".py") or bool(_MODULE_SPEC.match(spec)))


def parse_code_spec(spec: str) -> CodeSpec:
    """Split `spec`; a file spec must name an existing .py file."""
    location, _, factory = spec.rpartition(":")
    if not factory.replace(".", "").replace("_", "a").isalnum():
        raise UserError(f"'{factory}' in '{spec}' is not a Python name; accepted: module:factory or file.py:factory")
    if location.endswith(".py"):
        file = Path(location).expanduser().resolve()
        if not file.is_file():
            raise UserError(f"'{location}' in '{spec}' does not exist; accepted: an existing file.py:factory")
        return CodeSpec(file.stem, factory, file)
    return CodeSpec(location, factory)


def code_sha256(spec: CodeSpec) -> str:
    """sha256 of the file that defines the factory (the .py file, or the module's source file)."""
    path = spec.file or _module_file(spec.module)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""


def build_from_code(spec: CodeSpec, kwargs: dict[str, Any], what: str = "teacher") -> nn.Module:
    """Import the factory and call it with `kwargs`; it must return an nn.Module."""
    import torch.nn as nn

    factory = load_factory(spec)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UserError(
            f"{what} {spec.text}({_kwargs_text(kwargs)}) failed: {first_line(exc)}; its parameters: "
            f"{_signature(factory)} (keyword arguments come from --{what}-kwargs)"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} {spec.text} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def accepts(factory: Callable, name: str) -> bool:
    """Whether `factory` takes a keyword argument `name` (or **kwargs)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def load_factory(spec: CodeSpec) -> Callable:
    """The factory object (importing its module or file)."""
    module = _import_file(spec) if spec.file is not None else _import_module(spec)
    target: Any = module
    for part in spec.factory.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise UserError(f"'{spec.module}' has no '{spec.factory}' (from '{spec.text}')")
    if not callable(target):
        raise UserError(f"'{spec.text}' is not callable; accepted: a class or function returning an nn.Module")
    return target


def _import_module(spec: CodeSpec):
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise UserError(
            f"cannot import '{spec.module}' ({first_line(exc)}); put its folder on PYTHONPATH, or name the file: "
            "path/to/model.py:factory"
        ) from None


def _import_file(spec: CodeSpec):
    """Import a .py file under a name derived from its path (the same file is imported once per process); its own
    folder is on sys.path while it runs, so it can import modules beside it."""
    assert spec.file is not None
    name = "dfkd_user_" + hashlib.sha256(str(spec.file).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, spec.file)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    folder = str(spec.file.parent)
    sys.path.insert(0, folder)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code failed at import
        del sys.modules[name]
        raise UserError(f"importing '{spec.file}' failed: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        sys.path.remove(folder)
    return module


def _module_file(module: str) -> Optional[Path]:
    found = importlib.util.find_spec(module.split(":")[0])
    return Path(found.origin) if found is not None and found.origin and found.origin.endswith(".py") else None


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _signature(factory: Callable) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(unknown)"


def parse_kwargs(value: Any, name: str) -> dict[str, Any]:
    """Keyword arguments: a mapping, or a JSON object as text (as --teacher-kwargs takes them)."""
    import json

    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} {value!r} is not a JSON object: {exc.msg} at column {exc.colno}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{name} {value!r} must be a JSON object of keyword arguments, e.g. '{{\"num_classes\": 10}}'")
    return parsed
