"""`dfkd synthesize` under torchrun (2 CPU processes on gloo): same dataset as one process, a killed rank,
damaged shards, a refused config that stops every rank, and write failures that leave nothing half-written."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dfkd.cli import main
from synth.shards import format as shard_io
from synth.shards.format import list_shards
from synth.shards.verify import verify

SETTINGS = [
    "--classes",
    "0-3",
    "--per-class",
    "12",
    "--classes-per-batch",
    "2",
    "--images-per-class",
    "2",
    "--resolutions",
    "16,32",
    "--iterations",
    "10,10",
    "--units-per-shard",
    "1",
    "--seed",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
]
SHARDS, IMAGES = 12, 48
KEYS = ("images", "labels", "sample_ids", "teacher_logits")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="finds torchrun's workers through /proc")


def _args(teacher, out, *extra):
    return ["synthesize", "--teacher", teacher, "--out", str(out), *SETTINGS, *extra]


def _torchrun(teacher, out, *extra, env=None, wait=True):
    """`torchrun --standalone --nproc_per_node 2 -m dfkd synthesize ...`: the finished process, or the running one."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dfkd",
        *_args(teacher, out, *extra),
    ]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True
        )
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=240)


def _contents(root):
    out = {}
    for path in list_shards(root):
        with h5py.File(path, "r") as f:
            out[path.name] = {key: f[key][:] for key in KEYS}
            out[path.name]["digest"] = f.attrs["digest"]
            out[path.name]["config"] = f.attrs["config"]
    return out


def _assert_same(expected, actual):
    assert list(expected) == list(actual) == [shard_io.shard_name(k) for k in range(SHARDS)]
    for name in expected:
        for key, value in expected[name].items():
            np.testing.assert_array_equal(value, actual[name][key], err_msg=f"{name} {key}")
    ids = np.concatenate([actual[name]["sample_ids"] for name in actual])
    assert sorted(ids.tolist()) == list(range(IMAGES))  # none missing, none twice


