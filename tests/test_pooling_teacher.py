"""Teachers whose pooling outgrows small feature maps (DenseNet at 16 px): a stage below the teacher's smallest
input shows it the view upsampled, recorded in the shard config; a final resolution below it is refused."""

import json

import pytest
import timm
import torch
from click.testing import CliRunner

from dfkd.cli import main
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.sources import load_teacher

SMALL = ["--classes", "0-1", "--per-class", "2", "--classes-per-batch", "2", "--images-per-class", "2"]
SMALL += ["--iterations", "2,2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def pooling_teacher(tmp_path_factory) -> str:
    """Six stages with 2x2 max pooling between them: it takes 32 px, and fails on 16 px (a 1x1 map pooled to 0x0)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 4, "widths": [4] * 6}
    model = timm.create_model("dfkd_cnn_tiny", **kwargs).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    path = tmp_path_factory.mktemp("pooling") / "pooling.pt"
    save_teacher_file(path, "dfkd_cnn_tiny", kwargs, model.eval(), (0.5,) * 3, (0.5,) * 3, 32)
    return str(path)


def test_the_pooling_teacher_fails_below_32_px(pooling_teacher):
    model = load_teacher(pooling_teacher).model
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 3, 16, 16))


def test_a_stage_below_the_teachers_smallest_input_shows_it_upsampled(pooling_teacher, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--teacher", pooling_teacher, *SMALL, "--resolutions", "16,32", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 4 and "upsampled (bilinear) to 32 px" in result.stderr
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["teacher_min_input"] == 32 and config["schedule"]["resolutions"] == [16, 32]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "nothing to do" in again.stdout, again.output


def test_a_final_resolution_below_it_is_refused_before_anything_is_written(pooling_teacher, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--teacher", pooling_teacher, *SMALL, "--resolutions", "8,16", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "at 32 px" in result.stderr and "final resolution 16 px" in result.stderr
    assert not out.exists()


def test_a_teacher_that_takes_every_stage_records_nothing_new(random_teacher, tmp_path):
    out = tmp_path / "shards"
    args = ["synthesize", "--teacher", random_teacher, *SMALL, "--resolutions", "8,16", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert "teacher_min_input" not in json.loads((out / "manifest.json").read_text())["config"]
