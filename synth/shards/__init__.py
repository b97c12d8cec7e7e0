"""The shard format v1 (docs/shards.md): the contract other KD projects read, in one room that another project could
vendor. format: names, constants, reading and the torch dataset; writer: one shard written atomically; manifest:
the index of a set; verify: layout, digests and units; card and pictures: the set's README.md, preview.png and
synthesis.png."""

from synth.shards.format import FORMAT, FORMAT_VERSION, ShardDataset, list_shards, read_shard_config
from synth.shards.verify import verify

__all__ = ["FORMAT", "FORMAT_VERSION", "ShardDataset", "list_shards", "read_shard_config", "verify"]
