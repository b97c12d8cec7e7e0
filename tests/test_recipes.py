"""Every shipped recipe: each of its sections builds the config of the command that reads it (unknown keys,
wrong types and unknown sections are refused by dfkd.config)."""

from pathlib import Path

import pytest
import yaml

from dfkd.config import SECTIONS, build, load_recipe
from dfkd.digits.teacher import TeacherTrainingConfig
from dfkd.distill.config import DistillConfig
from dfkd.evaluate.config import EvaluateConfig
from synth.config import SynthesisConfig

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
CONFIGS = {
    "synthesize": SynthesisConfig,
    "distill": DistillConfig,
    "evaluate": EvaluateConfig,
    "train_teacher": TeacherTrainingConfig,
}
NEEDED = {"synthesize": {"teacher": "t.pt"}, "distill": {"shards": "s/", "teacher": "t.pt"}}  # given on the CLI


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_section_of_every_recipe_builds_its_config(recipe):
    data = yaml.safe_load(recipe.read_text())
    sections = [s for s in SECTIONS if s in data] or ["synthesize" if "schedule" in data else "distill"]
    for section in sections:
        settings = {**NEEDED.get(section, {}), **load_recipe(str(recipe), section)}
        if section == "distill" and "images" in settings:
            settings.pop("shards")
        build(CONFIGS[section], settings)


def test_the_command_table_covers_every_section():
    assert set(CONFIGS) == SECTIONS
