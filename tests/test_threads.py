"""The CPU thread rule (synth.common.runtime): idle cores shared among a machine's processes; a resume keeps the
count its run recorded."""

import torch

import synth.common.runtime
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.manifest import read_manifest


def test_default_threads_takes_the_idle_cores_shared_among_processes(monkeypatch):
    monkeypatch.setattr(synth.common.runtime, "available_cores", lambda: 8)
    monkeypatch.setattr(synth.common.runtime, "idle_cores", lambda: 3)
    assert synth.common.runtime.default_threads() == 3
    assert synth.common.runtime.default_threads(processes=2) == 1
    monkeypatch.setattr(synth.common.runtime, "idle_cores", lambda: 0)  # a saturated machine still gets one thread
    assert synth.common.runtime.default_threads() == 1
    monkeypatch.setattr(synth.common.runtime, "idle_cores", lambda: 16)  # never more than this process may use
    assert synth.common.runtime.default_threads() == 8


def test_idle_cores_is_a_core_count():
    assert 0 <= synth.common.runtime.idle_cores(0.05) <= synth.common.runtime.os.cpu_count()


def _config(teacher: str, threads: int) -> SynthesisConfig:
    return SynthesisConfig(
        teacher=teacher,
        classes="0-1",
        per_class=2,
        classes_per_batch=2,
        images_per_class=2,
        threads=threads,
        device="cpu",
        schedule=Schedule(resolutions=(16,), iterations=(2,)),
        losses=LossWeights(ep=0.0, triplet=0.0),
    )


def test_a_run_without_threads_records_the_rule_and_resumes_with_that_count(random_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # keep the test's torch at one thread
    monkeypatch.setattr(synth.common.runtime, "default_threads", lambda processes=1: 1)
    synthesize(_config(random_teacher, 0), tmp_path / "s")
    assert read_manifest(tmp_path / "s")["config"]["threads"] == 1
    monkeypatch.setattr(synth.common.runtime, "default_threads", lambda processes=1: 2)  # the load changed since
    summary = synthesize(_config(random_teacher, 0), tmp_path / "s")
    assert summary["nothing_to_do"] and summary["shards_written"] == 0
    synthesize(_config(random_teacher, 0), tmp_path / "fresh")
    assert read_manifest(tmp_path / "fresh")["config"]["threads"] == 2
