"""dfkd: data-free knowledge distillation from a CNN teacher into a DearKD vision transformer.

Importing dfkd (and its command line) stays light: torch and timm load when a command runs. `import dfkd.models`
registers the DearKD students with timm."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from synth.common.errors import UserError

__all__ = ["UserError", "lazy_exports", "models"]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports `exports[name]` (a module path) on first use of `name`, so
    that importing `package` does not import torch."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        return module if module.__name__ == f"{package}.{name}" else getattr(module, name)

    return __getattr__


__getattr__ = lazy_exports("dfkd", {"models": "dfkd.models"})
