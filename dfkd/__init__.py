"""dfkd: data-free knowledge distillation from a CNN teacher into a DearKD vision transformer."""

from dfkd import models  # noqa: F401  (registers the DearKD students with timm)
from synth.errors import UserError

__all__ = ["UserError", "models"]
