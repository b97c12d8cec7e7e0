"""Input sizes that are not monotone (timm's dla34 and hrnet_w18_small, random weights): each stage's own size is tried,
a stage the teacher fails on is shown to it upsampled to the smallest size above it that it takes, and only a final
resolution the teacher fails on is refused."""

import json
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn as nn
from click.testing import CliRunner

from dfkd.cli import main
from synth.common.errors import UserError
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.invert import invert_batch
from synth.run.identity import identity
from synth.teachers.input_size import _takes, fit_resolutions, smallest_input
from synth.teachers.teacher import find_classifier_name, teacher_from_model

torch.set_num_threads(1)

SMALL = ["--classes", "0-1", "--per-class", "2", "--classes-per-batch", "2", "--images-per-class", "2"]
SMALL += ["--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def dla34() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("dla34", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def hrnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("hrnet_w18_small", pretrained=False, num_classes=10).eval()


def _probe(model: nn.Module) -> SimpleNamespace:
    """What fit_resolutions reads and sets on a teacher."""
    return SimpleNamespace(model=model, input_size=224, stage_inputs={}, min_input=None)


def _fitted(model: nn.Module, resolutions: tuple[int, ...]) -> SimpleNamespace:
    teacher = _probe(model)
    fit_resolutions(teacher, resolutions, "timm:test")
    return teacher


def test_the_sizes_dla34_and_hrnet_take_are_not_monotone(dla34, hrnet):
    assert _takes(dla34, 32) and not _takes(dla34, 24) and not _takes(dla34, 222) and _takes(dla34, 223)
    assert _takes(hrnet, 32) and not _takes(hrnet, 48) and _takes(hrnet, 64)


def test_a_stage_the_teacher_fails_on_is_shown_at_the_smallest_size_above_it_that_it_takes(dla34):
    teacher = _fitted(dla34, (16, 32))  # the digits recipe: the bisection said "at least 223 px" and refused it
    assert teacher.stage_inputs == {16: 31} and teacher.min_input == 31
    assert not any(_takes(dla34, size) for size in range(16, 31))


def test_each_stage_gets_its_own_size_when_no_one_size_serves(dla34, hrnet):
    teacher = _fitted(dla34, (16, 32, 48, 64))
    assert teacher.stage_inputs == {16: 31, 48: 63} and teacher.min_input is None
    teacher = _fitted(hrnet, (16, 40, 64))
    assert teacher.stage_inputs == {16: 29, 40: 61} and teacher.min_input is None
    assert not any(_takes(hrnet, size) for size in range(41, 61))


def test_a_teacher_that_takes_every_stage_is_left_as_it_is(dla34):
    teacher = _fitted(dla34, (32, 64))
    assert teacher.stage_inputs == {} and teacher.min_input is None


def test_a_monotone_teacher_gets_the_size_the_bisection_found():
    """A DenseNet-like pooling stack takes every size from 29 px, no multiple of its stride: sets that recorded
    teacher_min_input 29 keep it, so they resume."""
    model = nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2), nn.AvgPool2d(2))
    model.append(nn.AvgPool2d(2))
    assert smallest_input(model, 16, 64) == 29
    teacher = _fitted(model, (8, 16, 32))
    assert teacher.stage_inputs == {8: 29, 16: 29} and teacher.min_input == 29


@pytest.mark.parametrize(
    ("name", "resolutions", "near"),
    [("dla34", (16, 48), "32 px or 63 px"), ("dla34", (16, 24), "at 31 px,"), ("hrnet", (16, 48), "32 px or 61 px")],
)
def test_a_final_resolution_the_teacher_fails_on_is_refused_with_the_nearest_sizes_it_takes(
    request, name, resolutions, near
):
    with pytest.raises(UserError) as error:
        _fitted(request.getfixturevalue(name), resolutions)
    message = str(error.value)
    assert f"final resolution {resolutions[-1]} px" in message and near in message and "\n" not in message


def _teacher(model: nn.Module):
    return teacher_from_model(model, "timm:dla34", (0.5,) * 3, (0.5,) * 3, 224, find_classifier_name(model))


def test_the_identity_gains_a_key_only_when_no_one_size_serves(dla34):
    config = SynthesisConfig(teacher="timm:dla34")
    teacher = _teacher(dla34)
    fit_resolutions(teacher, (16, 32), "timm:dla34")
    recorded = identity(config, teacher, [0])
    assert recorded["teacher_min_input"] == 31 and "teacher_input_sizes" not in recorded
    fit_resolutions(teacher, (16, 32, 48, 64), "timm:dla34")
    recorded = identity(config, teacher, [0])
    assert recorded["teacher_input_sizes"] == {"16": 31, "48": 63} and "teacher_min_input" not in recorded


def test_the_inversion_shows_the_teacher_each_stage_at_its_size(dla34):
    teacher = _teacher(dla34)
    resolutions = (16, 32, 48, 64)
    fit_resolutions(teacher, resolutions, "timm:dla34")
    seen = []
    hook = dla34.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    try:
        schedule = Schedule(resolutions=resolutions, iterations=(1,) * 4, jitter=0.0, flip=False)
        labels, weights = torch.tensor([0, 1]), LossWeights(ep=0.0, triplet=0.0)
        result = invert_batch(teacher, labels, weights, schedule, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen == [31, 32, 63, 64, 64] and result.images.shape == (2, 64, 64, 3)


@pytest.fixture(scope="module")
def dla34_weights(dla34, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dla34") / "dla34.pth"
    torch.save(dla34.state_dict(), path)
    return str(path)


def test_dfkd_synthesize_runs_the_digits_recipe_on_dla34_and_resumes(dla34_weights, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--config", "digits", "--teacher", "timm:dla34", "--teacher-weights", dla34_weights]
    args += [*SMALL, "--iterations", "1,1", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 4 and "upsampled (bilinear) to 31 px" in result.stderr
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["teacher_min_input"] == 31 and config["schedule"]["resolutions"] == [16, 32]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "nothing to do" in again.stdout, again.output


def test_dfkd_synthesize_refuses_a_final_resolution_dla34_fails_on(dla34_weights, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--teacher", "timm:dla34", "--teacher-weights", dla34_weights, *SMALL]
    result = CliRunner().invoke(main, [*args, "--resolutions", "16,48", "--iterations", "1,1", "--out", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "final resolution 48 px" in result.stderr and "32 px or 63 px" in result.stderr
    assert not out.exists()
