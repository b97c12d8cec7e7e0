"""The layout docs/architecture.md describes: small rooms, file names that say which module they are, short
functions, and libraries where they do the job (webdataset writes the export's tars)."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("dfkd", "synth")
MAX_MODULES_PER_ROOM = 12
MAX_FUNCTION_LINES = 60
SHARED_NAMES = {
    "__init__.py",
    "config.py",
}  # config.py: each command's settings, one per sibling room (the doc says why)


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_room_holds_more_than_twelve_modules():
    rooms = defaultdict(list)
    for path in modules():
        if path.name != "__init__.py":
            rooms[path.parent.relative_to(ROOT)].append(path.name)
    crowded = {str(room): len(names) for room, names in rooms.items() if len(names) > MAX_MODULES_PER_ROOM}
    assert not crowded, crowded


def test_two_modules_share_a_file_name_only_when_they_are_the_same_kind():
    by_name = defaultdict(list)
    for path in modules():
        by_name[path.name].append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1 and name not in SHARED_NAMES}
    assert not shared, shared


def test_every_function_is_at_most_sixty_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not long, long


def test_webdataset_writes_the_tars():
    users = [str(p.relative_to(ROOT)) for p in modules() if "tarfile" in p.read_text(encoding="utf-8")]
    assert not users, users


def test_every_exported_name_resolves():
    """The package faces hand on names from the rooms (some lazily): each of them must still be found there."""
    import importlib

    for package in ("dfkd", "dfkd.distill", "dfkd.evaluate", "dfkd.export", "synth", "synth.shards"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
