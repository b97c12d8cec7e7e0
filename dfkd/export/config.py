"""Settings of `dfkd export` (its format options; no recipe section: export has nothing a recipe could hold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from synth.common.errors import UserError
from synth.common.settings import check_choices, setting

FORMATS = ("imagefolder", "webdataset", "hf")  # what `dfkd export --to` writes (dfkd.export.formats.WRITERS)


@dataclass
class ExportConfig:
    """Settings of `dfkd export` (the format options; the format itself is --to)."""

    maxcount: int = setting(10000, help="webdataset: samples per tar shard.", flag=True)
    shard_size: Optional[int] = setting(
        None, help="webdataset: bytes per tar shard (about).", flag=True, default_text="no limit"
    )
    image_format: str = setting(
        "png", help="webdataset: image encoding (png is lossless).", flag=True, choices=("png", "jpg")
    )
    quality: int = setting(95, help="webdataset: JPEG quality.", flag=True)
    hf_shard_size: int = setting(
        500_000_000, help="hf: bytes per Parquet file under data/ (about; the Hub's default).", flag=True
    )

    def validate(self) -> None:
        """Refuse values no writer could use."""
        check_choices(self)
        if self.maxcount < 1:
            raise UserError(f"maxcount must be at least 1, not {self.maxcount}")
        if self.shard_size is not None and self.shard_size < 1:
            raise UserError(f"shard-size must be at least 1 byte, not {self.shard_size}")
        if self.hf_shard_size < 1:
            raise UserError(f"hf-shard-size must be at least 1 byte, not {self.hf_shard_size}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"quality {self.quality} must be in 1-100")
