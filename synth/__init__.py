"""synth: DeepInversion synthesis from a BatchNorm CNN teacher into versioned HDF5 shards.

`import synth.teachers.small_cnn` registers the small BN CNN teachers with timm (the teacher loaders do it themselves)."""

from synth.common.errors import UserError

__all__ = ["UserError"]
