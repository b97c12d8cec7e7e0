"""synth: DeepInversion synthesis from a BatchNorm CNN teacher into versioned HDF5 shards."""
from synth.errors import UserError

__all__ = ["UserError"]
