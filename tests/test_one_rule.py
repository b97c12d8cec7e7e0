"""One home per concept: every command takes its thread count from synth.common.runtime.use_threads, the teacher's
(and student's) mean/std tensors come from synth.teachers.teacher.normalization, and the training stage from
dfkd.distill.config (stage_of, distils)."""

import ast
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import synth.common.runtime
from dfkd.cli import main
from dfkd.distill.config import DistillConfig, stage_of

ROOT = Path(__file__).resolve().parent.parent


class Resolved(BaseException):
    """Raised by the patched rule: a BaseException, so no command turns it into an error line."""


def _stop_at_the_rule(monkeypatch) -> list[int]:
    """Make the thread rule's default stop the command, recording the processes it was asked for."""
    asked: list[int] = []

    def default_threads(processes: int = 1) -> int:
        asked.append(processes)
        raise Resolved

    monkeypatch.setattr(synth.common.runtime, "default_threads", default_threads)
    return asked


def test_every_command_without_threads_reaches_the_one_rule(random_teacher, tmp_path, monkeypatch):
    asked = _stop_at_the_rule(monkeypatch)
    commands = [
        ["synthesize", "--teacher", random_teacher, "--device", "cpu", "--out", str(tmp_path / "s")],
        ["distill", "--teacher", random_teacher, "--images", str(tmp_path), "--device", "cpu", "--out", str(tmp_path)],
        ["evaluate", "fidelity", str(tmp_path / "s"), "--teacher", random_teacher],
        ["train-teacher", "--out", str(tmp_path / "t.pt")],
        ["demo", "--fast", "--out", str(tmp_path / "demo")],
    ]
    for args in commands:
        with pytest.raises(Resolved):
            CliRunner().invoke(main, args)
    assert asked == [1] * len(commands)  # one process each: all the idle cores


def test_demo_threads_option_reaches_the_rule(tmp_path, monkeypatch):
    applied: list[int] = []

    def set_num_threads(threads: int) -> None:
        applied.append(threads)
        raise Resolved

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    with pytest.raises(Resolved):
        CliRunner().invoke(main, ["demo", "--fast", "--out", str(tmp_path), "--threads", "3"])
    assert applied == [3]


def _modules(*rooms: str):
    for room in rooms:
        for path in sorted((ROOT / room).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def _called(node: ast.AST) -> str:
    """The name a call calls (`torch.tensor` -> tensor), '' for anything else."""
    func = node.func if isinstance(node, ast.Call) else None
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def test_only_the_rule_sets_threads():
    setters = {
        path
        for path, tree in _modules("dfkd", "synth")
        for node in ast.walk(tree)
        if _called(node) in ("set_num_threads", "default_threads")
    }
    assert setters == {"synth/common/runtime.py"}


def test_only_normalization_makes_mean_std_tensors():
    builders = []
    for path, tree in _modules("dfkd", "synth", "bench"):
        for node in ast.walk(tree):
            if _called(node) in ("tensor", "as_tensor") and node.args:
                text = ast.unparse(node.args[0]).lower()
                if "mean" in text or "std" in text:
                    builders.append(path)
    assert builders == ["synth/teachers/teacher.py"] * 2  # normalization's mean and std


def _decides_stage(node: ast.AST) -> bool:
    """`stage == 1`, `stage != 2` or `epoch < config.stage1`: a decision about the training stage (a teacher's
    feature stage, `0 <= stage < num_stages`, is another thing)."""
    if not isinstance(node, ast.Compare):
        return False
    sides = (node.left, *node.comparators)
    names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in sides}
    equal_to_number = any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops) and any(
        isinstance(n, ast.Constant) and isinstance(n.value, int) for n in sides
    )
    return "stage1" in names or ("stage" in names and equal_to_number)


def test_only_the_stage_policy_decides_stages():
    deciders = {path for path, tree in _modules("dfkd") for node in ast.walk(tree) if _decides_stage(node)}
    assert deciders == {"dfkd/distill/config.py"}


@pytest.mark.parametrize(
    "epochs, stage1_epochs, stages",
    [(6, 5 / 6, [1, 1, 1, 1, 1, 2]), (3, 3, [1, 1, 1]), (3, 0, [2, 2, 2]), (4, 1, [1, 2, 2, 2])],
)
def test_stage_of_each_epoch(epochs, stage1_epochs, stages):
    config = DistillConfig(epochs=epochs, stage1_epochs=stage1_epochs)
    assert [stage_of(epoch, config) for epoch in range(epochs)] == stages
