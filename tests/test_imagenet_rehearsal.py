"""The ImageNet rehearsal: the README's command tour run end to end as an ImageNet user runs it, at toy scale on
CPU. A 1000-class timm teacher and a torchvision teacher (random weights), the shipped ImageNet recipes shrunk on
the command line, WNID-named folders of real photographs (scikit-learn's two sample images) for validation, and
every export read back by its own library with the true class ids."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from dfkd.cli import main
from dfkd.distill import trainer as distill_trainer
from synth.shards.format import ShardDataset

TIMM = "timm:test_resnet.r160_in1k"  # timm's 0.5 M-parameter ResNet, ImageNet-1k head
TORCHVISION = "torchvision:mobilenet_v3_small"
VAL = {"n01443537": 1, "n01484850": 2, "n02012849": 134, "n15075141": 999}  # goldfish, shark, crane, toilet tissue
CLASSES = {"contig": "0-3", "sparse": "1,134,517,600", "high": "990-999"}  # 134 and 517: both "crane"
SHRINK_SYNTHESIS = ["--per-class", "2", "--classes-per-batch", "2", "--images-per-class", "2", "--units-per-shard"]
SHRINK_SYNTHESIS += ["1", "--resolutions", "16,32", "--iterations", "2,2", "--device", "cpu", "--threads", "1"]
SHRINK_DISTILL = ["--student", "dearkd_pico_patch4_32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
SHRINK_DISTILL += ["--threads", "1", "--val-every", "1"]


def dfkd(*args, code: int = 0):
    """`dfkd ARGS` in-process, as the console script runs it; checks the exit status."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, f"dfkd {' '.join(map(str, args))}: {result.output[-2000:]}"
    return result


def dfkd_json(*args) -> dict:
    """`dfkd ARGS --json`: its one JSON object."""
    return json.loads(dfkd(*args, "--json").stdout)


def _stored(directory: Path) -> dict[int, tuple[np.ndarray, int]]:
    """sample id -> (uint8 HWC image, label) of a shard set, read with h5py alone."""
    samples = {}
    for path in sorted(directory.glob("shard-*.h5")):
        with h5py.File(path) as f:
            for image, label, sample_id in zip(f["images"][:], f["labels"][:], f["sample_ids"][:]):
                samples[int(sample_id)] = (image, int(label))
    return samples


def _settle_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN running statistics (a teacher's), from a few training-mode batches."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 0.7 + 0.1)
    return model.eval()


def _val_folders(root: Path) -> Path:
    """ImageNet-style validation folders: WNID/<crop>.JPEG, two 64-px crops of real photographs per class."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for k, wnid in enumerate(VAL):
        (root / wnid).mkdir(parents=True)
        for j in range(2):
            y, x = 100 + 60 * k, 150 + 120 * j
            Image.fromarray(photos[j][y : y + 64, x : x + 64]).save(root / wnid / f"ILSVRC2012_val_{k}{j}.JPEG")
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """The teachers' weight files (timm.pth, tv.pth, and always-999.pth: the timm teacher made to answer class 999
    for every image) and the validation folders `val/`."""
    root = tmp_path_factory.mktemp("imagenet")
    torch.manual_seed(0)
    model = _settle_bn(timm.create_model("test_resnet", num_classes=1000))
    torch.save(model.state_dict(), root / "timm.pth")
    torch.save(_settle_bn(torchvision.models.mobilenet_v3_small()).state_dict(), root / "tv.pth")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[999] = 100.0
    torch.save(model.state_dict(), root / "always-999.pth")
    _val_folders(root / "val")
    return root


def timm_teacher(imagenet: Path, weights: str = "timm.pth") -> list:
    """The recipe's teacher replaced by the toy one (README: `--teacher` with `--teacher-weights`)."""
    return ["--teacher", TIMM, "--teacher-weights", imagenet / weights]


@pytest.fixture(scope="module")
def shards(imagenet) -> Path:
    """README: `dfkd synthesize --config df_dearkd_imagenet --out shards/ --classes 0-99`, for contiguous,
    non-contiguous and high class ids; and deepinversion_imagenet with the torchvision teacher (`tv/`)."""
    for name, classes in CLASSES.items():
        args = ["--config", "df_dearkd_imagenet", "--out", imagenet / name, "--classes", classes]
        dfkd("synthesize", *args, *timm_teacher(imagenet), *SHRINK_SYNTHESIS)
    tv = ["--teacher", TORCHVISION, "--teacher-weights", imagenet / "tv.pth"]
    dfkd(
        "synthesize",
        "--config",
        "deepinversion_imagenet",
        "--out",
        imagenet / "tv",
        "--classes",
        "1,2",
        *tv,
        *SHRINK_SYNTHESIS,
    )
    return imagenet


