"""Shard format v1: plain-h5py round trip, ShardDataset with workers, verify, version refusal."""

import json

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synth.common.errors import UserError
from synth.shards.format import FORMAT_VERSION, ShardDataset, shard_name
from synth.shards.manifest import write_manifest
from synth.shards.verify import verify, verify_shard
from synth.shards.writer import content_digest, write_shard


def _write(root, index, n=6, size=8, logits=True, seed=0, **kwargs):
    rng = np.random.default_rng(seed + index)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 3 + index
    ids = np.arange(n) + index * n
    out = rng.standard_normal((n, 5)).astype(np.float16) if logits else None
    write_shard(
        root / shard_name(index),
        images,
        labels,
        ids,
        out,
        num_classes=5,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        teacher={"spec": "t"},
        config={"seed": 1},
        class_names=list("abcde"),
        **kwargs,
    )
    return images, labels, ids, out


def test_plain_h5py_round_trip(tmp_path):
    images, labels, ids, logits = _write(tmp_path, 0, compression="lzf")
    with h5py.File(tmp_path / "shard-000000.h5", "r") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (6, 8, 8, 3)
        assert f["images"].chunks == (1, 8, 8, 3) and f["images"].compression == "lzf"
        np.testing.assert_array_equal(f["images"][:], images)
        assert f["labels"].dtype == np.int64 and f["sample_ids"].dtype == np.int64
        np.testing.assert_array_equal(f["labels"][:], labels)
        np.testing.assert_array_equal(f["sample_ids"][:], ids)
        assert f["teacher_logits"].dtype == np.float16
        assert [s.decode() for s in f["class_names"][:]] == list("abcde")
        attrs = dict(f.attrs)
    assert attrs["format"] == "dfkd-shard" and attrs["format_version"] == FORMAT_VERSION
    assert attrs["resolution"] == 8 and attrs["num_classes"] == 5
    assert json.loads(attrs["config"]) == {"seed": 1} and json.loads(attrs["teacher"]) == {"spec": "t"}
    assert attrs["digest"] == content_digest(images, labels, ids, logits)
    assert not list(tmp_path.glob("*.tmp"))


def test_dataset_with_two_workers_returns_every_sample(tmp_path):
    written = [_write(tmp_path, k) for k in range(3)]
    dataset = ShardDataset(tmp_path, return_logits=True)
    assert len(dataset) == 18 and dataset.num_classes == 5 and dataset.class_names == list("abcde")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    images, labels, logits = (torch.cat(parts) for parts in zip(*loader))
    expected = np.concatenate([w[0] for w in written]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(images.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), np.concatenate([w[1] for w in written]))
    np.testing.assert_allclose(logits.numpy(), np.concatenate([w[3] for w in written]).astype(np.float32))
    assert not dataset._files  # __init__ keeps no open handle


def test_dataset_pil_and_transform(tmp_path):
    images, *_ = _write(tmp_path, 0)
    pil = ShardDataset(tmp_path, as_pil=True)[2][0]
    np.testing.assert_array_equal(np.asarray(pil), images[2])
    flipped = ShardDataset(tmp_path, transform=lambda t: t.flip(-1))[2][0]
    np.testing.assert_array_equal(flipped.numpy(), images[2].transpose(2, 0, 1)[:, :, ::-1])


def test_verify_detects_flipped_bytes_and_truncation(tmp_path):
    for k in range(3):
        _write(tmp_path, k)
    write_manifest(tmp_path, {"num_shards": 4})
    assert verify(tmp_path).images == 18
    with h5py.File(tmp_path / shard_name(1), "r+") as f:
        f["images"][0, 0, 0, 0] ^= 0xFF
    path = tmp_path / shard_name(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = verify(tmp_path)
    assert not report.ok
    assert "digest" in report.problems[shard_name(1)] and "unreadable" in report.problems[shard_name(2)]
    assert report.missing == [shard_name(3)]


def test_newer_format_version_refused(tmp_path):
    _write(tmp_path, 0)
    with h5py.File(tmp_path / shard_name(0), "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UserError, match="upgrade dfkd"):
        ShardDataset(tmp_path)
    assert "upgrade dfkd" in verify_shard(tmp_path / shard_name(0))


def test_empty_directory_refused(tmp_path):
    with pytest.raises(UserError, match="no shards"):
        ShardDataset(tmp_path)
    with pytest.raises(UserError, match="logits"):
        _write(tmp_path, 0, logits=False)
        ShardDataset(tmp_path, return_logits=True)
