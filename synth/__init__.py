"""synth: DeepInversion synthesis from a BatchNorm CNN teacher into versioned HDF5 shards."""

from synth import small_cnn  # noqa: F401  (registers the small BN CNN teachers with timm)
from synth.errors import UserError

__all__ = ["UserError"]
