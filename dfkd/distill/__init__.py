"""Two-stage DearKD distillation from a CNN teacher (docs/method.md): `distill` (trainer) runs it, build sets it
up, engine trains and validates, resume and output keep its checkpoint and files."""

from dfkd.distill.config import AugmentConfig, DistillConfig, LossConfig, OptimConfig
from dfkd.distill.losses import DistillationLoss
from dfkd.distill.trainer import train_student

__all__ = ["AugmentConfig", "DistillConfig", "DistillationLoss", "LossConfig", "OptimConfig", "train_student"]
