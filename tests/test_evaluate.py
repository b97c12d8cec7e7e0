"""Evaluation: LPIPS diversity, fidelity, accuracy, inspect grid, export (tiny hand-made shards, no network)."""

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from dfkd.cli.evaluate import evaluate_group as evaluate
from dfkd.cli.export import export_command as export
from dfkd.cli.inspect import inspect_command
from dfkd.data.image_folder import LabelledFolder
from dfkd.evaluate import load_lpips, measure_fidelity, measure_lpips_diversity
from dfkd.evaluate.config import EvaluateConfig
from dfkd.evaluate.lpips_diversity import ALEXNET_FILE, lpips_features, lpips_from_features, sample_pairs, unrank_pairs
from synth.common.errors import UserError
from synth.shards.writer import write_shard
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.sources import load_teacher

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _write(
    root: Path, images: np.ndarray, labels, index: int = 0, num_classes: int = 4, class_names=None, first_id: int = 0
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    write_shard(
        root / f"shard-{index:06d}.h5",
        images,
        labels,
        np.arange(first_id, first_id + len(labels)),
        None,
        num_classes=num_classes,
        mean=MEAN,
        std=STD,
        teacher={"spec": "hand-made"},
        config={"seed": 0},
        class_names=class_names,
    )
    return root


def _random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _centred(model: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    """Centre a random classifier on these images' embeddings so that its top-1 varies with the image."""
    model.eval()
    with torch.no_grad():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        model.fc.bias.copy_(-model.fc.weight @ embedding.mean(0))
    return model


def _run(command, args: list[str]):
    result = CliRunner().invoke(command, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_lpips_is_zero_for_identical_images_and_uses_the_backbone_file(backbone: Path, tmp_path: Path) -> None:
    model = load_lpips(backbone)
    state = torch.load(backbone, weights_only=True)
    torch.testing.assert_close(model.net.slice5[0].weight, state["features.10.weight"])
    images = torch.from_numpy(_random_images(2, 32)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        a, b = lpips_features(model, images[:1], 64), lpips_features(model, images[1:], 64)
        same, different = lpips_from_features(model, a, a).item(), lpips_from_features(model, a, b).item()
        upsampled = torch.nn.functional.interpolate(images.float() / 127.5 - 1, size=(64, 64), mode="bilinear")
        reference = model(upsampled[:1], upsampled[1:]).item()
    assert same == 0 and different > 0
    assert different == pytest.approx(reference, rel=1e-5)
    state["features.3.weight"] = torch.randn_like(state["features.3.weight"])
    changed = tmp_path / "alexnet-features.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, changed)
    other = load_lpips(changed)
    with torch.inference_mode():
        moved = lpips_from_features(other, lpips_features(other, images[:1], 64), lpips_features(other, images[1:], 64))
    assert moved.item() != pytest.approx(different, rel=1e-3)


def test_pairs_are_all_distinct_pairs_or_a_seeded_sample() -> None:
    i, j = unrank_pairs(np.arange(21))
    assert sorted(zip(i.tolist(), j.tolist())) == [(a, b) for a in range(7) for b in range(a)]
    first = sample_pairs(50, 30, np.random.default_rng(3))
    assert len(set(zip(*first))) == 30 and all(first[0] > first[1]) and first[0].max() < 50
    assert all((x == y).all() for x, y in zip(first, sample_pairs(50, 30, np.random.default_rng(3))))
    assert len(sample_pairs(5, 30, np.random.default_rng(3))[0]) == 10


def test_diversity_per_class_and_mean(backbone: Path, tmp_path: Path) -> None:
    same = np.repeat(_random_images(1, seed=1), 3, axis=0)
    images = np.concatenate([same, _random_images(3, seed=2), _random_images(1, seed=3)])
    shards = _write(tmp_path / "shards", images, [0, 0, 0, 1, 1, 1, 2], class_names=["a", "b", "c", "d"])
    result = _run(evaluate, ["diversity", str(shards), "--lpips-backbone", str(backbone), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    report = json.loads(result.stdout)
    assert report["per_class"]["0"] == pytest.approx(0, abs=1e-6) and report["per_class"]["1"] > 0.01
    assert report["mean"] == pytest.approx((report["per_class"]["0"] + report["per_class"]["1"]) / 2)
    assert report["resolution"] == 64 and report["upsampled"] and report["pairs"] == {"0": 3, "1": 3}
    assert report["skipped_classes"] == [2]
    sampled = measure_lpips_diversity(shards, EvaluateConfig(lpips_backbone=str(backbone), pairs=2, device="cpu"))
    assert sampled["pairs"] == {0: 2, 1: 2} and sampled["per_class"][1] > 0


def test_missing_backbone_fails_fast_naming_the_file(backbone: Path, tmp_path: Path, monkeypatch) -> None:
    probes = []

    def offline(address, *args, **kwargs):
        probes.append(address)
        raise OSError("network is off in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(socket, "create_connection", offline)
    shards = _write(tmp_path / "shards", _random_images(2), [0, 0])
    start = time.monotonic()
    result = _run(evaluate, ["diversity", str(shards), "--device", "cpu"])
    assert time.monotonic() - start < 5
    assert result.exit_code == 2 and probes
    assert ALEXNET_FILE in result.stderr and str(tmp_path / "torch" / "hub" / "checkpoints") in result.stderr
    assert "--lpips-backbone" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = _run(evaluate, ["diversity", str(shards), "--lpips-backbone", str(tmp_path / "none.pth")])
    assert result.exit_code == 2 and "none.pth" in result.stderr


@pytest.mark.parametrize(
    "command, args",
    [
        (evaluate, ["diversity", "{shards}"]),
        (inspect_command, ["{shards}"]),
        (export, ["{shards}", "--to", "imagefolder", "{out}"]),
    ],
)
def test_missing_shards_is_a_usage_error(tmp_path: Path, command, args: list[str]) -> None:
    result = _run(command, [a.format(shards=tmp_path / "nowhere", out=tmp_path / "out") for a in args])
    assert result.exit_code == 2 and "nowhere" in result.stderr


def test_inspect_counts_and_grid_size(tmp_path: Path) -> None:
    images = _random_images(7)
    shards = _write(tmp_path / "shards", images[:4], [0, 0, 1, 2], class_names=["a", "b", "c", "d"])
    _write(shards, images[4:], [1, 1, 1], index=1, first_id=4, class_names=["a", "b", "c", "d"])
    grid = tmp_path / "grid.png"
    result = _run(inspect_command, [str(shards), "--grid", str(grid), "--per-class-grid", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["per_class"] == {"0": 2, "1": 4, "2": 1} and report["images"] == 7
    assert report["verify"]["ok"] and report["format_version"] == 1 and report["resolution"] == 16
    assert report["teacher"] == {"spec": "hand-made"} and report["config"] == {"seed": 0}
    png = np.asarray(Image.open(grid))  # rows = classes, k columns of the 16-px images enlarged 4x, a label column
    column = png.shape[1] - 4 * 66 - 2
    assert png.shape[0] == 3 * 66 + 2 and 0 < column < 64

    def cell(row: int, col: int) -> np.ndarray:
        return png[2 + row * 66 : 2 + row * 66 + 64 : 4, column + 2 + col * 66 : column + 2 + col * 66 + 64 : 4]

    assert (cell(0, 0) == images[0]).all() and (cell(1, 0) == images[2]).all()
    assert (cell(1, 3) == images[6]).all()  # class 1: images 2, 4, 5, 6
    assert (png[:, :column] == 255).all(-1).any()  # labels drawn
    _run(inspect_command, [str(shards), "--grid", str(grid), "--per-class-grid", "2", "--grid-classes", "0,3", "-q"])
    assert Image.open(grid).size[1] == 2 * 66 + 2


def test_export_round_trip_preserves_pixels_and_labels(tmp_path: Path) -> None:
    images = _random_images(6)
    labels = [0, 11, 3, 3, 11, 7]
    shards = _write(tmp_path / "shards", images[:3], labels[:3], num_classes=12)
    _write(shards, images[3:], labels[3:], index=1, num_classes=12, first_id=100)
    out = tmp_path / "png"
    result = _run(export, [str(shards), "--to", "imagefolder", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 6 and not (tmp_path / "png.tmp").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00", "03", "07", "11"]
    assert (out / "README.md").is_file()  # the dataset card travels with the export
    folder = LabelledFolder(str(out))
    assert len(folder) == 6
    ids = [0, 1, 2, 100, 101, 102]
    for path, label in folder.samples:
        k = ids.index(int(Path(path).stem))
        assert label == labels[k] and (np.asarray(Image.open(path)) == images[k]).all()
    again = _run(export, [str(shards), "--to", "imagefolder", str(out)])
    assert again.exit_code == 2 and "not an empty folder" in again.stderr


def test_fidelity_is_one_on_the_teacher_own_predictions(tmp_path: Path) -> None:
    images = _random_images(12)
    model = _centred(timm.create_model("dfkd_cnn_tiny", num_classes=4), images)
    path = tmp_path / "teacher.pt"
    save_teacher_file(path, "dfkd_cnn_tiny", {"num_classes": 4}, model, MEAN, STD, 16)
    teacher = load_teacher(str(path))
    with torch.inference_mode():
        labels = teacher.model(teacher.normalize(torch.from_numpy(images).permute(0, 3, 1, 2) / 255)).argmax(1)
    shards = _write(tmp_path / "shards", images, labels.numpy())
    result = _run(evaluate, ["fidelity", str(shards), "--teacher", str(path), "--json", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fidelity"] == 1.0 and set(report["per_class"].values()) == {1.0}
    wrong = labels.numpy().copy()
    wrong[0] = (wrong[0] + 1) % 4
    flipped = measure_fidelity(_write(tmp_path / "flipped", images, wrong), teacher, EvaluateConfig(device="cpu"))
    assert flipped["fidelity"] == pytest.approx(11 / 12) and flipped["per_class"][int(wrong[0])] < 1


def test_accuracy_on_an_image_folder(tmp_path: Path) -> None:
    images = _random_images(8)
    student = _centred(timm.create_model("dfkd_cnn_tiny", num_classes=12), images)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(student.state_dict(), run / "student.pth")
    (run / "student.json").write_text(
        json.dumps({"model": "dfkd_cnn_tiny", "num_classes": 12, "input_size": 16, "mean": MEAN, "std": STD})
    )
    save_teacher_file(tmp_path / "teacher.pt", "dfkd_cnn_tiny", {"num_classes": 12}, student, MEAN, STD, 16)
    with torch.inference_mode():
        predicted = student((torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - 0.5) / 0.5).argmax(1).tolist()
    assert len(set(predicted)) > 2 and max(predicted) >= 10  # integer folder names are class ids, not sorted positions
    data = tmp_path / "val"
    for k, (image, label) in enumerate(zip(images, predicted)):
        folder = data / str(label if k % 2 else (label + 5) % 12)  # half right, half wrong
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{k}.png")
    args = [
        "accuracy",
        "--student",
        str(run / "student.pth"),
        "--teacher",
        str(tmp_path / "teacher.pt"),
        "--data",
        str(data),
        "--json",
        "--device",
        "cpu",
    ]
    result = _run(evaluate, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["student"]["top1"] == 0.5 and report["student"]["top5"] >= 0.5 and report["student"]["images"] == 8
    assert report["teacher"]["top1"] == 0.5
    for name in ("2", "10", "0042"):
        (tmp_path / "ids" / name).mkdir(parents=True)
        Image.fromarray(images[0]).save(tmp_path / "ids" / name / "x.png")
    assert LabelledFolder(str(tmp_path / "ids")).class_to_idx == {"0042": 42, "10": 10, "2": 2}
    (tmp_path / "ids" / "cat").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "ids" / "cat" / "x.png")
    with pytest.raises(UserError, match="folder 'cat'"):  # never numbered by sorted position
        LabelledFolder(str(tmp_path / "ids"))


def test_near_duplicates_count_images_with_a_twin_of_their_class(tmp_path: Path) -> None:
    from dfkd.evaluate.embedding_diversity import measure_embedding_diversity

    images = _random_images(8, size=64)
    images[1] = np.clip(images[0].astype(int) + 3, 0, 255)  # a near twin of image 0 (RMS 3/255), same class
    images[5] = images[4]  # an exact twin, but of another class: not a duplicate
    root = _write(tmp_path / "shards", images, [0, 0, 0, 0, 1, 2, 2, 3])
    torch.manual_seed(0)
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4)
    save_teacher_file(tmp_path / "teacher.pt", "dfkd_cnn_tiny", {"num_classes": 4}, model, MEAN, STD, 16)
    result = measure_embedding_diversity(root, load_teacher(str(tmp_path / "teacher.pt")))
    assert result["near_duplicates"] == 2 / 8
    assert set(result["per_class"]) == {0, 2} and result["per_class"][0] > 0
