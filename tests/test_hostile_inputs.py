"""Issue 11, "nothing lost, nothing silently wrong": the promises dfkd keeps against hostile inputs and directories.

Each test is one promise. Bad input: exit 2 and exactly one `error:` line naming the value or file (no traceback);
dfkd deletes or rewrites only files it can prove it wrote; readers refuse damaged, foreign or partial shard sets.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

from dfkd.cli import main
from synth.run import image_engines
from synth.shards.format import list_shards
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
    "2,2",
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
DISTILL = [
    "--distillation",
    "stored",
    "--student",
    "dearkd_pico_patch4_32",
    "--epochs",
    "1",
    "--stage1-epochs",
    "1",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--workers",
    "0",
    "--quiet",
]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def synth_args(teacher, out, *extra):
    """SMALL with `extra` options overriding its values."""
    args = list(SMALL)
    extra = [str(e) for e in extra]
    for i in range(0, len(extra) - 1):
        if extra[i] in args and extra[i].startswith("--") and extra[i] != "--quiet":
            j = args.index(extra[i])
            del args[j : j + 2]
    return ["synthesize", "--teacher", teacher, "--out", out, *args, *extra]


def one_line_error(result, *needles, code=2):
    """Exit `code`, exactly one stderr line `error: ...` containing every needle (besides the `warning:` line
    that --no-verify prints), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict:
    """Every file under root: (bytes, mtime_ns)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


def shard_bytes(root: Path) -> dict:
    return {p.name: p.read_bytes() for p in list_shards(root)}


@pytest.fixture(scope="module")
def made(random_teacher, tmp_path_factory) -> Path:
    """A finished tiny synthesis: 4 shards of one 2x2 unit each, 16 images."""
    out = tmp_path_factory.mktemp("made") / "shards"
    result = cli(*synth_args(random_teacher, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def other_seed(random_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed1") / "shards"
    result = cli(*synth_args(random_teacher, out, "--seed", "1"))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def copy(made, tmp_path) -> Path:
    target = tmp_path / "shards"
    shutil.copytree(made, target)
    return target


# --- 2. synthesize only ever touches what it wrote -------------------------------------------------------------


def test_synthesize_refuses_an_unrelated_non_empty_directory(random_teacher, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "report.tmp").write_text("half a report")
    before = snapshot(out)
    one_line_error(cli(*synth_args(random_teacher, out)), str(out), "not a dfkd synthesis")
    assert snapshot(out) == before
    (out / "manifest.json").write_text('{"tool": "someone else\'s"}')  # a manifest, but not dfkd's
    before = snapshot(out)
    one_line_error(cli(*synth_args(random_teacher, out)), "manifest.json", "not a dfkd manifest")
    assert snapshot(out) == before


def test_synthesize_deletes_only_its_own_tmp_files(random_teacher, copy, made):
    (copy / "shard-000003.h5").unlink()
    (copy / "shard-000003.h5.tmp").write_bytes(b"stale")
    (copy / "manifest.json.tmp").write_text("{")
    (copy / "report.tmp").write_text("the user's")
    (copy / "shard-1.h5.tmp").write_text("not dfkd's name")
    result = cli(*synth_args(random_teacher, copy))
    assert result.exit_code == 0, result.output
    assert (copy / "report.tmp").read_text() == "the user's" and (copy / "shard-1.h5.tmp").exists()
    assert not (copy / "shard-000003.h5.tmp").exists() and not (copy / "manifest.json.tmp").exists()
    assert shard_bytes(copy) == shard_bytes(made)


# --- 3. distill never overwrites another run's results ----------------------------------------------------------


def test_distill_refuses_to_overwrite_another_runs_results(made, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "student.pth").write_bytes(b"someone's student")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = snapshot(out)
    one_line_error(cli("distill", "--shards", made, *DISTILL, "--out", out), "student.pth")
    assert snapshot(out) == before


# --- 4. resume and verify trust a shard only when it is the shard this run wants --------------------------------


def test_copied_shard_fails_verify_and_is_regenerated(random_teacher, copy, made):
    shutil.copy(copy / "shard-000000.h5", copy / "shard-000001.h5")
    report = verify(copy)
    assert not report.ok and "shard-000001.h5" in report.problems, report.as_dict()
    assert "sample_ids" in report.problems["shard-000001.h5"]
    inspected = cli("inspect", copy, "--quiet")
    assert inspected.exit_code == 2 and "verify: FAILED" in inspected.stdout
    result = cli(*synth_args(random_teacher, copy))
    assert result.exit_code == 0, result.output
    assert shard_bytes(copy) == shard_bytes(made) and verify(copy).ok


def test_shard_from_another_seed_is_not_kept(random_teacher, copy, made, other_seed):
    shutil.copy(other_seed / "shard-000002.h5", copy / "shard-000002.h5")
    report = verify(copy)
    assert not report.ok and "shard-000002.h5" in report.problems
    result = cli(*synth_args(random_teacher, copy))
    assert result.exit_code == 0, result.output
    assert shard_bytes(copy) == shard_bytes(made)


def test_verify_compares_with_the_manifest_digest(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["digest"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify(copy)
    assert not report.ok and "manifest" in report.problems["shard-000000.h5"]


# --- 5. consumers check integrity (or skip it, saying so) --------------------------------------------------------


def _damage_content(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["labels"][0] = (int(f["labels"][0]) + 1) % 4


def test_distill_refuses_damaged_shards_unless_no_verify(copy, tmp_path):
    _damage_content(copy / "shard-000001.h5")
    one_line_error(cli("distill", "--shards", copy, *DISTILL, "--out", tmp_path / "a"), "shard-000001.h5")
    assert not (tmp_path / "a").exists()
    result = cli("distill", "--shards", copy, *DISTILL, "--out", tmp_path / "b", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "not verified" in result.stderr


def test_fidelity_refuses_incomplete_and_partial_sets(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu", "--quiet"), "incomplete")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "shard-000002.h5").unlink()
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu", "--quiet"), "shard-000002.h5", "missing")
    result = cli("evaluate", "fidelity", copy, "--device", "cpu", "--no-verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 12 and "not verified" in result.stderr


def test_fidelity_refuses_a_digest_mismatch(copy):
    _damage_content(copy / "shard-000003.h5")
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu", "--quiet"), "shard-000003.h5", "digest")


def test_inspect_exits_2_when_verify_fails(copy):
    _damage_content(copy / "shard-000000.h5")
    result = cli("inspect", copy)
    assert result.exit_code == 2 and "verify: FAILED" in result.stdout and "shard-000000.h5" in result.stdout
    assert cli("inspect", copy.parent / "nothing").exit_code == 2


# --- 6. non-finite numbers and degenerate teachers are refused up front --------------------------------------------


@pytest.mark.parametrize(
    "option, value", [("--a-bn", "inf"), ("--a-ce", "nan"), ("--a-l2", "inf"), ("--triplet-margin", "nan")]
)
def test_non_finite_loss_weights_are_refused(random_teacher, tmp_path, option, value):
    one_line_error(cli(*synth_args(random_teacher, tmp_path / "o", option, value)), value)
    assert not (tmp_path / "o").exists()


def _teacher_with(tmp_path, random_teacher, **changes) -> Path:
    payload = torch.load(random_teacher, weights_only=True)
    payload.update(changes)
    path = tmp_path / "odd-teacher.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "changes", [{"std": [0.5, 0.0, 0.5]}, {"mean": [float("nan"), 0.5, 0.5]}, {"std": [float("inf")] * 3}]
)
def test_degenerate_teachers_are_refused(random_teacher, tmp_path, changes):
    teacher = _teacher_with(tmp_path, random_teacher, **changes)
    one_line_error(cli(*synth_args(str(teacher), tmp_path / "o")), str(teacher))
    assert not (tmp_path / "o").exists()


def test_a_unit_whose_loss_turns_non_finite_is_not_written(random_teacher, tmp_path, monkeypatch):
    real = image_engines.invert_batch

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        result.losses["total"] = float("nan")
        return result

    monkeypatch.setattr(image_engines, "invert_batch", poisoned)
    out = tmp_path / "o"
    one_line_error(cli(*synth_args(random_teacher, out)), "non-finite")
    assert not list_shards(out)
    monkeypatch.setattr(image_engines, "invert_batch", real)
    result = cli(*synth_args(random_teacher, out, "--units-per-shard", "4"))  # a failed start blocks nothing
    assert result.exit_code == 0, result.output


# --- 7. a failed start does not poison the output directory ---------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--lr", "-1"), ("--lr", "nan"), ("--seed", "-1"), ("--lr", "0")])
def test_bad_numbers_are_refused_before_anything_is_written(random_teacher, tmp_path, option, value):
    out = tmp_path / "o"
    one_line_error(cli(*synth_args(random_teacher, out, option, value)), value)
    assert not out.exists()


def test_a_run_that_wrote_no_shard_does_not_block_a_corrected_rerun(random_teacher, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(image_engines, "invert_batch", crash)
    out = tmp_path / "o"
    assert cli(*synth_args(random_teacher, out, "--lr", "1e6")).exit_code == 1
    monkeypatch.undo()
    result = cli(*synth_args(random_teacher, out))
    assert result.exit_code == 0, result.output


# --- 8. bounded work: absurd sizes are refused at once ---------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--classes", "0-1000000000"], "outside the teacher's range 0-3"),
        (["--per-class", "200000000"], "shards"),
        (["--per-class", "200000000", "--units-per-shard", "100000000"], "--units-per-shard 100000000"),
    ],
)
def test_absurd_synthesis_sizes_are_refused_quickly(random_teacher, tmp_path, extra, needle):
    start = time.monotonic()
    one_line_error(cli(*synth_args(random_teacher, tmp_path / "o", *extra)), needle)
    assert time.monotonic() - start < 10 and not (tmp_path / "o").exists()


def test_absurd_inspect_requests_are_refused_quickly(copy, tmp_path):
    start = time.monotonic()
    one_line_error(cli("inspect", copy, "--grid", tmp_path / "g.png", "--grid-classes", "0-100000000"), "range 0-3")
    one_line_error(cli("inspect", copy, "--grid", tmp_path / "g.png", "--per-class-grid", "100000"), "100000")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["num_shards"] = 1000000000
    (copy / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(cli("inspect", copy), "num_shards")
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu"), "num_shards")
    assert time.monotonic() - start < 20 and not (tmp_path / "g.png").exists()


# --- 9. the exit-code contract: exit 2 and one line naming the file or value -----------------------------------------


@pytest.mark.parametrize("content", [b"", os.urandom(256), None])
def test_unreadable_teacher_files_are_one_line(random_teacher, tmp_path, content):
    teacher = tmp_path / "teacher.pt"
    if content is None:  # a teacher dict with the right format marker but nonsense fields
        torch.save({"format": torch.load(random_teacher, weights_only=True)["format"], "arch": 5}, teacher)
    else:
        teacher.write_bytes(content)
    one_line_error(cli(*synth_args(str(teacher), tmp_path / "o")), str(teacher))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    one_line_error(cli(*synth_args(random_teacher, tmp_path / "o", "--teacher-weights", weights)), str(weights))


@pytest.mark.parametrize(
    "fields", [{"mean": "abc"}, {"arch_kwargs": [1]}, {"state_dict": None}, {"input_size": "x"}, {"class_names": 7}]
)
def test_malformed_teacher_dicts_are_one_line(random_teacher, tmp_path, fields):
    teacher = _teacher_with(tmp_path, random_teacher, **fields)
    one_line_error(cli(*synth_args(str(teacher), tmp_path / "o")), str(teacher))


def test_list_manifest_and_truncated_shards_name_the_file(copy):
    manifest = copy / "manifest.json"
    manifest.write_text("[1, 2]")
    one_line_error(cli("inspect", copy), "manifest.json")
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu"), "manifest.json")
    manifest.unlink()
    shard = copy / "shard-000001.h5"
    shard.write_bytes(shard.read_bytes()[:3000])
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu"), "shard-000001.h5")
    one_line_error(cli("evaluate", "fidelity", copy, "--device", "cpu", "--no-verify"), "shard-000001.h5")


def test_binary_config_and_bad_threads_are_one_line(copy, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_bytes(b"\xff\xfe\x00\x81binary")
    one_line_error(cli("inspect", copy, "--config", config), str(config))
    one_line_error(cli("evaluate", "fidelity", copy, "--threads", "-1"), "-1")


def test_corrupted_checkpoint_on_resume_is_one_line(made, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(os.urandom(100))
    one_line_error(cli("distill", "--shards", made, *DISTILL, "--out", out, "--resume"), "checkpoint.pt")


def test_click_usage_errors_are_one_line(random_teacher, tmp_path):
    one_line_error(cli("synthesize", "--out", tmp_path / "o", "--per-class", "many"), "many")
    one_line_error(cli("synthesize", "--bogus"), "--bogus")
    one_line_error(cli("no-such-command"), "no-such-command")
    one_line_error(cli("synthesize", "--teacher", random_teacher), "--out")


def test_distill_lr_error_names_the_value_typed(made, tmp_path):
    one_line_error(cli("distill", "--shards", made, *DISTILL, "--out", tmp_path / "r", "--lr", "-1"), "-1.0")
    one_line_error(cli("distill", "--shards", made, *DISTILL, "--out", tmp_path / "r", "--lr", "nan"), "nan")
    assert not (tmp_path / "r").exists()


def test_train_teacher_checks_out_before_training(tmp_path):
    start = time.monotonic()
    one_line_error(cli("train-teacher", "--out", tmp_path / "missing" / "t.pt", "--epochs", "1"), "missing")
    (tmp_path / "dir.pt").mkdir()
    one_line_error(cli("train-teacher", "--out", tmp_path / "dir.pt", "--epochs", "1"), "dir.pt")
    assert time.monotonic() - start < 10


def test_resolutions_must_strictly_increase(random_teacher, tmp_path):
    one_line_error(cli(*synth_args(random_teacher, tmp_path / "o", "--resolutions", "32,32")), "32, 32")


# --- 10. the same teacher under another path resumes ------------------------------------------------------------


def test_resume_with_the_teacher_named_by_another_path(random_teacher, copy, made, monkeypatch):
    (copy / "shard-000002.h5").unlink()
    monkeypatch.chdir(Path(random_teacher).parent)
    result = cli(*synth_args(os.path.relpath(random_teacher), copy))
    assert result.exit_code == 0, result.output
    assert shard_bytes(copy) == shard_bytes(made) and verify(copy).ok


# --- 11. a finished rerun touches nothing --------------------------------------------------------------------------


def test_finished_rerun_touches_nothing(random_teacher, copy):
    before = snapshot(copy)
    mode = copy.stat().st_mode
    os.chmod(copy, 0o555)  # read-only (root ignores it; the snapshot is the real check)
    try:
        result = cli(*synth_args(random_teacher, copy, "--json"))
    finally:
        os.chmod(copy, mode)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nothing_to_do"]
    assert snapshot(copy) == before


# --- fuzz: randomly corrupted shards and manifests never crash or hang the readers ----------------------------------


def _corrupt(root: Path, rng: random.Random) -> str:
    kind = rng.choice(["flip", "truncate", "manifest-json", "manifest-field", "labels", "attrs", "empty"])
    shard = root / f"shard-{rng.randrange(4):06d}.h5"
    if kind == "flip":
        data = bytearray(shard.read_bytes())
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        shard.write_bytes(bytes(data))
    elif kind == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "empty":
        shard.write_bytes(b"")
    elif kind == "manifest-json":
        text = (root / "manifest.json").read_text()
        cut = rng.randrange(len(text))
        (root / "manifest.json").write_text(text[:cut] + rng.choice(["", "}", "[", "\x00", "null"]))
    elif kind == "manifest-field":
        manifest = json.loads((root / "manifest.json").read_text())
        key = rng.choice(["num_shards", "shards", "complete", "config", "format_version"])
        manifest[key] = rng.choice([None, -1, "x", [1], {"a": 1}, 10**12, 2.5])
        (root / "manifest.json").write_text(json.dumps(manifest))
    else:
        try:
            with h5py.File(shard, "r+") as f:
                if kind == "labels":
                    f["labels"][rng.randrange(4)] = rng.choice([-5, 99, 2**40])
                else:
                    key = rng.choice(["config", "teacher", "num_classes", "format_version", "mean"])
                    value = rng.choice(["{", "null", -3, "x"])
                    if key in f.attrs:
                        del f.attrs[key]
                    f.attrs[key] = value
        except (OSError, RuntimeError, KeyError):  # an earlier corruption of this case broke the file already
            kind += " (on a broken file)"
    return kind


def test_fuzzed_shard_directories_never_crash_the_readers(made, tmp_path):
    rng = random.Random(11)
    start = time.monotonic()
    for case in range(30):
        root = tmp_path / f"case{case}"
        shutil.copytree(made, root)
        kinds = [_corrupt(root, rng) for _ in range(rng.randint(1, 2))]
        commands = [
            ("inspect", root),
            ("evaluate", "fidelity", root, "--device", "cpu", "--batch-size", "16"),
            ("evaluate", "fidelity", root, "--device", "cpu", "--no-verify"),
        ]
        for command in commands:
            result = cli(*command, "--quiet")
            where = (case, kinds, command[:2], result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (where, result.exception)
            assert "Traceback" not in result.output, where
            if result.exit_code == 2:
                lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
                if command[0] == "inspect" and "verify: FAILED" in result.stdout:
                    continue
                assert len(lines) == 1 and lines[0].startswith("error: "), where
                assert "shard-" in lines[0] or "manifest" in lines[0] or str(root) in lines[0], where
            else:
                assert result.exit_code == 0, where
        try:
            report = verify(root)
            assert report.ok == (cli("inspect", root, "--quiet").exit_code == 0)
        except Exception as exc:  # noqa: BLE001 - verify may only refuse with a UserError naming the file
            from synth.common.errors import UserError

            assert isinstance(exc, UserError) and ("manifest" in str(exc) or "shard-" in str(exc)), exc
    assert time.monotonic() - start < 60
