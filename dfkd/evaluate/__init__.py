"""Evaluation: LPIPS diversity and teacher fidelity of shards, accuracy on real images, grids, inspection (and the
export functions of dfkd.export, handed on).
The names below load on first use (the settings module stays free of torch)."""

from dfkd import lazy_exports

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
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("Classifier", "load_student", "measure_accuracy", "teacher_classifier"), f"{__name__}.accuracy"
        ),
        **dict.fromkeys(("export_imagefolder", "export_shards"), "dfkd.export.exporter"),  # dfkd.export's, as before
        "measure_fidelity": f"{__name__}.fidelity",
        "draw_class_grid": f"{__name__}.grid",
        "inspect_shards": f"{__name__}.inspection",
        **dict.fromkeys(("load_lpips", "measure_lpips_diversity"), f"{__name__}.lpips_diversity"),
    },
)
