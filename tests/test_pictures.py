"""Pictures dfkd writes on its own: distillation curves, the dataset card's preview, the synthesis plot."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfkd.cli import main
from dfkd.data.image_folder import write_image_folder
from dfkd.distill import AugmentConfig, DistillConfig, OptimConfig, train_student
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.card import CARD
from synth.shards.pictures import is_dfkd_png

NO_AUG = AugmentConfig(
    rand_augment=None, color_jitter=0.0, scale=(1.0, 1.0), hflip=0.0, mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.0
)


@pytest.fixture(scope="module")
def tiny_set(random_teacher, tmp_path_factory) -> Path:
    """16 synthesized 32-px images of 4 classes (a few seconds)."""
    out = tmp_path_factory.mktemp("set")
    config = SynthesisConfig(
        teacher=random_teacher,
        classes="0-3",
        per_class=4,
        classes_per_batch=2,
        images_per_class=2,
        units_per_shard=2,
        threads=1,
        device="cpu",
        schedule=Schedule(resolutions=(16, 32), iterations=(4, 4)),
        losses=LossWeights(bn=1.0),
    )
    synthesize(config, out)
    return out


def _distill(shards: Path, teacher: str, out: Path, epochs: int) -> dict:
    """A pico student for `epochs` (stage 2 in the last), validated on 8 random 'real' images."""
    val = out.parent / "val"
    if not val.is_dir():
        images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        write_image_folder(images, np.arange(8) % 4, val)
    config = DistillConfig(
        shards=str(shards),
        teacher=teacher,
        student="dearkd_pico_patch4_32",
        epochs=epochs,
        stage1_epochs=max(1, epochs - 1),
        batch_size=8,
        workers=0,
        threads=1,
        device="cpu",
        drop_path=0.0,
        optim=OptimConfig(lr=0.02, warmup_epochs=0),
        augment=NO_AUG,
        val_data=str(val),
    )
    return train_student(config, out)


def test_distill_writes_curves_that_grow_with_epochs_and_inspect_redraws_them(tiny_set, random_teacher, tmp_path):
    short = _distill(tiny_set, random_teacher, tmp_path / "short", epochs=1)
    long = _distill(tiny_set, random_teacher, tmp_path / "long", epochs=4)
    curves = Path(long["curves"])
    assert curves == tmp_path / "long" / "curves.png" and is_dfkd_png(curves)
    assert curves.stat().st_size > Path(short["curves"]).stat().st_size
    with Image.open(curves) as image:
        image.verify()
    pixels = np.asarray(Image.open(curves).convert("L"), dtype=float)
    assert pixels.std() > 20  # lines, labels and text on white: not a blank canvas
    assert (pixels < 128).mean() > 0.01
    drawn = curves.read_bytes()
    curves.unlink()
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "long"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["epochs"] == 4 and report["stage2_from"] == 4 and report["val_top1"] is not None
    assert curves.read_bytes() == drawn  # the same picture from metrics.jsonl alone
    Image.new("RGB", (4, 4)).save(curves)  # a picture dfkd did not write
    mine = curves.read_bytes()
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "long")])
    assert result.exit_code == 0 and "was not written by dfkd" in result.stderr and curves.read_bytes() == mine


def test_synthesis_writes_preview_and_plot_the_card_links_and_exports_copy(tiny_set, tmp_path):
    preview, plot = tiny_set / "preview.png", tiny_set / "synthesis.png"
    assert is_dfkd_png(preview) and is_dfkd_png(plot)
    assert Image.open(preview).size == (128 + 8 * 34 + 2, 4 * 34 + 2)  # 4 classes, 8 cells of 32 px (4 black)
    assert "](preview.png)" in (tiny_set / CARD).read_text()
    result = CliRunner().invoke(main, ["export", str(tiny_set), "--to", "webdataset", str(tmp_path / "wds"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "wds" / "preview.png").read_bytes() == preview.read_bytes()
    assert "](preview.png)" in (tmp_path / "wds" / CARD).read_text()


def test_pictures_leave_resume_alone(random_teacher, tiny_set, tmp_path):
    """A finished rerun rewrites no picture; a directory of dfkd's own pictures and card is dfkd's, a foreign
    preview.png makes it someone else's."""
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tiny_set.iterdir() if p.is_file()}
    args = ["synthesize", "--teacher", random_teacher, "--classes", "0-3", "--per-class", "4"]
    args += ["--classes-per-batch", "2", "--images-per-class", "2", "--units-per-shard", "2", "--resolutions", "16,32"]
    args += ["--iterations", "4,4", "--a-bn", "1", "--threads", "1", "--device", "cpu", "-q"]
    assert CliRunner().invoke(main, [*args, "--out", str(tiny_set)]).exit_code == 0
    assert before == {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tiny_set.iterdir() if p.is_file()}
    own = tmp_path / "own"
    own.mkdir()
    for name in ("preview.png", "synthesis.png", CARD):
        (own / name).write_bytes((tiny_set / name).read_bytes())
    assert CliRunner().invoke(main, [*args, "--iterations", "2,2", "--out", str(own)]).exit_code == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    Image.new("RGB", (4, 4)).save(foreign / "preview.png")
    result = CliRunner().invoke(main, [*args, "--out", str(foreign)])
    assert result.exit_code == 2 and "is not a dfkd synthesis directory" in result.stderr
