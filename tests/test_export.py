"""Using a synthesized set elsewhere: exports (imagefolder, WebDataset, Hugging Face) round-trip and are read by timm
and datasets; exports are atomic and delete only what they made; dataset cards; several sets combine."""

import importlib
import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dfkd.cli.export import export_command as export
from dfkd.cli.inspect import inspect_command
from dfkd.distill.inputs.loaders import open_shards
from dfkd.export.exporter import export_shards
from synth.common.errors import UserError
from synth.shards.card import CARD, MARKER, render, without_preview, write_card
from synth.shards.format import ShardDataset
from synth.shards.writer import write_shard

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
export_module = importlib.import_module("dfkd.export.formats")
NAMES = ["zero", "one", "two", "three"]


def _write(
    root: Path,
    n: int,
    index: int = 0,
    first_id: int = 0,
    seed: int = 0,
    logits: bool = True,
    teacher_sha: str = "abc",
    size: int = 8,
    names=NAMES,
) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {
        "images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "labels": rng.integers(0, 4, n).astype(np.int64),
        "ids": np.arange(first_id, first_id + n),
        "logits": rng.normal(0, 3, (n, 4)).astype(np.float16) if logits else None,
    }
    write_shard(
        root / f"shard-{index:06d}.h5",
        data["images"],
        data["labels"],
        data["ids"],
        data["logits"],
        num_classes=4,
        mean=MEAN,
        std=STD,
        teacher={"spec": "hand-made", "weights_sha256": teacher_sha},
        config={"seed": 0},
        class_names=names,
    )
    return data


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict]:
    """Two shards (5 + 4 images, 8 px, logits) and the arrays they hold, keyed by sample id."""
    a = _write(tmp_path / "set", 5, 0, first_id=0, seed=1)
    b = _write(tmp_path / "set", 4, 1, first_id=100, seed=2)
    samples = {}
    for d in (a, b):
        for i, sid in enumerate(d["ids"]):
            samples[int(sid)] = (d["images"][i], int(d["labels"][i]), d["logits"][i])
    return tmp_path / "set", samples


