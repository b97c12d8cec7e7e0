"""Two-stage DearKD distillation from a CNN teacher (docs/method.md): `distill` (trainer) runs it, build sets it
up, inputs/ feeds it, epoch trains and validates, resume and output keep its checkpoint and files. The names below load on first
use (the settings module stays free of torch)."""

import sys

from dfkd import lazy_exports

_CONFIG, _LOSSES, _TRAINER = "dfkd.distill.config", "dfkd.distill.losses", "dfkd.distill.trainer"
__all__ = ["AugmentConfig", "DistillConfig", "DistillationLoss", "LossConfig", "OptimConfig", "train_student"]
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("AugmentConfig", "DistillConfig", "LossConfig", "OptimConfig"), _CONFIG),
        "DistillationLoss": _LOSSES,
        "train_student": _TRAINER,
    },
)


class _CallablePackage(type(sys.modules[__name__])):
    """`dfkd.distill` is this package once it is imported (Python sets the attribute), and also the Python API's
    function `dfkd.distill(shards, teacher, out, ...)`: calling the package calls dfkd.api.distill."""

    def __call__(self, *args, **kwargs):
        from dfkd.api import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
