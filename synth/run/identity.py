"""The identity of a synthesis: what changes its images, recorded in every shard's config, compared on resume."""

from __future__ import annotations

import json
from typing import Any, Optional

from synth.common.settings import identity_fields
from synth.config import SynthesisConfig
from synth.inversion.competitor import Competitor
from synth.teachers.teacher import Teacher

UNIT_ORDER = "rounds-major; unit u = (round u // G, class group u % G); sample_id = u * batch + position"


def identity(
    config: SynthesisConfig, teacher: Teacher, classes: list[int], competitor: Optional[Competitor] = None
) -> dict[str, Any]:
    """What changes the images: teacher and weights, classes, batch layout, schedule, losses, seed, threads (as
    synthesize() resolved them), the competing student's file and sha256 when there is one, and for each stage the
    teacher fails on the size it is shown at (synth.teachers.input_size.fit_resolutions)."""
    extra = {"student": competitor.describe()} if competitor is not None else {}
    extra.update({"teacher_grayscale": True} if teacher.grayscale else {})
    extra.update({"teacher_min_input": teacher.min_input} if teacher.min_input else {})
    extra.update({"teacher_preprocessing": config.preprocessing.recorded()} if config.preprocessing.given else {})
    extra.update({"teacher_source": teacher.source} if teacher.source else {})
    if teacher.stage_inputs and not teacher.min_input:  # no one size serves: stage -> size, as strings for JSON
        extra["teacher_input_sizes"] = {str(stage): size for stage, size in sorted(teacher.stage_inputs.items())}
    return json.loads(
        json.dumps(
            {
                **extra,
                "teacher": config.teacher,
                "teacher_weights_sha256": teacher.weights_sha256,
                "classes": classes,
                "per_class": config.per_class,
                "classes_per_batch": config.classes_per_batch,
                "images_per_class": config.images_per_class,
                "units_per_shard": config.units_per_shard,
                "seed": config.seed,
                "threads": config.threads,
                "losses": identity_fields(config.losses),
                "schedule": identity_fields(config.schedule),
                "unit_order": UNIT_ORDER,
                **engine_identity(config),  # replaces the schedule for the generator engine
            }
        )
    )


GENERATOR_SCHEDULE = ("jitter", "flip", "lowres")  # what the generator engine takes from the schedule, besides the
# final resolution; the meta settings only where the units start from meta weights


def engine_identity(config: SynthesisConfig) -> dict[str, Any]:
    """The engine's keys, only for an engine other than the pixel engine (pixel sets keep their identity): the
    engine, its settings that change the images and the part of the schedule it uses (which replaces the pixel
    engine's)."""
    if config.engine == "pixels":
        return {}
    settings = identity_fields(config.generator)
    if not config.generator.noise_lr:
        settings.pop("noise_lr")  # sets made before the setting existed keep their identity
    if not config.generator.meta:
        for name in ("meta_lr", "warmup_units", "warmup_steps", "chains"):
            settings.pop(name)
    schedule = identity_fields(config.schedule)
    schedule = {
        "resolutions": [config.schedule.resolutions[-1]],
        **{k: schedule[k] for k in GENERATOR_SCHEDULE if k in schedule},
    }
    return {"engine": config.engine, "generator": settings, "schedule": schedule}
