"""Two-stage DearKD distillation from a CNN teacher: taps, losses, data, trainer (docs/method.md)."""
from dfkd.distill.config import AugmentConfig, DistillConfig, LossConfig, OptimConfig
from dfkd.distill.losses import DistillationLoss
from dfkd.distill.trainer import distill

__all__ = ["AugmentConfig", "DistillConfig", "DistillationLoss", "LossConfig", "OptimConfig", "distill"]
