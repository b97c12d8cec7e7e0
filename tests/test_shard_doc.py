"""docs/shards.md is a specification another project implements from: its plain-h5py reader must read a real set."""

import re
from pathlib import Path

import numpy as np
import pytest

from synth.config import Schedule, SynthesisConfig
from synth.run.engine import synthesize
from synth.shards.format import ShardDataset

DOC = Path(__file__).resolve().parents[1] / "docs" / "shards.md"


def _reader():
    text = DOC.read_text()
    section = text[text.index("## A reader in plain h5py") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    assert "dfkd" not in code.replace('"dfkd-shard"', "") and "synth" not in code  # no dfkd import
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["read_shards"]


def test_the_documented_reader_reads_a_synthesized_set(random_teacher, tmp_path):
    out = tmp_path / "shards"
    config = SynthesisConfig(
        teacher=random_teacher,
        classes="0-3",
        per_class=2,
        classes_per_batch=2,
        images_per_class=2,
        units_per_shard=1,
        threads=1,
        device="cpu",
        schedule=Schedule(resolutions=(8,), iterations=(1,)),
    )
    synthesize(config, out)
    images, labels = _reader()(out)
    dataset = ShardDataset(out)
    assert images.shape == (len(dataset), 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == dataset.labels.tolist()
    assert np.array_equal(images[3], dataset[3][0].permute(1, 2, 0).numpy())
    # a damaged shard is caught by the documented digest recipe
    import h5py

    with h5py.File(out / "shard-000001.h5", "r+") as f:
        f["labels"][0] = 3
    with pytest.raises(AssertionError, match="digest"):
        _reader()(out)
