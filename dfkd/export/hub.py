"""The Hugging Face Hub's dataset repository layout: Parquet files `data/train-NNNNN-of-NNNNN.parquet` and a README.md
whose YAML front matter names them (`configs`) and their features (`dataset_info`), so `datasets.load_dataset(DIR)`,
timm's `hfds/DIR` reader and an upload of the folder to the Hub all read it as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from synth.common.errors import UserError

SPLIT = "train"
DATA = "data"
ROW_GROUP = 100  # rows per Parquet row group: what `datasets` uses for image sets (the Hub's viewer reads by group)


def features_yaml(names: list[str], with_logits: bool) -> list[dict[str, Any]]:
    """The features as a dataset card's `dataset_info.features` lists them (`sequence:` rather than the newer `list:`,
    so datasets 2.x reads it too)."""
    features: list[dict[str, Any]] = [
        {"name": "image", "dtype": "image"},
        {"name": "label", "dtype": {"class_label": {"names": {str(c): name for c, name in enumerate(names)}}}},
        {"name": "sample_id", "dtype": "int64"},
    ]
    if with_logits:
        features.append({"name": "logits", "sequence": "float32"})
    return features


class ParquetShards:
    """Rows into `data/train-NNNNN.parquet` files in row groups of ROW_GROUP rows, a new file once one holds
    `max_bytes` of row data (about: the row that reaches it stays); `close` renames them to the Hub's
    `train-NNNNN-of-NNNNN.parquet`."""

    def __init__(self, root: Path, schema: Any, max_bytes: int) -> None:
        (root / DATA).mkdir()
        self.root, self.schema, self.max_bytes = root, schema, max_bytes
        self.files: list[Path] = []
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        self.file_bytes = 0
        self.num_rows = self.num_bytes = 0  # the Arrow size of the rows, dataset_info's num_bytes

    def write(self, row: dict[str, Any], size: int) -> None:
        """Add one row of about `size` bytes (its encoded image and logits)."""
        self.rows.append(row)
        self.file_bytes += size
        if len(self.rows) == ROW_GROUP or self.file_bytes >= self.max_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            if self.writer is None:
                self.files.append(self.root / DATA / f"{SPLIT}-{len(self.files):05d}.parquet")
                self.writer = pq.ParquetWriter(self.files[-1], self.schema)
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            self.writer.write_table(table, row_group_size=ROW_GROUP)
            self.num_rows += table.num_rows
            self.num_bytes += table.nbytes
            self.rows = []
        if self.writer is not None and self.file_bytes >= self.max_bytes:
            self._close_file()

    def _close_file(self) -> None:
        self.writer.close()
        self.writer, self.file_bytes = None, 0

    def close(self) -> list[str]:
        """Write what is left, close the last file and give every file its final name; returns the names."""
        self._flush()
        if self.writer is not None:
            self._close_file()
        names = []
        for i, path in enumerate(self.files):
            final = path.with_name(f"{SPLIT}-{i:05d}-of-{len(self.files):05d}.parquet")
            path.rename(final)
            names.append(f"{DATA}/{final.name}")
        return names


def hub_metadata(features: list[dict[str, Any]], files: Iterable[Path], num_rows: int, num_bytes: int) -> dict:
    """The YAML keys the Hub and `datasets` read: `configs` (the data files of split train) and `dataset_info`
    (features, split size, download and dataset sizes)."""
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA}/{SPLIT}-*"}]}],
        "dataset_info": {
            "features": features,
            "splits": [{"name": SPLIT, "num_bytes": num_bytes, "num_examples": num_rows}],
            "download_size": sum(p.stat().st_size for p in files),
            "dataset_size": num_bytes,
        },
    }


def merge_front_matter(text: str, keys: dict[str, Any], where: str) -> str:
    """A Markdown card with `keys` set in its YAML front matter (added after the keys it has, replacing any of the
    same name); a card without front matter gets one. `where` names the card in the error for YAML that does not
    parse as a mapping."""
    front, body = {}, text
    if text.startswith("---\n"):
        end = text.find("\n---\n", 3)
        if end < 0:
            raise UserError(f"{where}: its YAML front matter has no closing '---' line; fix or remove it")
        try:
            front = yaml.safe_load(text[4 : end + 1]) or {}
        except yaml.YAMLError as error:
            raise UserError(f"{where}: its YAML front matter does not parse ({str(error).splitlines()[0]})") from None
        if not isinstance(front, dict):
            raise UserError(f"{where}: its YAML front matter is not a mapping of keys; fix or remove it")
        body = text[end + len("\n---\n") :]
    front = {**{k: v for k, v in front.items() if k not in keys}, **keys}
    dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=10_000)
    return f"---\n{dumped}---\n{body}"
