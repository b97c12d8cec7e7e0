"""Fashion-MNIST from its IDX files: the reader (gzip, raw, bad files), where the files are looked for, and the
fast demo on a tiny IDX set written here (the test suite never needs the real dataset)."""

import functools
import gzip
import hashlib
import http.server
import json
import struct
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from torchvision.datasets import FashionMNIST

from dfkd.cli import main
from dfkd.data import fashion_mnist
from dfkd.data.idx import read_idx
from dfkd.data.real import real_dataset
from synth.common.errors import UserError


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's IDX layout for a uint8 array, written independently of the reader."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_tiny_fashion(folder, train_per_class=6, test_per_class=2, compress=True):
    """A tiny Fashion-MNIST: each class a bright horizontal band at its own height on black, with noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for part, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 40, (len(labels), 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 8, 4:24] = 220
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{part}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def test_idx_reader_reads_gzip_and_raw_alike(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "raw").write_bytes(idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "raw"), array) and np.array_equal(read_idx(tmp_path / "packed.gz"), array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda data: b"\x00\x01" + data[2:], "wrong magic number 0001"),
        (lambda data: data[:-5], "truncated or padded: shape (2, 3, 4) needs 40 bytes, found 35"),
        (lambda data: data[:6], "truncated: its header needs 16 bytes"),
        (lambda data: b"", "wrong magic number empty"),
    ],
)
def test_idx_reader_refuses_a_bad_file_in_one_line(tmp_path, mutate, message):
    (tmp_path / "bad").write_bytes(mutate(idx_bytes(np.zeros((2, 3, 4), np.uint8))))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_idx(tmp_path / "bad")
    assert "\n" not in str(caught.value) and str(tmp_path / "bad") in str(caught.value)


def test_idx_reader_refuses_a_corrupt_gzip(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((5, 5), np.uint8)))[:-12])
    with pytest.raises(UserError, match="not a readable IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_search_order_data_dir_then_env_then_debian(tmp_path, monkeypatch):
    debian, env_root, explicit = tmp_path / "debian", tmp_path / "env", tmp_path / "explicit"
    write_tiny_fashion(debian, compress=False)
    write_tiny_fashion(env_root / "fashion-mnist")
    write_tiny_fashion(explicit)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.delenv("DFKD_DATA", raising=False)
    assert fashion_mnist.find_files()["train_images"] == debian / "train-images-idx3-ubyte"
    monkeypatch.setenv("DFKD_DATA", str(env_root))
    assert fashion_mnist.find_files()["train_images"] == env_root / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    assert fashion_mnist.find_files(str(explicit))["test_labels"] == explicit / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(UserError, match="looked in --data-dir"):  # an explicit folder is the only place looked at
        fashion_mnist.find_files(str(tmp_path / "empty"))


def test_download_cache_and_torchvision_layout_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("DFKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = write_tiny_fashion(tmp_path / "cache" / "dfkd" / "fashion-mnist")
    assert fashion_mnist.find_files()["train_labels"] == cached / "train-labels-idx1-ubyte.gz"
    torchvision_root = tmp_path / "tv"
    write_tiny_fashion(torchvision_root / "FashionMNIST" / "raw", compress=False)
    found = fashion_mnist.find_files(str(torchvision_root))["test_images"]
    assert found == torchvision_root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"


def test_missing_dataset_names_the_package_and_the_four_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("DFKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        main, ["train-teacher", "--dataset", "fashion-mnist", "--epochs", "1", "--out", str(tmp_path / "t.pt")]
    )
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    for needed in (
        "dataset-fashion-mnist",
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "--data-dir",
        "--download",
    ):
        assert needed in result.stderr
    assert not (tmp_path / "t.pt").exists()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP mirror of a tiny Fashion-MNIST (loopback only), set as torchvision's only mirror with its MD5s;
    nothing is found locally, so the files must come from the mirror into the cache."""
    served = write_tiny_fashion(tmp_path / "served", train_per_class=20)
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    resources = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(served.glob("*.gz"))]
    monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("DFKD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield tmp_path
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the server thread must not write to the command's stderr
        pass


def train_teacher_args(tmp_path, *extra):
    return ["train-teacher", "--dataset", "fashion-mnist", "--epochs", "1", "--threads", "1"] + [
        "--out",
        str(tmp_path / "t.pt"),
        *extra,
    ]


def test_download_fetches_the_files_into_the_cache(mirror):
    result = CliRunner().invoke(main, train_teacher_args(mirror, "--download", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test_images"] == 20  # torchvision's progress lines stay off stdout
    raw = mirror / "cache" / "dfkd" / "fashion-mnist" / "FashionMNIST" / "raw"
    assert fashion_mnist.find_files()["train_images"] == raw / "train-images-idx3-ubyte.gz"
    again = CliRunner().invoke(main, train_teacher_args(mirror, "--json"))  # found without --download now
    assert again.exit_code == 0, again.output


def test_download_refuses_a_corrupt_file_in_one_line(mirror, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "resources", [(name, "0" * 32) for name, _ in FashionMNIST.resources])
    result = CliRunner().invoke(main, train_teacher_args(mirror, "--download"))
    assert result.exit_code == 2, result.output  # torchvision's download bar, then one error line
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not download Fashion-MNIST") and "File not found or corrupted" in last
    assert "train-teacher" not in result.stderr and not (mirror / "t.pt").exists()  # failed before training


def test_download_offline_fails_at_once_in_one_line(mirror, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # a closed loopback port: no network used
    result = CliRunner().invoke(main, train_teacher_args(mirror, "--download"))
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "cannot download Fashion-MNIST" in result.stderr and "dataset-fashion-mnist" in result.stderr


def test_split_is_padded_rgb_with_the_labels(tmp_path):
    split = real_dataset("fashion-mnist").load(0, str(write_tiny_fashion(tmp_path / "f")))
    assert split.train_images.shape == (60, 32, 32, 3) and split.test_images.shape == (20, 32, 32, 3)
    assert split.train_images.dtype == np.uint8 and split.train_labels.dtype == np.int64
    assert (split.train_images[:, :2] == 0).all() and (split.train_images[:, :, -2:] == 0).all()  # 2-px black border
    assert np.array_equal(split.test_labels, np.repeat(np.arange(10), 2))


def test_fast_fashion_demo_end_to_end(tmp_path):
    data = write_tiny_fashion(tmp_path / "fashion", train_per_class=20)
    result = CliRunner().invoke(
        main,
        ["demo", "--dataset", "fashion-mnist", "--data-dir", str(data), "--fast"]
        + ["--out", str(tmp_path / "out"), "--threads", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "fashion-mnist" and summary["test_images"] == 20
    assert summary["synthesized_images"] == 40 and 0 <= summary["student_accuracy"] <= 1
    assert {"teacher_accuracy", "student_accuracy", "fidelity"} <= summary.keys()
    assert len(list((tmp_path / "out" / "real-test").rglob("*.png"))) == 20
