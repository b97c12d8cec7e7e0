"""One run per output directory (synth.common.output_lock): a second `dfkd synthesize` / `distill` / `export` process
is refused at once naming the holder, a lock left by a killed process never blocks the rerun, the ranks of one
torchrun run count as one, and the lock file is never a shard, never in an export and never left by a finished run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfkd.cli import main
from synth.common import output_lock
from synth.common.errors import UserError
from synth.shards.format import list_shards
from synth.shards.verify import verify

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX locks and process groups")

TINY = ["--config", "tiny_cpu", "--threads", "1"]
SLOW = ["--iterations", "20000,20000"]  # a first run that is still working when the second one starts
DISTILL = ["--student", "dearkd_pico_patch4_32", "--batch-size", "8", "--device", "cpu", "--threads", "1"]
DISTILL += ["--workers", "0", "--quiet"]
HOLD = """
import os, sys, time
from synth.common import output_lock
lock = output_lock.acquire(sys.argv[1], beside=sys.argv[2] == "beside")
if sys.argv[3] == "fork":  # a child (a DataLoader worker, say) that outlives its parent
    up, ready = os.pipe()
    if os.fork() == 0:
        os.write(ready, b"x")  # past os.fork(): its at-fork handlers have run
        time.sleep(60)
        os._exit(0)
    os.read(up, 1)
print("ready", flush=True)
time.sleep(60)
"""


def _dfkd(*args: str, wait: bool = True):
    """`python -m dfkd ARGS` in its own process (group): the finished process, or the running one."""
    command = [sys.executable, "-m", "dfkd", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _holder(out: Path, beside: bool = False, fork: bool = False) -> subprocess.Popen:
    """Another process that takes OUT's lock and keeps it (its pid is the holder's); returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), "beside" if beside else "inside", "fork" if fork else "-"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _wait_for_lock(proc: subprocess.Popen, path: Path, timeout: float = 180) -> dict:
    """The lock record once `proc` holds `path` (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            info = json.loads(path.read_text())
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} was not taken by pid {proc.pid} within {timeout} s")


def _kill(proc: subprocess.Popen) -> None:
    """kill -9 the process's group (it and its children), as an out-of-memory killer or a scheduler would."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _refused(result: subprocess.CompletedProcess, holder: int) -> str:
    """The one `error:` line of a refused process (exit 2), which names the holder."""
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert "in use by another dfkd run" in lines[0] and f"pid {holder} on {socket.gethostname()}" in lines[0]
    return lines[0]


def test_second_synthesize_is_refused_and_a_killed_holder_never_blocks(random_teacher, tmp_path):
    out = tmp_path / "shards"
    first = _dfkd("synthesize", "--teacher", random_teacher, "--out", out, *TINY, *SLOW, "--seed", "0", wait=False)
    try:
        info = _wait_for_lock(first, out / output_lock.LOCK_NAME)
        assert "python -m dfkd synthesize" in info["command"] and "--seed 0" in info["command"]
        started = time.monotonic()
        second = _dfkd("synthesize", "--teacher", random_teacher, "--out", out, *TINY, "--seed", "1")
        line = _refused(second, first.pid)
        assert "synthesize" in line and "--seed 0" in line
        assert time.monotonic() - started < 60 and first.poll() is None  # refused at once; the first goes on
    finally:
        _kill(first)
    assert (out / output_lock.LOCK_NAME).is_file()  # left by the killed run: unlocked, it blocks nothing
    rerun = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *TINY, "--seed", "1", "--json"]
    )
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["complete"] and len(list_shards(out)) == summary["shards"]
    assert not (out / output_lock.LOCK_NAME).exists() and verify(out).ok
    inspected = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert inspected.exit_code == 0, inspected.output
    resumed = CliRunner().invoke(
        main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *TINY, "--seed", "1", "--json"]
    )
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["nothing_to_do"], resumed.output


@pytest.fixture(scope="module")
def shards(random_teacher, tmp_path_factory) -> Path:
    """tiny_cpu's 16 images from the random teacher."""
    out = tmp_path_factory.mktemp("lock-shards") / "shards"
    result = CliRunner().invoke(main, ["synthesize", "--teacher", random_teacher, "--out", str(out), *TINY, "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_second_distill_is_refused_while_the_first_trains(shards, random_teacher, tmp_path):
    out, common = tmp_path / "run", ["distill", "--shards", shards, "--teacher", random_teacher, *DISTILL]
    first = _dfkd(*common, "--epochs", "1000", "--out", out, wait=False)
    try:
        _wait_for_lock(first, out / output_lock.LOCK_NAME)
        line = _refused(_dfkd(*common, "--epochs", "1", "--out", out), first.pid)
        assert "python -m dfkd distill" in line and first.poll() is None
    finally:
        _kill(first)


def test_export_is_refused_while_another_process_writes_its_output(shards, tmp_path):
    out = tmp_path / "png"
    holder = _holder(out, beside=True)
    try:
        _refused(_dfkd("export", shards, "--to", "imagefolder", out), holder.pid)
        assert not out.exists()
    finally:
        _kill(holder)
    result = CliRunner().invoke(main, ["export", str(shards), "--to", "imagefolder", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    names = [p.name for p in tmp_path.rglob("*")]
    assert not any(output_lock.LOCK_NAME in name for name in names), names  # none in the export, none beside it


def test_torchrun_ranks_are_one_run_and_a_refused_run_does_nothing(random_teacher, tmp_path):
    """Rank 0 alone takes the lock, before any rank works; a refused run stops every rank (tests/
    test_distributed_synthesis.py runs 2 ranks that hold one lock)."""
    out = tmp_path / "shards"
    holder = _holder(out)
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
        command += ["dfkd", "synthesize", "--teacher", random_teacher, "--out", str(out), *TINY, "--device", "cpu"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        assert f"in use by another dfkd run (pid {holder.pid} on" in result.stderr, result.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == [output_lock.LOCK_NAME]  # no rank wrote anything
    finally:
        _kill(holder)


@pytest.mark.parametrize("fork", [False, True], ids=["holder", "holder-with-a-forked-child"])
def test_a_lock_left_by_a_killed_process_is_taken_at_once(tmp_path, fork):
    out = tmp_path / "out"
    holder = _holder(out, fork=fork)
    with pytest.raises(UserError, match=f"pid {holder.pid} on"):
        output_lock.acquire(out)
    os.kill(holder.pid, signal.SIGKILL)  # the holder alone: a forked child of it lives on
    holder.wait(timeout=60)
    try:
        lock = output_lock.acquire(out)
        assert json.loads((out / output_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        _kill(holder)
    assert not (out / output_lock.LOCK_NAME).exists()


def test_lock_file_is_no_shard_and_a_refused_start_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "shards"
    lock = output_lock.acquire(out)
    assert list_shards(out) == [] and (out / output_lock.LOCK_NAME).is_file()
    with pytest.raises(UserError, match="already in use by this process"):
        output_lock.acquire(out)
    lock.release()
    assert not (tmp_path / "new").exists()  # created for the lock, empty: removed with it
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        output_lock.acquire(tmp_path / "file")


def test_holder_command_line_names_python_m():
    argv = sys.argv
    try:
        sys.argv = ["/x/dfkd/__main__.py", "synthesize", "--out", "a b"]
        assert output_lock.command_line() == "python -m dfkd synthesize --out 'a b'"
        sys.argv = ["/usr/bin/dfkd", "export", "x" * 400]
        assert len(output_lock.command_line()) == 300
    finally:
        sys.argv = argv