def _summary(result):
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1, (result.stdout, result.stderr[-3000:])
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def reference(random_teacher, tmp_path_factory):
    """The dataset of one process (in-process CLI)."""
    out = tmp_path_factory.mktemp("one-process")
    result = CliRunner().invoke(main, _args(random_teacher, out, "--quiet"))
    assert result.exit_code == 0, result.output
    return _contents(out)


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of `parent`)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != parent:
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            found[int(env[b"RANK"])] = int(entry)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def _damage(out):
    """Truncate shard 1 (rank 1's), flip raw bytes of shard 0's first image chunk (rank 0's), leave a stale .tmp."""
    truncated, flipped = out / shard_io.shard_name(1), out / shard_io.shard_name(0)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with h5py.File(flipped, "r") as f:
        offset = f["images"].id.get_chunk_info(0).byte_offset
    with open(flipped, "r+b") as f:
        f.seek(offset + 5)
        byte = f.read(1)
        f.seek(offset + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    (out / "shard-000009.h5.tmp").write_bytes(b"left by a crash")
    return truncated.name, flipped.name


@pytest.fixture(scope="module")
def resumed(random_teacher, tmp_path_factory):
    """Two processes (OMP_NUM_THREADS differs from --threads on purpose): rank 1 is killed once shards 0 and 1
    exist, shard 1 (rank 1's) is truncated, bytes of shard 0 (rank 0's) are flipped, then the command is rerun."""
    out = tmp_path_factory.mktemp("two-processes")
    env = {"OMP_NUM_THREADS": "3"}
    process = _torchrun(random_teacher, out, "--quiet", env=env, wait=False)
    first = [out / shard_io.shard_name(k) for k in (0, 1)]
    try:
        deadline = time.time() + 180
        while not all(p.exists() for p in first) and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        workers = _workers(process.pid)
        assert 1 in workers, "torchrun's rank 1 was not found"
        os.kill(workers[1], signal.SIGKILL)  # a rank dies mid-run; torchrun stops the other one
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            for pid in _workers(process.pid).values():
                os.kill(pid, signal.SIGKILL)
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    if not all(p.exists() for p in first):
        pytest.fail(f"torchrun did not write shards 0 and 1: {stderr[-3000:]}")
    done = len(list_shards(out))
    truncated, flipped = _damage(out)
    report = verify(out)
    rerun = _torchrun(random_teacher, out, "--json", env=env)
    return {
        "out": out,
        "killed_returncode": process.returncode,
        "done": done,
        "damaged": (truncated, flipped),
        "report": report,
        "rerun": rerun,
    }


def test_two_processes_give_the_dataset_of_one(reference, resumed):
    out, result = resumed["out"], resumed["rerun"]
    summary = _summary(result)  # only rank 0 prints: stdout is exactly one JSON line
    assert summary["processes"] == 2
    assert summary["images"] == IMAGES and summary["complete"]  # every rank's shards, written or kept
    assert summary["fidelity"] == pytest.approx(
        np.mean([(v["teacher_logits"].argmax(1) == v["labels"]).mean() for v in reference.values()])
    )
    _assert_same(reference, _contents(out))  # identical images, labels, ids, logits, digests; no id missing or twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [s["file"] for s in manifest["shards"]] == list(reference)
    for rank in (0, 1):  # each rank did only its own shards (k % 2), at --threads, not OMP_NUM_THREADS
        log = [json.loads(line) for line in (out / "logs" / f"synthesis-rank{rank}.jsonl").read_text().splitlines()]
        assert {r["shard"] for r in log} == set(range(rank, SHARDS, 2))
        assert {r["threads"] for r in log} == {1}
    assert "synthesize (rank 0 of 2)" in result.stderr


def test_killed_rank_then_rerun_finishes_the_set(resumed):
    assert resumed["killed_returncode"] != 0
    done = resumed["done"]
    assert 2 <= done < SHARDS, f"the kill came too late to test resume ({done} shards)"
    assert len(resumed["report"].missing) == SHARDS - done
    summary = _summary(resumed["rerun"])
    assert summary["shards_skipped"] == done - 2 and summary["shards_written"] == SHARDS - done + 2
    assert not list(resumed["out"].glob("*.tmp"))


def test_damaged_shards_are_reported_and_regenerated(resumed):
    truncated, flipped = resumed["damaged"]
    assert set(resumed["report"].problems) == {truncated, flipped}  # verify names them
    result = resumed["rerun"]
    assert _summary(result)["shards_regenerated"] == sorted([truncated, flipped])
    assert f"[rank 1] shard {truncated} is damaged (unreadable" in result.stderr  # each rank checks its own
    assert f"shard {flipped} is damaged (content does not match its digest)" in result.stderr
    assert verify(resumed["out"]).ok


def test_config_refused_by_rank_0_stops_every_rank(resumed, random_teacher):
    out = resumed["out"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = _torchrun(random_teacher, out, "--a-bn", "0.5", "--json")  # would hang at a barrier without the check
    assert result.returncode != 0 and result.stdout == ""
    refusal = "holds a different synthesis (--a-bn: 10.0 there, 0.5 now)"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(refusal in line for line in errors), result.stderr[-3000:]
    assert any(line.startswith("error: rank 0 stopped the run: ") for line in errors)
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("where", ["h5py", "os.replace"])
def test_write_failure_leaves_no_partial_shard(random_teacher, tmp_path, monkeypatch, where):
    out = tmp_path / "shards"
    calls = {"n": 0}
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "h5py":  # the disk fills up in the middle of the second shard's file
        create = h5py.Group.create_dataset

        def create_dataset(self, name, *args, **kwargs):
            if name == "teacher_logits":
                calls["n"] += 1
                if calls["n"] == 2:
                    raise no_space
            return create(self, name, *args, **kwargs)

        monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    else:  # ... or when the finished file is renamed into place
        replace = os.replace

        def fake_replace(src, dst, *args, **kwargs):
            if str(src).endswith(".h5.tmp"):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise no_space
            return replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(shard_io.os, "replace", fake_replace)
    result = CliRunner().invoke(main, _args(random_teacher, out, "--per-class", "4", "--quiet"))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: OSError: [Errno {errno.ENOSPC}] No space left on device"
    assert [p.name for p in list_shards(out)] == [shard_io.shard_name(0)]
    assert not list(out.glob("*.tmp")) and verify(out).problems == {}
    monkeypatch.undo()
    result = CliRunner().invoke(main, [*_args(random_teacher, out, "--per-class", "4"), "--json"])
    summary = json.loads(result.stdout)
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 3 and summary["complete"]
