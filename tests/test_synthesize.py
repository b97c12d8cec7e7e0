"""The synthesis engine and `dfkd synthesize`: unit order, quality on a real teacher, resume, refusals."""

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dfkd.cli import main
from synth.common.errors import UserError
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.inversion.invert import learning_rate
from synth.run.engine import synthesize
from synth.run.units import parse_classes, plan_units
from synth.shards.format import ShardDataset, list_shards
from synth.shards.verify import verify

SMALL = [
    "--classes",
    "0-3",
    "--per-class",
    "4",
    "--classes-per-batch",
    "2",
    "--images-per-class",
    "2",
    "--resolutions",
    "16,32",
    "--iterations",
    "6,6",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--units-per-shard",
    "1",
    "--quiet",
]


def _contents(root):
    out = {}
    for path in list_shards(root):
        with h5py.File(path, "r") as f:
            out[path.name] = {k: f[k][:] for k in ("images", "labels", "sample_ids", "teacher_logits")}
            out[path.name]["digest"] = f.attrs["digest"]
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])


def test_unit_order_and_sample_ids():
    units = plan_units([0, 1, 2, 3], per_class=4, classes_per_batch=2, images_per_class=2)
    assert [(u.id, u.classes, u.first_index) for u in units] == [
        (0, (0, 1), 0),
        (1, (2, 3), 0),
        (2, (0, 1), 2),
        (3, (2, 3), 2),
    ]
    assert units[1].labels == [2, 2, 3, 3]
    assert units[3].sample_ids().tolist() == [12, 13, 14, 15]
    with pytest.raises(UserError, match="does not divide"):
        plan_units([0, 1, 2], 2, 2, 2)


def test_parse_classes():
    assert parse_classes("all", 3) == [0, 1, 2]
    assert parse_classes("5,1-3", 10) == [1, 2, 3, 5]
    assert parse_classes([4, 2], 10) == [2, 4]
    with pytest.raises(UserError, match="outside the teacher's range 0-9"):
        parse_classes("8-12", 10)
    with pytest.raises(UserError, match="not 'all'"):
        parse_classes("a-b", 10)


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(0.25, i, 2000) for i in range(2000)]
    assert rates[0] == pytest.approx(0.0025) and rates[99] == pytest.approx(0.25)
    assert rates[-1] < 1e-5 and max(rates) == pytest.approx(0.25)
    assert learning_rate(0.25, 0, 10) == pytest.approx(0.25)  # short runs: a one-iteration warm-up


def test_real_teacher_run_lowers_loss_and_matches_targets(digits_teacher, tmp_path):
    # The 8-16-channel test teacher is too small for the intra-divergence terms (its 16-d embedding); the
    # 6-layer digits teacher of the demo reaches agreement 1.0 with them (bench/RESULTS.md).
    config = SynthesisConfig(
        teacher=digits_teacher,
        classes="all",
        per_class=2,
        classes_per_batch=10,
        images_per_class=2,
        threads=1,
        device="cpu",
        losses=LossWeights(bn=1.0, ep=0.0, triplet=0.0),
        schedule=Schedule(resolutions=(16, 32), iterations=(150, 150)),
    )
    summary = synthesize(config, tmp_path)
    assert summary["images"] == 20 and summary["complete"]
    assert summary["fidelity"] >= 0.9
    log = [json.loads(line) for line in (tmp_path / "logs" / "synthesis-rank0.jsonl").read_text().splitlines()]
    for first, last in log[0]["stage_totals"]:
        assert last < 0.7 * first
    assert verify(tmp_path).ok


def test_cli_json_output_and_noop_rerun(random_teacher, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["images"] == 16 and summary["shards_written"] == 4
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 4
    dataset = ShardDataset(tmp_path)
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2
    assert dataset.sample_ids.tolist() == list(range(16))
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in list_shards(tmp_path)}
    again = runner.invoke(main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL])
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    assert stamps == {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in list_shards(tmp_path)}


def test_kill_and_resume_is_identical_to_uninterrupted_run(random_teacher, tmp_path):
    args = ["synthesize", "--teacher", random_teacher, *SMALL[:-1], "--per-class", "8", "--iterations", "25,25"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert CliRunner().invoke(main, [*args, "--out", str(reference)]).exit_code == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "dfkd", *args, "--out", str(interrupted)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (interrupted / "shard-000001.h5").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait()
    done = len(list_shards(interrupted))
    assert 2 <= done < 8, f"the kill came too late to test resume ({done} shards)"
    result = CliRunner().invoke(main, [*args, "--out", str(interrupted), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["shards_skipped"] == done
    assert not list(interrupted.glob("*.tmp"))
    _assert_same(_contents(reference), _contents(interrupted))


def test_damaged_shard_is_regenerated_on_resume(random_teacher, tmp_path):
    args = ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = _contents(tmp_path)
    with h5py.File(tmp_path / "shard-000002.h5", "r+") as f:
        f["images"][0, 0, 0, 0] ^= 0x55
    assert not verify(tmp_path).ok
    result = CliRunner().invoke(main, [*args[:-1], "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["shards_regenerated"] == ["shard-000002.h5"]
    assert "shard-000002.h5 is damaged" in result.stderr
    _assert_same(before, _contents(tmp_path))


def test_different_config_refused_and_nothing_touched(random_teacher, tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL]).exit_code == 0
    )
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = runner.invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL, "--a-bn", "0.5"]
    )
    assert result.exit_code == 2
    assert "holds a different synthesis (--a-bn: 10.0 there, 0.5 now)" in result.stderr
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "0-9"], "class id 4 is outside the teacher's range 0-3"),
        (["--classes-per-batch", "1"], "--classes-per-batch must be >= 2"),
        (["--per-class", "3"], "--per-class 3 must be a positive multiple of --images-per-class 2"),
        (["--resolutions", "32,16"], "must increase from low to high"),
        (["--iterations", "5"], "must list the same number of stages"),
        (["--iterations", "5,x"], "must be a number"),
        (["--device", "tpu"], "device 'tpu' is not one of"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(random_teacher, tmp_path, extra, message):
    existing = tmp_path / "keep.txt"
    existing.write_text("precious")
    result = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path), *SMALL, *extra]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert existing.read_text() == "precious" and not list_shards(tmp_path)


def test_missing_teacher_and_recipe_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synthesize", "--teacher", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is not timm:<name>" in result.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synthesize:\n  per_clas: 4\n")
    result = runner.invoke(main, ["synthesize", "--config", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown setting 'per_clas'" in result.stderr


def test_recipe_values_and_overrides(random_teacher, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"synthesize:\n  teacher: {random_teacher}\n  per_class: 2\n  classes: 0-1\n"
        "  classes_per_batch: 2\n  images_per_class: 2\n  threads: 1\n  device: cpu\n"
        "  schedule: {resolutions: [16], iterations: [3]}\n  losses: {bn: 2.0, tv: 1e-3}\n"
    )
    result = CliRunner().invoke(
        main, ["synthesize", "--config", str(recipe), "--out", str(tmp_path / "o"), "--a-tv", "2e-3", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    config = ShardDataset(tmp_path / "o").config
    assert config["losses"]["bn"] == 2.0 and config["losses"]["tv"] == 2e-3 and config["schedule"]["iterations"] == [3]
    assert config["threads"] == 1 and config["classes"] == [0, 1]
