"""`dfkd export`: convert a verified shard set for projects that do not read HDF5."""

from __future__ import annotations

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.evaluate import shards_argument
from dfkd.cli.options import config_options, config_overrides
from dfkd.export.config import FORMATS, ExportConfig
from dfkd.recipe_loader import build


@click.command(
    "export",
    epilog="""
\b
Examples:
  dfkd export shards/ --to imagefolder digits-png/
  dfkd export shards/ --to webdataset digits-wds/ --maxcount 5000 --image-format jpg
  dfkd export shards/ --to hf digits-hf/

The shards are verified against their digests first. OUT must be new or empty; the export is
written into a private .OUT.partial-XXXX folder beside it and renamed to OUT when complete (a failed
export leaves no OUT). The set's dataset card (README.md) is copied into OUT.

\b
imagefolder: OUT/<class id>/<sample id>.png (class ids zero-padded to the width of the largest id,
  sample ids to 8 digits); lossless. ImageFolder readers number folders 0..K-1, so the true ids are
  in OUT/class_map.txt (line k: the folder of class k; timm's class_map=, dfkd's --class-map) and
  OUT/classes.json (class_to_idx, class_names); docs/exports.md shows how to read them back.
webdataset: OUT/train-NNNNNN.tar with at most --maxcount samples and about
  --shard-size bytes each; per sample <id>.png|jpg, <id>.cls, <id>.logits.npy (float16), <id>.json
  (sample_id, label, resolution); OUT/_info.json describes split "train" for timm
  (create_dataset("wds/NAME", root=OUT, split="train")); written by webdataset.ShardWriter.
hf (pip install "dfkd[hf]"): the Hugging Face Hub's layout: OUT/data/train-NNNNN-of-NNNNN.parquet
  (about --hf-shard-size bytes each; image, label: the class id, a ClassLabel with the class names, a
  name several classes share gets its id, "crane (134)"; sample_id; logits: float32 when stored) and
  the card's YAML configs/dataset_info: datasets.load_dataset(OUT), timm's hfds/OUT, hf upload.
""",
)
@shards_argument
@click.option("--to", "fmt", type=click.Choice(FORMATS), required=True, help="Output layout.")
@click.argument("out", type=click.Path(file_okay=False))
@config_options(ExportConfig)
@common_options(config=False)  # export has no settings a recipe could hold: --config is refused as unknown
def export_command(shards: str, fmt: str, out: str, json_mode: bool, quiet: bool, **options) -> None:
    """Export verified shards for projects that do not read HDF5 (PNG folders, WebDataset, Hugging Face)."""
    reporter = Reporter(json_mode, quiet)
    config = build(ExportConfig, config_overrides(options))
    from dfkd.export.exporter import export_shards  # torch loads once the settings are checked

    result = export_shards(shards, out, fmt, reporter.progress("export"), config)
    reporter.result(
        result, [f"exported {result['images']} images of {result['classes']} classes to {result['out']} ({fmt})"]
    )
