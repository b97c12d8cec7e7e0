"""`dfkd distill` under torchrun (2 CPU processes on gloo): DistributedDataParallel keeps the ranks' weights equal,
rank 0 alone writes, validation is split across ranks without padding, and a DDP run interrupted after stage 1
resumes (every rank reading the checkpoint) to the same student as the uninterrupted DDP run.

Two launches: this file run by torchrun as a script (an uninterrupted run and one stopped after epoch 1, in-process
so that `on_epoch` can stop it), then `torchrun -m dfkd distill --resume` on the stopped one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import timm
import torch

STUDENT = "dearkd_pico_patch4_32"
BATCH, EPOCHS, IMAGES, VAL_IMAGES = 4, 2, 32, 13  # 2 ranks x 4 = effective batch 8: 4 steps per epoch
CLI_ARGS = [
    "--student",
    STUDENT,
    "--epochs",
    str(EPOCHS),
    "--stage1-epochs",
    "1",
    "--batch-size",
    str(BATCH),
    "--device",
    "cpu",
    "--threads",
    "1",
    "--workers",
    "0",
    "--lr",
    "0.02",
    "--warmup-epochs",
    "0.5",
]
RANK0_FILES = {"checkpoint.pt", "metrics.jsonl", "curves.png", "student.pth", "student.json"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo; tested on Linux")


def _config(shards: str, teacher: str, val: str):
    """The DistillConfig that CLI_ARGS give (so that the CLI can resume the script's run)."""
    from dfkd.distill import DistillConfig, OptimConfig

    return DistillConfig(
        shards=shards,
        teacher=teacher,
        val_data=val,
        student=STUDENT,
        epochs=EPOCHS,
        stage1_epochs=1,
        batch_size=BATCH,
        device="cpu",
        threads=1,
        workers=0,
        optim=OptimConfig(lr=0.02, warmup_epochs=0.5),
    )


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def _json_line(result: subprocess.CompletedProcess) -> dict:
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1, (result.stdout, result.stderr[-3000:])  # rank 0 alone prints
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def runs(random_teacher, tmp_path_factory):
    """Tiny shards (32 images of 4 classes, 32 px) and a 13-image validation folder; then both launches."""
    from dfkd.data.image_folder import write_image_folder
    from synth.config import Schedule, SynthesisConfig
    from synth.run.engine import synthesize

    root = tmp_path_factory.mktemp("ddp-distill")
    shards = root / "shards"
    synthesize(
        SynthesisConfig(
            teacher=random_teacher,
            classes="all",
            per_class=IMAGES // 4,
            classes_per_batch=4,
            images_per_class=2,
            threads=1,
            device="cpu",
            schedule=Schedule(resolutions=(16, 32), iterations=(4, 4)),
        ),
        shards,
    )
    with h5py.File(next(shards.glob("shard-*.h5")), "r") as f:
        val = write_image_folder(f["images"][:VAL_IMAGES], f["labels"][:VAL_IMAGES], root / "val")
    script = _torchrun(__file__, str(shards), random_teacher, str(val), str(root / "straight"), str(root / "resumed"))
    resumed = _torchrun(
        "-m",
        "dfkd",
        "distill",
        "--shards",
        str(shards),
        "--teacher",
        random_teacher,
        "--val-data",
        str(val),
        *CLI_ARGS,
        "--out",
        str(root / "resumed"),
        "--resume",
        "--json",
    )
    return {"root": root, "val": val, "script": script, "resumed": resumed}


def _sha256_file(path: Path) -> str:
    from synth.teachers.weights import state_dict_sha256

    return state_dict_sha256(torch.load(path, weights_only=True))


def test_ranks_end_with_the_same_weights_and_only_rank_0_writes(runs):
    straight = _json_line(runs["script"])
    for name in ("straight", "resumed"):
        out = runs["root"] / name
        assert {p.name for p in out.iterdir()} == RANK0_FILES  # no per-rank copies, no .tmp left behind
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [(r["epoch"], r["stage"]) for r in records] == [(1, 1), (2, 2)]  # one writer: no line twice
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
        assert checkpoint["world_size"] == 2 and len(checkpoint["rng_ranks"]) == 2
        assert checkpoint["updates"] == EPOCHS * IMAGES // (2 * BATCH)  # each rank steps through its half
    # each rank hashed its own final weights (gathered into rank 0's summary): equal, and equal to student.pth
    digest = _sha256_file(runs["root"] / "straight" / "student.pth")
    assert straight["weights_sha256"] == [digest, digest]
    assert (straight["world_size"], straight["batch_size"], straight["effective_batch"]) == (2, BATCH, 2 * BATCH)
    assert straight["lr"] == pytest.approx(0.02 * 2 * BATCH / 512)
    assert straight["pairs"] == ["0:2"] and straight["hidden_kd"]  # aligners trained in stage 1, frozen in 2


def test_resume_under_ddp_reproduces_the_uninterrupted_run(runs):
    result = runs["resumed"]
    summary = _json_line(result)
    assert "resuming after epoch 1 of 2" in result.stderr and "[rank" not in result.stderr
    a = torch.load(runs["root"] / "straight" / "student.pth", weights_only=True)
    b = torch.load(runs["root"] / "resumed" / "student.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["weights_sha256"] == _json_line(runs["script"])["weights_sha256"]
    straight = [json.loads(line) for line in (runs["root"] / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (runs["root"] / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]  # both ranks' RNG streams restored


def test_validation_split_across_ranks_counts_every_image_once(runs):
    from dfkd.data.image_folder import open_image_folder
    from dfkd.distill import AugmentConfig
    from dfkd.distill.epoch import measure_top1
    from dfkd.distill.inputs.batch import BatchPrep
    from dfkd.distill.inputs.decode import decode, folder_transform
    from dfkd.distill.inputs.loaders import make_loader, set_transform

    summary = _json_line(runs["script"])
    student = timm.create_model(STUDENT, num_classes=4, checkpoint_path=str(runs["root"] / "straight" / "student.pth"))
    cfg = student.pretrained_cfg
    val_set = open_image_folder(str(runs["val"]), 4, loader=decode)
    set_transform(val_set, folder_transform(32, cfg.get("interpolation", "bicubic"), cfg.get("crop_pct", 1.0)))
    prep = BatchPrep(cfg["mean"], cfg["std"], 4, AugmentConfig(), torch.device("cpu"), 32)
    expected = measure_top1(student, make_loader(val_set, BATCH, 0, train=False), prep)  # one process, all 13 images
    assert summary["val_top1"] == expected  # 7 + 6 images on the two ranks, hits summed, no padding


def _main(shards: str, teacher: str, val: str, straight: str, stopped: str) -> None:
    """Under torchrun: an uninterrupted DDP run, then the same run stopped after epoch 1 (end of stage 1)."""
    from dfkd.distill import train_student
    from synth.common import distributed

    torch.set_num_threads(1)
    ranks = distributed.init("cpu")
    summary = train_student(_config(shards, teacher, val), straight, ranks=ranks)

    def stop(record):
        raise KeyboardInterrupt

    try:
        train_student(_config(shards, teacher, val), stopped, on_epoch=stop, ranks=ranks)
    except KeyboardInterrupt:
        pass
    ranks.close()
    if ranks.rank == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    _main(*sys.argv[1:])