def _run(args: list[str]):
    result = CliRunner().invoke(export, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# Safety: atomic, delete only what the export made ------------------------------------------------------------------


def test_export_never_deletes_a_folder_it_did_not_create(source, tmp_path: Path) -> None:
    shards, _ = source
    (tmp_path / "results.tmp").mkdir()
    (tmp_path / "results.tmp" / "thesis.txt").write_text("x")
    result = _run([str(shards), "--to", "imagefolder", str(tmp_path / "results"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.tmp" / "thesis.txt").read_text() == "x"
    again = _run([str(shards), "--to", "imagefolder", str(tmp_path / "results"), "-q"])
    assert again.exit_code == 2 and again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert _run([str(shards), "--to", "imagefolder", str(tmp_path / "new" / "deep"), "-q"]).exit_code == 0


def test_failed_export_leaves_nothing_that_looks_complete(source, tmp_path: Path, monkeypatch) -> None:
    shards, _ = source
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        return b"x"

    monkeypatch.setattr(export_module, "encode_image", failing)
    (tmp_path / "empty").mkdir()
    for fmt in ("imagefolder", "webdataset", "hf"):
        calls.clear()
        with pytest.raises(OSError):
            export_shards(shards, tmp_path / "empty", fmt)
        assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "set"]


def test_damaged_or_incomplete_sets_are_refused(source, tmp_path: Path) -> None:
    shards, _ = source
    with h5py.File(shards / "shard-000001.h5", "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 4
    result = _run([str(shards), "--to", "webdataset", str(tmp_path / "out")])
    assert result.exit_code == 2 and "shard-000001.h5" in result.stderr and "digest" in result.stderr
    assert not (tmp_path / "out").exists()
    (shards / "shard-000001.h5").unlink()
    (shards / "manifest.json").write_text(json.dumps({"num_shards": 2}))
    result = _run([str(shards), "--to", "imagefolder", str(tmp_path / "out")])
    assert result.exit_code == 2 and "incomplete" in result.stderr


# Round trips and readers -------------------------------------------------------------------------------------------


def test_imagefolder_is_read_by_timm(source, tmp_path: Path) -> None:
    from timm.data import create_dataset, create_loader

    shards, samples = source
    out = tmp_path / "png"
    assert _run([str(shards), "--to", "imagefolder", str(out), "-q"]).exit_code == 0
    dataset = create_dataset("", root=str(out), split="")
    folder_of = {index: name for name, index in dataset.reader.class_to_idx.items()}
    assert len(dataset) == 9
    for i in range(len(dataset)):
        image, target = dataset[i]
        sid = int(Path(dataset.filename(i)).stem)
        assert np.array_equal(np.asarray(image), samples[sid][0]) and int(folder_of[target]) == samples[sid][1]
    loader = create_loader(
        dataset,
        input_size=(3, 8, 8),
        batch_size=4,
        is_training=False,
        num_workers=0,
        crop_pct=1.0,
        use_prefetcher=False,
    )
    batches = list(loader)
    assert sum(len(x) for x, _ in batches) == 9 and batches[0][0].shape[1:] == (3, 8, 8)
    assert (out / CARD).read_text() == without_preview(render(shards)) and not (out / "preview.png").exists()


def test_webdataset_round_trip_and_timm(source, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    from timm.data import create_dataset, create_loader

    shards, samples = source
    out = tmp_path / "wds"
    result = _run([str(shards), "--to", "webdataset", str(out), "--maxcount", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shards"] == 3
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["shard_lengths"] == [4, 4, 1] and info["class_names"] == NAMES
    seen = {}
    for sample in wds.WebDataset(str(out / "train-{000000..000002}.tar"), shardshuffle=False):
        meta = json.loads(sample["json"])
        sid = meta["sample_id"]
        image = np.asarray(__import__("PIL.Image").Image.open(io.BytesIO(sample["png"])))
        logits = np.load(io.BytesIO(sample["logits.npy"]))
        assert sample["__key__"] == f"{sid:08d}" and meta["resolution"] == 8
        assert np.array_equal(image, samples[sid][0]) and int(sample["cls"]) == samples[sid][1]
        assert logits.dtype == np.float16 and np.array_equal(logits, samples[sid][2])
        seen[sid] = True
    assert sorted(seen) == sorted(samples)

    dataset = create_dataset("wds/synth", root=str(out), split="train", is_training=False)
    pairs = list(dataset)
    assert len(pairs) == 9 and sorted(t for _, t in pairs) == sorted(s[1] for s in samples.values())
    loader = create_loader(
        dataset,
        input_size=(3, 8, 8),
        batch_size=3,
        is_training=False,
        num_workers=0,
        crop_pct=1.0,
        use_prefetcher=False,
    )
    assert sum(len(t) for _, t in loader) == 9

    jpg = tmp_path / "jpg"
    assert (
        _run(
            [str(shards), "--to", "webdataset", str(jpg), "--image-format", "jpg", "--shard-size", "2000", "-q"]
        ).exit_code
        == 0
    )
    with tarfile.open(jpg / "train-000000.tar") as tar:
        names = tar.getnames()
    assert any(n.endswith(".jpg") for n in names) and not any(n.endswith(".png") for n in names)
    assert len(list(jpg.glob("*.tar"))) > 1


def test_webdataset_shards_are_reproducible_whatever_the_folder_name(source, tmp_path: Path) -> None:
    """The tars carry no time or owner of the export (the same set exports to the same bytes), and a % in the
    output folder's name is a name, not a shard number pattern."""
    for out in ("a%d", "b"):
        assert _run([str(source[0]), "--to", "webdataset", str(tmp_path / out), "-q"]).exit_code == 0
    first, second = ((tmp_path / out / "train-000000.tar").read_bytes() for out in ("a%d", "b"))
    assert first == second
    with tarfile.open(tmp_path / "b" / "train-000000.tar") as tar:
        assert {member.mtime for member in tar.getmembers()} == {0}


@pytest.fixture
def hf(monkeypatch):
    """`datasets`, kept off the network (its offline switches are read when it is imported, so they are set on the
    imported modules too)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def _front_matter(text: str) -> tuple[dict, str]:
    """A card's YAML front matter, parsed, and the text after it."""
    import yaml

    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_hf_export_is_the_hub_layout_read_by_load_dataset(source, tmp_path: Path, hf) -> None:
    shards, samples = source
    out = tmp_path / "hf"
    result = _run([str(shards), "--to", "hf", str(out), "--hf-shard-size", "300", "--json"])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    parquet = [f for f in files if f.startswith("data/")]
    assert json.loads(result.stdout)["parquet_files"] == len(parquet) > 1
    assert parquet == [f"data/train-{i:05d}-of-{len(parquet):05d}.parquet" for i in range(len(parquet))]
    assert set(files) - set(parquet) == {CARD, "preview.png"}  # no save_to_disk files, no cache
    loaded = hf.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    plain = hf.load_dataset(
        "parquet", data_files=str(out / "data" / "*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    for table in (loaded, plain):  # the features are in the card and in the Parquet files' schema
        assert table.features["label"].names == NAMES and len(table) == 9
        assert [row["sample_id"] for row in table] == [0, 1, 2, 3, 4, 100, 101, 102, 103]  # shard order
        for row in table:
            image, label, logits = samples[row["sample_id"]]
            assert np.array_equal(np.asarray(row["image"]), image) and row["label"] == label
            assert np.array_equal(np.asarray(row["logits"], dtype=np.float32).astype(np.float16), logits)


def test_hf_export_keeps_the_true_class_ids_of_a_subset(tmp_path: Path, hf) -> None:
    """Classes 1 and 3 of 4, no class names and no logits in the shards: labels 1 and 3, names "0"-"3"."""
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "set").mkdir()
    write_shard(
        tmp_path / "set" / "shard-000000.h5",
        images,
        np.array([3, 1, 3]),
        np.arange(3),
        None,
        num_classes=4,
        mean=MEAN,
        std=STD,
        teacher={"spec": "hand-made", "weights_sha256": "abc"},
        config={"seed": 0},
    )
    assert _run([str(tmp_path / "set"), "--to", "hf", str(tmp_path / "hf"), "-q"]).exit_code == 0
    table = hf.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert table.features["label"].names == ["0", "1", "2", "3"] and "logits" not in table.features
    assert table["label"] == [3, 1, 3] and np.array_equal(np.asarray(table[1]["image"]), images[1])


def test_hf_export_is_read_by_timm_hfds(source, tmp_path: Path, hf) -> None:
    from timm.data import create_dataset, create_loader

    shards, samples = source
    out = tmp_path / "hf"
    assert _run([str(shards), "--to", "hf", str(out), "--hf-shard-size", "300", "-q"]).exit_code == 0
    dataset = create_dataset("hfds/" + str(out), root=str(tmp_path / "cache"), split="train")
    assert len(dataset) == 9 and dataset.reader.class_to_idx == {name: c for c, name in enumerate(NAMES)}
    for i in range(len(dataset)):
        image, target = dataset[i]
        sid = dataset.reader.dataset[i]["sample_id"]
        assert np.array_equal(np.asarray(image), samples[sid][0]) and target == samples[sid][1]
        assert dataset.filename(i) == f"{sid:08d}.png"  # as the other exports name the image
    loader = create_loader(
        dataset,
        input_size=(3, 8, 8),
        batch_size=4,
        is_training=False,
        num_workers=0,
        crop_pct=1.0,
        use_prefetcher=False,
    )
    assert sum(len(t) for _, t in loader) == 9


def test_hf_card_yaml_names_the_configs_and_features(source, tmp_path: Path, hf) -> None:
    import huggingface_hub

    shards, _ = source
    out = tmp_path / "hf"
    assert _run([str(shards), "--to", "hf", str(out), "-q"]).exit_code == 0
    front, body = _front_matter((out / CARD).read_text())
    source_front, source_body = _front_matter(render(shards))
    assert body == source_body and {k: front[k] for k in source_front} == source_front  # the card, kept
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    info = front["dataset_info"]
    assert [f["name"] for f in info["features"]] == ["image", "label", "sample_id", "logits"]
    assert info["features"][1]["dtype"]["class_label"]["names"] == {str(c): n for c, n in enumerate(NAMES)}
    assert info["splits"] == [{"name": "train", "num_bytes": info["dataset_size"], "num_examples": 9}]
    assert info["download_size"] == sum(p.stat().st_size for p in (out / "data").iterdir())
    card = huggingface_hub.DatasetCard.load(out / CARD)  # what the Hub reads on upload
    assert card.data.configs == front["configs"] and card.data.license == "other"


def test_hf_export_of_a_set_whose_card_yaml_does_not_parse_is_one_line(source, tmp_path: Path, hf) -> None:
    shards, _ = source
    (shards / CARD).write_text("---\nlicense: [unclosed\n---\nmy notes\n")
    result = _run([str(shards), "--to", "hf", str(tmp_path / "hf"), "-q"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert str(shards / CARD) in result.stderr and "does not parse" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_hf_card_front_matter_merge(tmp_path: Path) -> None:
    """A card without front matter gets one; keys of the same name are replaced; YAML that does not parse as a
    mapping is one error line naming the card."""
    from dfkd.export.hub import merge_front_matter

    keys = {"configs": [{"config_name": "default"}]}
    assert merge_front_matter("# notes\n", keys, "card") == "---\nconfigs:\n- config_name: default\n---\n# notes\n"
    merged = merge_front_matter("---\nlicense: mit\nconfigs: old\n---\nbody\n", keys, "card")
    assert merged == "---\nlicense: mit\nconfigs:\n- config_name: default\n---\nbody\n"
    for bad in ("---\n- a list\n---\n", "---\nkey: [unclosed\n---\n", "---\nlicense: mit\n"):
        with pytest.raises(UserError, match="^card: its YAML front matter"):
            merge_front_matter(bad, keys, "card")


def test_missing_extra_names_it(source, tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    monkeypatch.setattr("importlib.import_module", lambda name: no_datasets(name))
    result = _run([str(source[0]), "--to", "hf", str(tmp_path / "hf")])
    assert result.exit_code == 2 and 'pip install "dfkd[hf]"' in result.stderr
    assert not (tmp_path / "hf").exists()


# Dataset card ------------------------------------------------------------------------------------------------------


def test_card_layout_rewrite_rules_and_inspect(source, tmp_path: Path) -> None:
    shards, samples = source
    manifest = {
        "teacher": {"spec": "hand-made", "weights_sha256": "abc"},
        "config": {"seed": 0},
        "format_version": 1,
        "num_shards": 2,
        "complete": True,
        "shards": [{}, {}],
    }
    assert write_card(shards, manifest)
    text = (shards / CARD).read_text()
    front = text.split("---\n")[1]
    assert text.startswith("---\nlicense: other\n") and "task_categories:\n- image-classification" in front
    for needle in (
        "## Teacher",
        "weights sha256: `abc`",
        "## Synthesis config",
        "## Counts per class",
        "teacher fidelity",
        "format `dfkd-shard` version 1",
        "h5py",
        "ShardDataset",
        "dfkd export DIR --to hf",
        "## Licence",
    ):
        assert needle in text, needle
    counts = np.bincount([s[1] for s in samples.values()], minlength=4)
    assert f"| 1 | one | {counts[1]} |" in text
    stamp = (shards / CARD).stat().st_mtime_ns
    assert not write_card(shards, manifest) and (shards / CARD).stat().st_mtime_ns == stamp
    result = CliRunner().invoke(inspect_command, [str(shards)])
    assert f"dataset card: {shards / CARD}" in result.stdout
    (shards / CARD).write_text("my own notes")
    notes = []
    assert not write_card(shards, manifest, notes.append) and (shards / CARD).read_text() == "my own notes"
    assert notes and MARKER not in notes[0]


def test_synthesis_writes_the_card_and_a_rerun_leaves_it(random_teacher, tmp_path: Path) -> None:
    from synth.config import Schedule, SynthesisConfig
    from synth.run.engine import synthesize

    config = SynthesisConfig(
        teacher=random_teacher,
        classes="0-1",
        per_class=2,
        classes_per_batch=2,
        images_per_class=2,
        threads=1,
        device="cpu",
        schedule=Schedule(resolutions=[16], iterations=[2]),
    )
    synthesize(config, tmp_path / "s")
    card_path = tmp_path / "s" / CARD
    text, stamp = card_path.read_text(), card_path.stat().st_mtime_ns
    assert "| 0 | zero | 2 |" in text and "weights sha256: `" in text
    synthesize(config, tmp_path / "s")
    assert card_path.stat().st_mtime_ns == stamp and card_path.read_text() == text


# Combining sets ----------------------------------------------------------------------------------------------------


def test_sets_combine_and_mismatches_are_refused(source, tmp_path: Path) -> None:
    shards, samples = source
    _write(tmp_path / "more", 3, first_id=500, seed=3)
    combined = ShardDataset([shards, tmp_path / "more"], return_logits=True)
    assert len(combined) == 12 and combined.sample_ids.tolist()[-3:] == [500, 501, 502]
    assert len(ShardDataset(shards)) == 9  # one directory: as before
    assert len(open_shards(f"{shards},{tmp_path / 'more'}")) == 12
    _write(tmp_path / "other", 2, teacher_sha="def")
    with pytest.raises(UserError, match="different teacher weights sha256"):
        ShardDataset([shards, tmp_path / "other"])
    _write(tmp_path / "names", 2, names=["a", "b", "c", "d"])
    with pytest.raises(UserError, match="different class names"):
        open_shards(f"{shards},{tmp_path / 'names'}")
    _write(tmp_path / "big", 2, size=16)
    with pytest.raises(UserError, match="different resolution"):
        ShardDataset([shards, tmp_path / "big"])
    for bad in (
        lambda: open_shards(f"{shards},{tmp_path / 'nowhere'}"),
        lambda: ShardDataset([shards, tmp_path / "nowhere"]),
    ):
        with pytest.raises(UserError, match="nowhere"):
            bad()
