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
    shipped = {Path(n).name for n in names if n.startswith("dfkd/recipes/")}
    assert shipped == {p.name for p in (ROOT / "dfkd" / "recipes").glob("*.yaml")} and "digits_fast.yaml" in shipped
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
    # dfkd.config.packaged_recipe's lookup, without importing dfkd (that would import torch: seconds)
    probe = (
        "import importlib.util, pathlib; spec = importlib.util.find_spec('dfkd'); "
        "print(pathlib.Path(spec.submodule_search_locations[0], 'recipes', 'digits_fast.yaml'))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site")},
    ).stdout.strip()
    assert Path(out).is_relative_to(tmp_path / "site") and Path(out).is_file()


def test_scikit_learn_is_a_core_dependency_and_kornia_is_gone():
    text = (ROOT / "pyproject.toml").read_text()
    core = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    assert "scikit-learn" in core and "kornia" not in text
    sources = "".join(p.read_text() for p in [*ROOT.glob("dfkd/**/*.py"), *ROOT.glob("synth/**/*.py")])
    assert not re.search(r"^\s*(import|from) kornia", sources, re.M)


def test_the_repository_refers_to_no_file_outside_it():
    pattern = re.compile(r"\.\./shared|SPEC\.md|DESIGN\.md|SPEC §|SPEC section")
    files = [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("bench/*"),
        *ROOT.glob("dfkd/**/*.py"),
        *ROOT.glob("dfkd/recipes/*.yaml"),
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
