"""`dfkd synthesize --engine generator`: a class-conditional generator adapted to each unit from meta-learned weights
(Fast-DFKD). Determinism, resume after an interrupt, torchrun, refusals, what the set records, a student trained on
it, and the teacher passes per image."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import synth.run.engine
from dfkd.cli import main
from synth.config import SynthesisConfig
from synth.generator.chains import GeneratorEngine
from synth.shards.format import list_shards
from synth.shards.verify import verify

SETTINGS = [
    "--classes",
    "0-3",
    "--per-class",
    "6",
    "--classes-per-batch",
    "2",
    "--images-per-class",
    "2",
    "--resolutions",
    "8,16",
    "--units-per-shard",
    "1",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--engine",
    "generator",
    "--generator-width",
    "8",
    "--generator-steps",
    "2",
    "--warmup-steps",
    "3",
]
UNITS = 6  # 2 class groups x 3 rounds, one unit per shard


def _synthesize(teacher, out, *extra):
    result = CliRunner().invoke(main, ["synthesize", "--teacher", teacher, "--out", str(out), *SETTINGS, *extra])
    assert result.exit_code == 0, result.output
    return result


def _contents(root):
    """{shard name: (digest, images, labels, sample_ids, logits)} of a set."""
    contents = {}
    for path in list_shards(root):
        with h5py.File(path, "r") as f:
            keys = ("images", "labels", "sample_ids", "teacher_logits")
            contents[path.name] = (f.attrs["digest"], *(f[key][:] for key in keys))
    return contents


def _assert_same(expected, actual):
    assert list(expected) == list(actual) and len(actual) == UNITS
    for name in expected:
        for a, b in zip(expected[name], actual[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.fixture(scope="module")
def reference(random_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("generator")
    _synthesize(random_teacher, out, "--json")
    return out


def test_a_seed_gives_the_same_set_and_no_state_is_left(random_teacher, reference, tmp_path):
    _synthesize(random_teacher, tmp_path / "again", "--quiet")
    _assert_same(_contents(reference), _contents(tmp_path / "again"))
    assert not list(reference.glob("generator-chain-*")), "a finished set holds no chain state"
    other = _contents(reference)
    _synthesize(random_teacher, tmp_path / "seed1", "--quiet", "--seed", "1")
    assert _contents(tmp_path / "seed1")["shard-000000.h5"][0] != other["shard-000000.h5"][0]


class Interrupted(BaseException):
    """Stands for kill -9 after a shard (a BaseException: nothing turns it into an error line)."""


def _interrupt_after(monkeypatch, shard):
    original = GeneratorEngine.shard_done

    def shard_done(self, index):
        original(self, index)
        if index == shard:
            raise Interrupted

    monkeypatch.setattr(GeneratorEngine, "shard_done", shard_done)


def test_resume_after_an_interrupt_is_byte_identical(random_teacher, reference, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        CliRunner().invoke(
            main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *SETTINGS], catch_exceptions=False
        )
    monkeypatch.undo()
    assert [p.name for p in list_shards(out)] == [f"shard-00000{k}.h5" for k in range(3)]
    assert [p.name for p in out.glob("generator-chain-*")] == ["generator-chain-000000.pt"]
    report = verify(out)  # the state file is no shard: verify (and inspect, export) read past it
    assert not report.problems and len(report.missing) == UNITS - 3
    resumed = _synthesize(random_teacher, out, "--quiet")
    assert "replaying" not in resumed.stderr  # it started from the saved state
    _assert_same(_contents(reference), _contents(out))
    assert not list(out.glob("generator-chain-*"))


def test_without_its_state_or_with_a_damaged_shard_the_chain_is_replayed(random_teacher, reference, tmp_path):
    out = tmp_path / "replayed"
    _synthesize(random_teacher, out, "--quiet")
    (out / "shard-000004.h5").unlink()  # a hole after finished shards, no saved state: replay 0-3
    (out / "shard-000001.h5").write_bytes(b"damaged")
    (out / "generator-chain-000000.pt.tmp").write_bytes(b"left by a crash")
    result = _synthesize(random_teacher, out)
    assert "replaying finished shard(s) [0] of generator chain 0" in result.stderr
    assert "replaying finished shard(s) [2, 3] of generator chain 0" in result.stderr
    _assert_same(_contents(reference), _contents(out))
    assert not list(out.glob("generator-chain-*"))


def test_chains_split_the_work_and_the_set_is_the_same_under_torchrun(random_teacher, tmp_path):
    """Two chains: one process or two give the same set (each process runs its own chains)."""
    one = tmp_path / "one"
    _synthesize(random_teacher, one, "--quiet", "--generator-chains", "2")
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dfkd"]
    command += ["synthesize", "--teacher", random_teacher, "--out", str(two), *SETTINGS, "--generator-chains", "2"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same(_contents(one), _contents(two))
    for rank in (0, 1):  # rank r ran chain r: the shards k with k mod 2 = r
        log = [json.loads(line) for line in (two / "logs" / f"synthesis-rank{rank}.jsonl").read_text().splitlines()]
        assert {r["shard"] for r in log} == set(range(rank, UNITS, 2))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--generator-steps", "0"], "error: --generator-steps must be >= 1, not 0"),
        (["--meta-lr", "1.5"], "error: --meta-lr must be in (0, 1]"),
        (["--generator-lr", "0"], "error: --generator-lr must be a finite number > 0, not 0.0"),
        (["--generator-chains", "0"], "error: --generator-chains must be >= 1, not 0"),
        (["--generator-augment", "zoom"], "zoom"),
        (["--noise-lr", "-1"], "error: --noise-lr must be a finite number >= 0 (0: fixed noise), not -1.0"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(random_teacher, tmp_path, extra, message):
    out = tmp_path / "refused"
    result = CliRunner().invoke(main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *SETTINGS, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_a_non_finite_loss_stops_the_unit_with_one_line(random_teacher, tmp_path):
    out = tmp_path / "nan"
    result = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *SETTINGS, "--generator-lr", "1e38"]
    )
    assert result.exit_code == 2, result.output
    assert "unit 0 (classes [0, 1]) ended with a non-finite loss" in result.stderr
    assert not list_shards(out)


def test_the_manifest_and_card_record_the_engine_and_pixel_sets_keep_their_identity(reference, random_teacher):
    config = json.loads((reference / "manifest.json").read_text())["config"]
    assert config["engine"] == "generator" and config["generator"]["steps"] == 2 and config["generator"]["meta"]
    assert config["schedule"] == {"resolutions": [16], "jitter": 30 / 224, "flip": True}
    with h5py.File(reference / "shard-000000.h5", "r") as f:
        assert json.loads(f.attrs["config"]) == config
    card = (reference / "README.md").read_text()
    assert "a class-conditional generator (Fast-DFKD) adapted to each batch in 2 Adam steps" in card
    from synth.run.identity import engine_identity

    assert engine_identity(SynthesisConfig(teacher="t.pt", generator=config_without_meta())) == {}
    off = engine_identity(SynthesisConfig(teacher="t.pt", engine="generator", generator=config_without_meta()))
    assert "meta_lr" not in off["generator"] and "chains" not in off["generator"]


def config_without_meta():
    from synth.config import GeneratorSettings

    return GeneratorSettings(meta=False, steps=7)


def test_distill_trains_on_the_generator_set(reference, random_teacher, tmp_path):
    args = ["distill", "--shards", str(reference), "--teacher", random_teacher, "--student", "dearkd_pico_patch4_32"]
    args += ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "student.pth").is_file()


def test_teacher_passes_per_image_are_the_steps(random_teacher, tmp_path, monkeypatch):
    """Teacher forwards of a unit's batch: its steps + 1 (the stored logits), here (3 + 1) + 5 x (2 + 1) = 19 for
    6 units, against the pixel engine's iterations + 1 per unit."""
    batches: list[int] = []
    load = synth.run.engine.load_teacher

    def counted(*args, **kwargs):
        teacher = load(*args, **kwargs)
        teacher.model.register_forward_pre_hook(lambda module, inputs: batches.append(len(inputs[0])))
        return teacher

    monkeypatch.setattr(synth.run.engine, "load_teacher", counted)
    _synthesize(random_teacher, tmp_path / "counted", "--quiet")
    assert batches.count(4) == (3 + 1) + (UNITS - 1) * (2 + 1)
    batches.clear()
    pixels = [a for a in SETTINGS[: SETTINGS.index("--engine")]] + ["--iterations", "10,10"]
    result = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(tmp_path / "p"), *pixels]
    )
    assert result.exit_code == 0, result.output
    assert batches.count(4) == UNITS * (20 + 1)


def test_learned_noise_changes_the_images_is_seeded_and_is_recorded(random_teacher, reference, tmp_path):
    _synthesize(random_teacher, tmp_path / "a", "--quiet", "--noise-lr", "0.05")
    _synthesize(random_teacher, tmp_path / "b", "--quiet", "--noise-lr", "0.05")
    learned = _contents(tmp_path / "a")
    _assert_same(learned, _contents(tmp_path / "b"))
    assert not np.array_equal(learned["shard-000000.h5"][1], _contents(reference)["shard-000000.h5"][1])
    config = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]
    assert config["generator"]["noise_lr"] == 0.05
    assert "noise_lr" not in json.loads((reference / "manifest.json").read_text())["config"]["generator"]
    assert "its noise learned too, Adam lr 0.05" in (tmp_path / "a" / "README.md").read_text()