def test_synthesis_keeps_the_teachers_class_ids_and_names(shards):
    imagenet_names = ShardDataset(shards / "contig").class_names
    assert imagenet_names[134] == imagenet_names[517] == "crane" and len(imagenet_names) == 1000
    for name, wanted in (("contig", set(range(4))), ("sparse", {1, 134, 517, 600}), ("high", set(range(990, 1000)))):
        dataset = ShardDataset(shards / name)
        assert set(dataset.labels.tolist()) == wanted and dataset.num_classes == 1000
        assert dataset.class_names == imagenet_names and dataset.resolution == 32
    categories = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.meta["categories"]
    assert ShardDataset(shards / "tv").class_names == categories and categories[1] == "goldfish"


def test_synthesis_rerun_is_idle_and_repairs_byte_identically(shards):
    high = shards / "high"
    before = {p.name: p.read_bytes() for p in high.glob("shard-*.h5")}
    manifest = (high / "manifest.json").stat().st_mtime_ns
    (high / "shard-000002.h5").unlink()
    rerun = ["--config", "df_dearkd_imagenet", "--out", high, "--classes", CLASSES["high"], "-q"]
    dfkd("synthesize", *rerun, *timm_teacher(shards), *SHRINK_SYNTHESIS)
    assert {p.name: p.read_bytes() for p in high.glob("shard-*.h5")} == before and len(before) == 5
    dfkd("synthesize", *rerun, *timm_teacher(shards), *SHRINK_SYNTHESIS)  # finished: writes nothing
    assert (high / "manifest.json").stat().st_mtime_ns == manifest


def test_inspect_names_the_classes_and_draws_the_grid(shards):
    report = dfkd_json("inspect", shards / "sparse", "--grid", shards / "grid.png")  # the grid labels: names
    assert report["per_class"] == {"1": 2, "134": 2, "517": 2, "600": 2} and report["class_names"][134] == "crane"
    assert Image.open(shards / "grid.png").size == (report["grid"]["width"], report["grid"]["height"])
    assert dfkd_json("inspect", shards / "tv")["class_names"][1] == "goldfish"


def test_imagefolder_export_reads_back_in_torchvision_with_the_true_ids(shards):
    from torchvision.datasets import ImageFolder

    dfkd("export", shards / "high", "--to", "imagefolder", shards / "png", "-q")
    classes = json.loads((shards / "png" / "classes.json").read_text())
    folder = ImageFolder(str(shards / "png"))  # as docs/exports.md reads it
    folder.target_transform = [classes["class_to_idx"][c] for c in folder.classes].__getitem__
    stored = _stored(shards / "high")
    assert len(folder) == len(stored) == 20
    for k, (path, _) in enumerate(folder.samples):
        image, label = folder[k]
        stored_image, stored_label = stored[int(Path(path).stem)]
        assert np.array_equal(np.asarray(image), stored_image) and label == stored_label >= 990
    assert classes["class_names"][999] == ShardDataset(shards / "high").class_names[999]


def test_webdataset_export_reads_back_in_webdataset(shards):
    webdataset = pytest.importorskip("webdataset")
    dfkd("export", shards / "sparse", "--to", "webdataset", shards / "wds", "-q")
    stored, names = _stored(shards / "sparse"), ShardDataset(shards / "sparse").class_names
    read = list(webdataset.WebDataset(str(shards / "wds" / "train-000000.tar"), shardshuffle=False).decode("rgb8"))
    assert len(read) == len(stored) == 8
    for sample in read:
        image, label = stored[int(sample["__key__"])]
        assert np.array_equal(sample["png"], image) and sample["cls"] == label
        assert sample["json"]["class_name"] == names[label]


