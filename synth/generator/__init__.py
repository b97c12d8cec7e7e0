"""The generator engine (`dfkd synthesize --engine generator`, docs/method.md "The generator engine"): a
class-conditional generator (network), adapted to one work unit by the synthesis objective in a few steps (adapt),
its meta-learned initialisation carried along chains of shards with Reptile (chains), and each chain's state saved
at shard boundaries for resume (chain_file)."""
