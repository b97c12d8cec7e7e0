"""Evaluation: LPIPS diversity and teacher fidelity of shards, accuracy on real images, grids, inspect, export."""

from dfkd.evaluate.accuracy import Classifier, load_student, measure_accuracy, teacher_classifier
from dfkd.evaluate.export import export_imagefolder, export_shards
from dfkd.evaluate.fidelity import measure_fidelity
from dfkd.evaluate.grid import draw_class_grid
from dfkd.evaluate.inspect import inspect_shards
from dfkd.evaluate.lpips_diversity import load_lpips, measure_lpips_diversity

__all__ = [
    "Classifier",
    "measure_accuracy",
    "draw_class_grid",
    "export_imagefolder",
    "export_shards",
    "measure_fidelity",
    "inspect_shards",
    "load_lpips",
    "load_student",
    "measure_lpips_diversity",
    "teacher_classifier",
]
