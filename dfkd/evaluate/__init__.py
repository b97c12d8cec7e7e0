"""Evaluation: LPIPS diversity and teacher fidelity of shards, accuracy on real images, grids, inspect, export."""
from dfkd.evaluate.accuracy import (
           Classifier,
           accuracy,
           load_student,
           teacher_classifier,
)
from dfkd.evaluate.export import export_imagefolder, export_shards
from dfkd.evaluate.fidelity import fidelity
from dfkd.evaluate.grid import class_grid
from dfkd.evaluate.inspect import inspect_shards
from dfkd.evaluate.lpips_diversity import load_lpips, lpips_diversity

__all__ = ["Classifier", "accuracy", "class_grid", "export_imagefolder", "export_shards", "fidelity",
           "inspect_shards", "load_lpips", "load_student", "lpips_diversity", "teacher_classifier"]
