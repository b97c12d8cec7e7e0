"""torch and torchvision from different builds: one line saying how to reinstall the pair, not torchvision's
`operator torchvision::nms does not exist` from deep inside a command.

`guard()` (the CLI's start-up) imports nothing: it puts a finder in front of `import torchvision` that lets the real
import run and, when torchvision fails to load its operators against this torch (a RuntimeError from its __init__),
raises `InstallMismatch` (exit 1: the command and its inputs are fine, the installation is not). A command that never
imports torchvision never pays; one that does pays one wrapper call.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

import click

NAME = "torchvision"
INDEX = "https://download.pytorch.org/whl/"


class InstallMismatch(click.ClickException):
    """torchvision does not load against this torch; the CLI prints `error: ...` and exits 1."""

    exit_code = 1


def guard(name: str = NAME) -> None:
    """Check the pair when `name` is first imported (nothing now; nothing when it is already imported)."""
    if name not in sys.modules and not any(isinstance(f, _Finder) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(name))


def message(error: BaseException) -> str:
    """The one line: the two versions, torchvision's own first line, the command that reinstalls both."""
    torch, vision = _version("torch"), _version(NAME)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"torch {torch or '?'} and torchvision {vision or '?'} are not from the same build (torchvision: {first}); "
        f"reinstall both from one index: {reinstall_command(torch)}"
    )


def reinstall_command(torch: Optional[str]) -> str:
    """`pip install` of this torch version with the torchvision built for it, from the index its build tag names."""
    if not torch:
        return "pip install --force-reinstall torch torchvision"
    public, _, local = torch.partition("+")
    command = f"pip install --force-reinstall torch=={public} torchvision"
    if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+|xpu", local):
        return f"{command} --index-url {INDEX}{local}"
    if local:  # a build of its own (+git...): PyPI's pair
        return "pip install --force-reinstall torch torchvision"
    return command


class _Finder:
    """A meta path finder: finds `name` as the other finders do, with a loader that turns its RuntimeError into
    `InstallMismatch`."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:  # the finders after this one, in their order
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self)
                return spec
        return None


class _Loader:
    """Runs the real loader; on success gives the module its own loader back and retires the finder."""

    def __init__(self, loader, finder: _Finder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # what torchvision sees of itself is unchanged
        try:
            self.loader.exec_module(module)
        except RuntimeError as exc:
            raise InstallMismatch(message(exc)) from exc
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)

    def __getattr__(self, attr):
        return getattr(self.loader, attr)


def _version(distribution: str) -> Optional[str]:
    """An installed distribution's version, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
