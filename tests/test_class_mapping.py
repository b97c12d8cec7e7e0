"""The class mapping survives every hop: image-folder inputs (integer names, ImageNet WNIDs, a class map file, or
one refusing line), image-folder and Hugging Face exports (true ids, unique names), torchvision teachers' class
names, and shards distilled only with the teacher that made them (or on purpose, said so)."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from dfkd.cli.distill import distill_command
from dfkd.cli.evaluate import evaluate_group
from dfkd.cli.export import export_command
from dfkd.data.image_folder import LabelledFolder, open_image_folder, read_class_map
from dfkd.distill import DistillConfig
from dfkd.distill.build import open_data
from dfkd.distill.inputs.loaders import labels_of
from synth.common.errors import UserError
from synth.config import Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.writer import write_shard
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.sources import load_teacher

MEAN = STD = (0.5, 0.5, 0.5)
GOLDFISH, SHARK = "n01443537", "n01484850"  # ImageNet-1k classes 1 and 2 (in sorted order: positions 0 and 1)


def _tree(root: Path, folders: list[str], per_folder: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in folders:
        (root / name).mkdir(parents=True)
        for k in range(per_folder):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def _one_class_teacher(path: Path, num_classes: int, always: int) -> str:
    """A teacher file that predicts class `always` for every image."""
    model = timm.create_model("dfkd_cnn_tiny", num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[always] = 10.0
    save_teacher_file(path, "timm:dfkd_cnn_tiny", {"num_classes": num_classes}, model, MEAN, STD, 16)
    return str(path)


def _invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# ---------------------------------------------------------------- image folders in


def test_wnid_folders_map_through_the_imagenet_index_and_unmappable_trees_are_refused(tmp_path):
    assert LabelledFolder(_tree(tmp_path / "wnid", [GOLDFISH, SHARK])).class_to_idx == {GOLDFISH: 1, SHARK: 2}
    assert LabelledFolder(_tree(tmp_path / "high", ["n15075141"])).class_to_idx == {"n15075141": 999}
    for name, folders, bad in (
        ("mixed", ["7", "cat"], "cat"),
        ("words", ["cat", "dog"], "cat"),
        ("half-wnid", [GOLDFISH, "n99999999"], "n99999999"),
        ("wnid-and-id", [GOLDFISH, "3"], "3"),
    ):
        with pytest.raises(UserError, match=f"folder '{bad}'.*--class-map") as caught:
            open_image_folder(_tree(tmp_path / name, folders), 1000)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=f"class id 2 \\(folder '{SHARK}'\\), but the model has 2 classes"):
        open_image_folder(tmp_path / "wnid", 2)


def test_class_map_files_json_two_columns_and_one_folder_per_line(tmp_path):
    tree = _tree(tmp_path / "tree", ["cat", "dog"])
    (tmp_path / "map.json").write_text(json.dumps({"cat": 3, "dog": 1, "emu": 0}))
    (tmp_path / "pairs.txt").write_text("cat 3\n\ndog 1\n")
    (tmp_path / "lines.txt").write_text("emu\ndog\n\ncat\n")  # line k is class k (timm's class_map.txt)
    for name in ("map.json", "pairs.txt", "lines.txt"):
        assert LabelledFolder(tree, class_map=str(tmp_path / name)).class_to_idx == {"cat": 3, "dog": 1}, name
    (tmp_path / "short.json").write_text(json.dumps({"cat": 0}))
    with pytest.raises(UserError, match="folder 'dog' is not in the class map"):
        open_image_folder(tree, 4, class_map=str(tmp_path / "short.json"))
    for name, text in (("bad.json", '{"cat": "3"}'), ("bad.txt", "cat 3\ndog\n"), ("twice.txt", "cat 1\ncat 2\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=f"class map '.*{name}'"):
            read_class_map(tmp_path / name)


def test_accuracy_scores_wnid_folders_and_class_maps_by_their_true_ids(tmp_path):
    teacher = _one_class_teacher(tmp_path / "always-shark.pt", 3, always=2)  # positions would score it 0.0
    tree = _tree(tmp_path / "val", [GOLDFISH, SHARK])
    result = _invoke(evaluate_group, ["accuracy", "--teacher", teacher, "--data", tree, "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["teacher"]["top1"] == 0.5
    words = _tree(tmp_path / "words", ["cat", "dog"])
    refused = _invoke(evaluate_group, ["accuracy", "--teacher", teacher, "--data", words, "--device", "cpu"])
    assert refused.exit_code == 2 and "--class-map" in refused.stderr and len(refused.stderr.splitlines()) == 1
    (tmp_path / "map.json").write_text(json.dumps({"cat": 0, "dog": 2}))
    args = ["accuracy", "--teacher", teacher, "--data", words, "--class-map", tmp_path / "map.json", "--json"]
    mapped = _invoke(evaluate_group, args)
    assert mapped.exit_code == 0, mapped.output
    assert json.loads(mapped.stdout)["teacher"]["top1"] == 0.5


def test_distill_images_take_the_class_map(random_teacher, tmp_path):
    tree = _tree(tmp_path / "train", ["cat", "dog"])
    (tmp_path / "map.txt").write_text("cat 3\ndog 1\n")
    config = DistillConfig(images=str(tree), teacher=random_teacher, class_map=str(tmp_path / "map.txt"))
    dataset, num_classes, _ = open_data(config, load_teacher(random_teacher))
    assert num_classes == 4 and sorted(labels_of(dataset).tolist()) == [1, 1, 3, 3]


# ---------------------------------------------------------------- exports out


def _shards(root: Path, labels: list[int], num_classes: int, names) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_shard(
        root / "shard-000000.h5",
        rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8),
        np.asarray(labels, dtype=np.int64),
        np.arange(len(labels)),
        None,
        num_classes=num_classes,
        mean=MEAN,
        std=STD,
        teacher={"spec": "hand-made", "weights_sha256": "abc"},
        config={"seed": 0},
        class_names=names,
    )
    return root


def test_imagefolder_export_of_high_class_ids_reads_back_with_the_true_ids(tmp_path):
    from torchvision.datasets import ImageFolder

    labels = [990, 999, 995, 990]
    names = [f"class {c}" for c in range(1000)]
    out = tmp_path / "png"
    assert _invoke(export_command, [_shards(tmp_path / "s", labels, 1000, names), "--to", "imagefolder", out, "-q"])
    classes = json.loads((out / "classes.json").read_text())
    assert classes["class_to_idx"] == {"990": 990, "995": 995, "999": 999} and classes["class_names"] == names
    folder = ImageFolder(str(out))  # as the docs read it: positions 0..2, then the true ids
    assert sorted(folder.targets) == [0, 0, 1, 2]
    folder.target_transform = [classes["class_to_idx"][c] for c in folder.classes].__getitem__
    assert sorted(folder[i][1] for i in range(len(folder))) == sorted(labels)
    timm_folder = timm.data.create_dataset("", root=str(out), class_map=str(out / "class_map.txt"))
    assert sorted(timm_folder[i][1] for i in range(len(timm_folder))) == sorted(labels)
    assert sorted(LabelledFolder(out, class_map=str(out / "class_map.txt")).targets) == sorted(labels)


def test_hf_export_makes_repeated_class_names_unique(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["crane", "goldfish", "crane", "maillot"]
    out = tmp_path / "hf"
    result = _invoke(export_command, [_shards(tmp_path / "s", [0, 2, 1], 4, names), "--to", "hf", out, "-q"])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features["label"].names == ["crane (0)", "goldfish", "crane (2)", "maillot"]
    assert sorted(loaded["label"]) == [0, 1, 2]


# ---------------------------------------------------------------- teachers


def test_torchvision_teacher_from_a_weights_file_carries_the_imagenet_categories(tmp_path):
    import torchvision

    weights = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    teacher = load_teacher("torchvision:mobilenet_v3_small", str(weights))
    assert teacher.class_names == torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.meta["categories"]
    assert teacher.class_names[1] == "goldfish" and len(teacher.class_names) == 1000


def test_distilling_shards_with_another_teacher_is_refused_unless_asked(random_teacher, tmp_path):
    shards = tmp_path / "shards"
    synthesize(
        SynthesisConfig(
            teacher=random_teacher,
            per_class=2,
            classes_per_batch=2,
            images_per_class=2,
            threads=1,
            device="cpu",
            schedule=Schedule(resolutions=(8,), iterations=(1,)),
        ),
        shards,
    )
    model = timm.create_model("dfkd_cnn_tiny", num_classes=4)  # other weights, same classes
    other = tmp_path / "other.pt"
    save_teacher_file(other, "timm:dfkd_cnn_tiny", {"num_classes": 4}, model, MEAN, STD, 32)
    args = ["--shards", shards, "--teacher", other, "--student", "dearkd_pico_patch4_32", "--epochs", "1"]
    args += ["--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu"]
    refused = _invoke(distill_command, [*args, "--out", tmp_path / "a"])
    assert refused.exit_code == 2 and "--allow-other-teacher" in refused.stderr, refused.output
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "a" / "checkpoint.pt").exists()
    allowed = _invoke(distill_command, [*args, "--out", tmp_path / "b", "--allow-other-teacher"])
    assert allowed.exit_code == 0, allowed.output
    notes = [line for line in allowed.stderr.splitlines() if "--allow-other-teacher" in line]
    assert len(notes) == 1 and "were made by" in notes[0]
