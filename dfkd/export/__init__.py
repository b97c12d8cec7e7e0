"""Export a verified shard set for projects that do not read HDF5 (`dfkd export`): ImageFolder PNGs, WebDataset
tars or a Hugging Face dataset. The names below load on first use."""

from dfkd import lazy_exports

__all__ = ["export_imagefolder", "export_shards"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, f"{__name__}.exporter"))
