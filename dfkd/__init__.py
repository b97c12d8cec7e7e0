"""dfkd: data-free knowledge distillation from a CNN teacher into a DearKD vision transformer.

The Python API (docs/python.md): `dfkd.synthesize`, `dfkd.distill`, `dfkd.evaluate_accuracy`, `dfkd.evaluate_fidelity`,
`dfkd.evaluate_diversity` and `dfkd.load_teacher` (your own nn.Module, a spec or a teacher file), each returning a
`dfkd.Result`. Importing dfkd (and its command line) stays light: torch and timm load when a function or command
runs. `import dfkd.models` registers the DearKD students with timm."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from synth.common.errors import UserError

API = (
    "synthesize",
    "distill",
    "evaluate_accuracy",
    "evaluate_fidelity",
    "evaluate_diversity",
    "load_teacher",
    "Result",
)
__all__ = ["UserError", "lazy_exports", "models", *API]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports `exports[name]` (a module path) on first use of `name`, so
    that importing `package` does not import torch."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        return module if module.__name__ == f"{package}.{name}" else getattr(module, name)

    return __getattr__


# dfkd.distill is also the subpackage dfkd/distill, whose module is callable (dfkd.distill.__init__): either way
# dfkd.distill(...) is the API's function.
__getattr__ = lazy_exports(
    "dfkd", {"models": "dfkd.models", "distill": "dfkd.distill", **{n: "dfkd.api" for n in API if n != "distill"}}
)
