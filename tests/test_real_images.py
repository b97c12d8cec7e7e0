"""`dfkd real-images`: a real dataset's test or training images as a class folder (what --val-data, evaluate --data
and distill --images read), never over an existing folder and never left looking finished when interrupted."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_fashion_mnist import write_tiny_fashion

from dfkd.cli import main
from dfkd.data.digits import load_digits_split
from dfkd.data.image_folder import open_image_folder, write_image_folder


def run(*args):
    return CliRunner().invoke(main, ["real-images", *args])


def per_class(folder):
    return {d.name: len(list(d.glob("*.png"))) for d in sorted(folder.iterdir())}


def test_digits_test_split_is_the_teachers_held_out_split(tmp_path):
    result = run("--dataset", "digits", "--out", str(tmp_path / "test"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {
        "out": str(tmp_path / "test"),
        "dataset": "digits",
        "split": "test",
        "images": 397,
        "classes": 10,
    }
    expected = np.bincount(load_digits_split(seed=0).test_labels)
    assert per_class(tmp_path / "test") == {str(c): int(n) for c, n in enumerate(expected)}
    assert len(open_image_folder(tmp_path / "test", num_classes=10)) == 397  # the readers accept it


def test_seeded_training_subset_repeats_and_seeds_differ(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        args = ("--dataset", "digits", "--split", "train", "--count", "50", "--seed", seed)
        assert run(*args, "--out", str(tmp_path / name)).exit_code == 0
    pixels = {n: sorted(np.asarray(Image.open(p)).tobytes() for p in (tmp_path / n).rglob("*.png")) for n in "abc"}
    assert pixels["a"] == pixels["b"] and pixels["a"] != pixels["c"] and len(pixels["a"]) == 50


def test_fashion_test_images_from_a_data_dir(tmp_path):
    data = write_tiny_fashion(tmp_path / "fashion")
    result = run("--dataset", "fashion-mnist", "--data-dir", str(data), "--out", str(tmp_path / "t"))
    assert result.exit_code == 0, result.output
    assert per_class(tmp_path / "t") == {str(c): 2 for c in range(10)}


@pytest.mark.parametrize(
    "args, message", [(("--count", "400"), "--count 400 is more than the 397 test images"), (("--count", "0"), "0")]
)
def test_bad_count_is_one_line(tmp_path, args, message):
    result = run("--dataset", "digits", *args, "--out", str(tmp_path / "t"))
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "t").exists()


def test_an_existing_folder_is_never_written_over(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "mine.txt").write_text("keep")
    result = run("--dataset", "digits", "--out", str(tmp_path / "t"))
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "exists" in result.stderr
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["mine.txt"]


def test_an_interrupted_write_leaves_no_finished_looking_folder(tmp_path, monkeypatch):
    images, labels = np.zeros((6, 8, 8, 3), np.uint8), np.arange(6) % 3
    saved = []
    original = Image.Image.save

    def save_then_stop(self, *args, **kwargs):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        write_image_folder(images, labels, tmp_path / "out")
    assert not (tmp_path / "out").exists() and (tmp_path / "out.partial").is_dir()
    monkeypatch.setattr(Image.Image, "save", original)
    write_image_folder(images, labels, tmp_path / "out")  # the rerun starts over and finishes
    assert per_class(tmp_path / "out") == {"0": 2, "1": 2, "2": 2} and not (tmp_path / "out.partial").exists()