def test_hf_export_reads_back_in_datasets_with_unique_names(shards):
    datasets = pytest.importorskip("datasets")
    dfkd("export", shards / "sparse", "--to", "hf", shards / "hf", "-q")
    cache = str(shards / "hf-cache")
    table = datasets.load_dataset(str(shards / "hf"), split="train", cache_dir=cache)
    names = table.features["label"].names
    assert names[134] == "crane (134)" and names[517] == "crane (517)" and names[1].startswith("goldfish")
    stored = _stored(shards / "sparse")
    assert len(table) == len(stored)
    for row in table:
        image, label = stored[row["sample_id"]]
        assert np.array_equal(np.asarray(row["image"]), image) and row["label"] == label
    dfkd("export", shards / "tv", "--to", "hf", shards / "tv-hf", "-q")
    tv = datasets.load_dataset(str(shards / "tv-hf"), split="train", cache_dir=cache)
    assert tv.features["label"].names[1] == "goldfish"


def test_evaluate_fidelity_diversity_and_accuracy_on_wnid_folders(shards, backbone):
    fidelity = dfkd_json("evaluate", "fidelity", shards / "contig", "--teacher-weights", shards / "timm.pth")
    assert fidelity["images"] == 8 and 0 <= fidelity["fidelity"] <= 1
    other = ["--teacher", TORCHVISION, "--teacher-weights", shards / "tv.pth"]  # does another network read them?
    assert dfkd_json("evaluate", "fidelity", shards / "contig", *other)["images"] == 8
    diversity = dfkd_json("evaluate", "diversity", shards / "sparse", "--lpips-backbone", backbone, "--device", "cpu")
    assert set(diversity["per_class"]) == {"1", "134", "517", "600"} and np.isfinite(diversity["mean"])
    val = ["--data", shards / "val", "--device", "cpu"]
    always_999 = dfkd_json("evaluate", "accuracy", *val, *timm_teacher(shards, "always-999.pth"))["teacher"]
    assert always_999["top1"] == 0.25 and always_999["images"] == 8  # n15075141 is class 999 (positions: 3)
    assert dfkd_json("evaluate", "accuracy", *val, *other)["teacher"]["images"] == 8


@pytest.fixture(scope="module")
def student(shards) -> Path:
    """README: `dfkd distill --config df_dearkd_distill --shards shards/ --teacher ... --out runs/df`, validated
    on the WNID folders."""
    out = shards / "run-df"
    args = ["--config", "df_dearkd_distill", "--shards", shards / "contig", "--val-data", shards / "val"]
    args += ["--epochs", "1"]  # a shrunk recipe: --epochs alone (its stage-1 and warm-up epochs keep their share)
    summary = dfkd_json("distill", *args, *timm_teacher(shards), *SHRINK_DISTILL, "--out", out)
    assert summary["val_top1"] is not None and json.loads((out / "student.json").read_text())["num_classes"] == 1000
    return out / "student.pth"


def test_student_accuracy_on_wnid_folders(shards, student):
    result = dfkd_json("evaluate", "accuracy", "--data", shards / "val", "--student", student, "--device", "cpu")
    assert result["student"]["images"] == 8 and result["student"]["k"] == 5


def test_adi_round_then_combined_sets_distill_and_resume(shards, student, monkeypatch):
    adi = ["--student", student, "--a-adi", "1", "--classes", "0-3", "--out", shards / "adi"]
    dfkd("synthesize", "--config", "df_dearkd_imagenet", *adi, *timm_teacher(shards), *SHRINK_SYNTHESIS, "-q")
    assert (
        ShardDataset(shards / "adi").teacher["weights_sha256"]
        == ShardDataset(shards / "contig").teacher["weights_sha256"]
    )
    combined = ["--config", "df_dearkd_distill", "--shards", f"{shards / 'contig'},{shards / 'adi'}"]
    combined += ["--val-data", shards / "val", "--epochs", "2", *timm_teacher(shards), *SHRINK_DISTILL]
    combined += ["--stage1-epochs", "2"]  # both epochs in stage 1 (--epochs alone would keep the recipe's share)
    straight = dfkd_json("distill", *combined, "--out", shards / "straight")
    assert straight["images"] == 16
    real_epoch = distill_trainer.train_one_epoch
    calls = []

    def ctrl_c_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(distill_trainer, "train_one_epoch", ctrl_c_in_epoch_two)
    dfkd("distill", *combined, "--out", shards / "stopped", "-q", code=130)
    assert (shards / "stopped" / "checkpoint.pt").is_file() and not (shards / "stopped" / "student.pth").exists()
    monkeypatch.undo()
    resumed = dfkd_json("distill", *combined, "--out", shards / "stopped", "--resume")
    a = torch.load(shards / "straight" / "student.pth", weights_only=True)
    b = torch.load(shards / "stopped" / "student.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss"] == straight["final_loss"] and resumed["val_top1"] == straight["val_top1"]
