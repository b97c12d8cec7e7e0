"""A non-editable install ships the recipes: build the wheel (offline), list it, install it into a separate folder and
resolve the demo's recipe from there, outside the source tree. Also: declared dependencies cover what is imported."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_recipes_and_the_demo_finds_them_outside_the_source_tree(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path / "wheel"),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheel").glob("dfkd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("dfkd/recipes/") and n.endswith(".yaml")}
    assert shipped == {p.name for p in (ROOT / "recipes").glob("*.yaml")} and "digits_fast.yaml" in shipped
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel_recipe = Path(_resolve_recipe("digits", tmp_path, {"PYTHONPATH": str(tmp_path / "site")}, "-S"))
    assert wheel_recipe.is_relative_to(tmp_path / "site") and wheel_recipe.is_file()
    # the development install (editable) resolves the same name to the repository's top-level recipes/
    editable_recipe = Path(_resolve_recipe("digits", tmp_path, {}))
    assert editable_recipe == ROOT / "recipes" / "digits.yaml"
    assert wheel_recipe.read_bytes() == editable_recipe.read_bytes()


def _resolve_recipe(name: str, cwd: Path, env: dict, *flags: str) -> str:
    """dfkd.recipe_loader.packaged_recipe's lookup (importlib.resources on the package dfkd.recipes) in a fresh interpreter,
    without importing dfkd's modules (that would import torch: seconds)."""
    probe = (
        "import importlib.resources, importlib.util, sys; "
        "sys.modules['dfkd'] = importlib.util.module_from_spec(importlib.util.find_spec('dfkd')); "
        f"print(importlib.resources.files('dfkd.recipes').joinpath('{name}.yaml'))"
    )
    run = subprocess.run(
        [sys.executable, *flags, "-c", probe], check=True, capture_output=True, text=True, cwd=cwd, env=env or None
    )
    return run.stdout.strip()


def test_every_package_folder_is_listed_in_pyproject():
    """The package-dir mapping of recipes/ needs the packages listed by hand: a new subpackage must be added there."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"((?:dfkd|synth)(?:\.\w+)*)"', text[text.index("packages = [") :]))
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("dfkd", "synth")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert folders | {"dfkd.recipes"} == listed


CARD = ("torch", "torchvision", "timm", "kornia", "lpips", "h5py", "click")  # the design card's packages


def test_the_cards_packages_and_scikit_learn_are_core_dependencies_and_kornia_is_imported():
    text = (ROOT / "pyproject.toml").read_text()
    core = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    declared = set(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', core, re.M))
    assert set(CARD) | {"scikit-learn"} <= declared, set(CARD) - declared
    sources = "".join(p.read_text() for p in [*ROOT.glob("dfkd/**/*.py"), *ROOT.glob("synth/**/*.py")])
    assert re.search(r"^from kornia", sources, re.M)  # declared because the augmentation runs on it


def test_the_repository_refers_to_no_file_outside_it():
    pattern = re.compile(r"\.\./shared|SPEC\.md|DESIGN\.md|SPEC §|SPEC section")
    files = [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("bench/*"),
        *ROOT.glob("dfkd/**/*.py"),
        *ROOT.glob("recipes/*.yaml"),
        *ROOT.glob("synth/*.py"),
        *ROOT.glob("tests/*.py"),
    ]
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in files
        if p.is_file() and p.name != "test_packaging.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders
    command = 'pip install -e ".[dev]" && ruff format --check . && ruff check . && python -m pytest'
    assert command in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(command)
