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
from dfkd.evaluate.plots import accuracy_limits, curves_figure, loss_terms, read_metrics
from synth.config import LossWeights, Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.card import CARD
from synth.shards.manifest import read_manifest
from synth.shards.pictures import BACKGROUND, display_cell, draw_class_grid, grid_image, is_dfkd_png, read_unit_log
from synth.shards.synthesis_plot import draw_synthesis, weighted_terms

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
    width, height = Image.open(preview).size  # 4 classes, 8 cells of the 32-px images doubled to 64 px (4 empty)
    assert height == 4 * 66 + 2 and 8 * 66 + 2 < width <= 8 * 66 + 2 + 80  # a label column for "3 three", not 128 px
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


# What the pictures show --------------------------------------------------------------------------------------------


def test_grids_enlarge_small_images_pixel_by_pixel_with_a_compact_label_column(tiny_set):
    assert [display_cell(r) for r in (8, 28, 32, 64, 96, 224)] == [64, 84, 64, 64, 96, 224]
    grid = np.asarray(draw_class_grid(tiny_set, per_class=2, classes=[1]))
    assert grid.shape[0] == 64 + 4  # one row of 64-px cells (the set is 32 px)
    column = grid.shape[1] - 2 * 66 - 2
    assert column <= 60  # "1 one" and its margins, not a third of the picture
    from synth.shards.format import ShardDataset

    dataset = ShardDataset(tiny_set)
    first = dataset[int(np.flatnonzero(dataset.labels == 1)[0])][0].permute(1, 2, 0).numpy()
    dataset.close()
    cell = grid[2 : 2 + 64, column + 2 : column + 2 + 64]
    assert (cell == first.repeat(2, 0).repeat(2, 1)).all()  # nearest-neighbour: every pixel a 2x2 square


def test_grid_shows_a_black_image_and_a_missing_one_apart():
    black = np.zeros((8, 8, 3), np.uint8)
    grid = np.asarray(grid_image([("0", [black])], per_class=2, size=64))
    column = grid.shape[1] - 2 * 66 - 2
    assert (grid[10, column + 2 + 10] == 0).all()  # the black image
    assert (grid[10, column + 2 + 66 + 10] == BACKGROUND).all()  # the missing one: background, not black
    assert (grid[0, column + 10] == BACKGROUND).all() and BACKGROUND != (0, 0, 0)  # cells stand out from the gaps


def test_synthesis_plot_stacks_the_weighted_terms_to_the_logged_total(tiny_set):
    records, config = read_unit_log(tiny_set), read_manifest(tiny_set)["config"]
    terms = weighted_terms(records, config["losses"])
    total = [r["losses"]["total"] for r in records]
    assert set(terms) == {"ce", "bn", "tv", "l2", "ep", "triplet"}
    assert np.allclose(np.sum(list(terms.values()), axis=0), total, rtol=1e-4)
    assert np.allclose(terms["tv"], [config["losses"]["tv"] * r["losses"]["tv"] for r in records])
    assert weighted_terms(records, {**config["losses"], "tv": 1.0}) is None  # weights that do not add up
    figure = draw_synthesis(records, config, "t")
    ax = figure.axes[1]
    tops = np.sum([[bar.get_height() for bar in bars] for bars in ax.containers], axis=0)
    assert np.allclose(tops, total, rtol=1e-4)  # what is drawn adds up to the total, not unweighted TV of ~300
    assert "x 0.0001" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    _legend_outside(figure, ax)
    assert "work unit is one batch of 2 classes x 2 images" in figure._supxlabel.get_text()


def _legend_outside(figure, ax) -> None:
    """The axes' legend is drawn beside it, over none of its lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    legend, area = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= area.x1 - 1


def _records(epochs: int, stage2_from: int = 0, top1=(0.96, 0.985, 0.99, 0.995)) -> list[dict]:
    """Epoch records as train_one_epoch writes them, with a_hid 10 and unit head weights."""
    records = []
    for e in range(1, epochs + 1):
        cls, dist = 1.0 / e + 0.3, 1.0 / e + 0.31
        hid = 0.0 if stage2_from and e >= stage2_from else 0.5 / e
        stage = 2 if stage2_from and e >= stage2_from else 1
        records.append(
            {"epoch": e, "stage": stage, "loss": cls + dist + 10 * hid, "cls": cls, "dist": dist, "hid": hid}
        )
        records[-1].update(lr=1e-3, val_top1=top1[(e // 2 - 1) % len(top1)] if e % 2 == 0 or epochs < 4 else None)
    return records


def test_curves_stack_weighted_terms_fit_the_accuracy_and_never_crowd_the_epochs():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    records = _records(20, stage2_from=16)
    terms = loss_terms(records)
    assert list(terms) == ["cls: class head", "dist: distillation head", "hid x 10: hidden-layer MSE"]
    assert np.allclose(np.sum(list(terms.values()), axis=0), [r["loss"] for r in records])
    assert loss_terms([dict(r, loss=2 * r["cls"] + r["dist"] + 10 * r["hid"]) for r in records]) is None
    figure = curves_figure(records, "t")
    loss, _, accuracy = figure.axes
    tops = np.sum([[bar.get_height() for bar in bars] for bars in loss.containers], axis=0)
    assert np.allclose(tops, [r["loss"] for r in records])  # cls and dist side by side in one stack, not overlaid
    low, high = accuracy.get_ylim()
    assert 0.9 < low < 0.96 and 0.995 < high < 1.01  # fitted to 0.96-0.995, not 0-1
    _legend_outside(figure, loss)
    for epochs in (1, 2, 3, 80):
        figure = curves_figure(_records(epochs), "t")
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        for ax in figure.axes:
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() and 1 <= t <= epochs for t in ticks), (epochs, ticks)
            boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()]
            assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), epochs  # labels never run together


def test_accuracy_limits_follow_the_values():
    assert accuracy_limits([0.2, 0.8])[0] < 0.2 and accuracy_limits([0.2, 0.8])[1] > 0.8
    low, high = accuracy_limits([1.0, 1.0])
    assert 0.97 <= low < 1.0 < high < 1.01
    low, high = accuracy_limits([0.0])
    assert low == 0.0 and high >= 0.02


def test_inspect_redraws_curves_of_a_real_run_with_its_weights(tiny_set, random_teacher, tmp_path):
    _distill(tiny_set, random_teacher, tmp_path / "run", epochs=2)
    records = read_metrics(tmp_path / "run")
    terms = loss_terms(records)
    assert terms is not None and any(label.startswith("hid x ") for label in terms)
    assert np.allclose(np.sum(list(terms.values()), axis=0), [r["loss"] for r in records], rtol=1e-4)
