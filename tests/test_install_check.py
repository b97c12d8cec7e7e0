"""A torch and a torchvision from different builds (dfkd.cli.install_check): one line naming the reinstall command,
exit 1, instead of torchvision's `operator torchvision::nms does not exist`; nothing imported or paid otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfkd.cli import install_check
from dfkd.cli.install_check import InstallMismatch, guard, reinstall_command

BROKEN = 'raise RuntimeError("operator {name}::nms does not exist")\n'


def _package(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    return root


@pytest.fixture
def isolated(monkeypatch):
    """sys.meta_path and sys.modules restored after the test."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_package_that_fails_against_torch_names_the_reinstall(tmp_path, monkeypatch, isolated):
    monkeypatch.syspath_prepend(str(_package(tmp_path, "fakevision", BROKEN.format(name="fakevision"))))
    guard("fakevision")
    with pytest.raises(InstallMismatch) as caught:
        import fakevision  # noqa: F401
    text = caught.value.format_message()
    assert caught.value.exit_code == 1 and "\n" not in text
    assert "are not from the same build (torchvision: operator fakevision::nms does not exist)" in text
    assert "reinstall both from one index: pip install --force-reinstall torch" in text


def test_a_working_package_is_imported_as_it_is_and_the_guard_retires(tmp_path, monkeypatch, isolated):
    monkeypatch.syspath_prepend(str(_package(tmp_path, "goodvision", "VALUE = 1\n")))
    guard("goodvision")
    guard("goodvision")  # once only
    assert sum(isinstance(f, install_check._Finder) for f in sys.meta_path) == 1
    import goodvision

    assert goodvision.VALUE == 1 and type(goodvision.__spec__.loader).__name__ == "SourceFileLoader"
    assert goodvision.__loader__ is goodvision.__spec__.loader
    assert not any(isinstance(f, install_check._Finder) for f in sys.meta_path)


def test_the_guard_imports_nothing():
    code = (
        "import sys; from dfkd.cli.install_check import guard; guard(); "
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_says_one_line_and_exits_1(tmp_path):
    fake = _package(tmp_path / "site", "torchvision", BROKEN.format(name="torchvision"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "dfkd", "synthesize", "--config", "tiny_cpu", "--teacher", "t.pt", "--out", out]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: torch ") and "operator torchvision::nms does not exist" in lines[0]
    assert "reinstall both from one index: pip install --force-reinstall torch" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "torch, command",
    [
        (
            "2.5.1+cpu",
            "pip install --force-reinstall torch==2.5.1 torchvision --index-url https://download.pytorch.org/whl/cpu",
        ),
        (
            "2.5.1+cu121",
            "pip install --force-reinstall torch==2.5.1 torchvision --index-url https://download.pytorch.org/whl/cu121",
        ),
        ("2.5.1", "pip install --force-reinstall torch==2.5.1 torchvision"),
        ("2.6.0a0+git1234", "pip install --force-reinstall torch torchvision"),
        (None, "pip install --force-reinstall torch torchvision"),
    ],
)
def test_reinstall_command_keeps_torch_and_its_index(torch, command):
    assert reinstall_command(torch) == command
