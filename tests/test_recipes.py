"""Every shipped recipe: each of its sections builds the config of the command that reads it (unknown keys,
wrong types and unknown sections are refused by dfkd.recipe_loader)."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dfkd.cli.distill import distill_command
from dfkd.distill.config import DistillConfig
from dfkd.evaluate.config import EvaluateConfig
from dfkd.pipeline.teacher_training import TeacherTrainingConfig
from dfkd.recipe_loader import SECTIONS, apply_overrides, build, load_recipe
from synth.common.errors import UserError
from synth.config import SynthesisConfig
from synth.teachers.packing import ImportConfig

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
CONFIGS = {
    "synthesize": SynthesisConfig,
    "distill": DistillConfig,
    "evaluate": EvaluateConfig,
    "train_teacher": TeacherTrainingConfig,
    "import_teacher": ImportConfig,
}
NEEDED = {
    "synthesize": {"teacher": "t.pt"},
    "distill": {"shards": "s/", "teacher": "t.pt"},
    "import_teacher": {"teacher": "t.pt"},
}  # given on the CLI


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


def test_shipped_recipes_leave_optional_paths_unset():
    for recipe in RECIPES:
        for section in SECTIONS:
            settings = load_recipe(str(recipe), section)
            for name in ("val_data", "teacher_weights", "lpips_backbone", "data"):
                assert settings.get(name) is None, (recipe.stem, section, name)


def test_a_recipe_shrinks_with_epochs_alone(random_teacher, tmp_path):
    """`--epochs 1` on the 300-epoch recipe: stage 1 and warm-up keep their share (a note says so)."""
    from click.testing import CliRunner

    from dfkd.cli import main

    shards = tmp_path / "shards"
    small = ["--classes", "0-1", "--per-class", "2", "--classes-per-batch", "2", "--images-per-class", "2"]
    small += ["--resolutions", "8", "--iterations", "1", "--threads", "1", "--device", "cpu"]
    made = CliRunner().invoke(main, ["synthesize", "--teacher", random_teacher, *small, "--out", str(shards)])
    assert made.exit_code == 0, made.output
    args = ["distill", "--config", "df_dearkd_distill", "--epochs", "1", "--shards", str(shards), "--teacher"]
    args += [random_teacher, "--student", "dearkd_pico_patch4_32", "--batch-size", "4", "--workers", "0"]
    args += ["--threads", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 1 and summary["stage1_epochs"] == 1 and summary["val_top1"] is None
    assert "stage1_epochs 300 -> 1" in result.stderr and "warmup_epochs 5 -> 0.0167" in result.stderr


RESOLVED = Path(__file__).parent / "recipes_resolved.json"  # regenerate: python tests/test_recipes.py


def resolved_recipes() -> dict:
    """Every shipped recipe's sections as the commands build them (the settings given on the command line
    added), as plain data: {recipe: {section: settings}}."""
    result = {}
    for recipe in RECIPES:
        sections = {}
        for section in sorted(SECTIONS):
            data = load_recipe(str(recipe), section)
            if data:
                settings = {**NEEDED.get(section, {}), **data}
                if section == "distill" and "images" in settings:
                    settings.pop("shards")
                sections[section] = json.loads(json.dumps(dataclasses.asdict(build(CONFIGS[section], settings))))
        result[recipe.stem] = sections
    return result


def _recorded_values_hold(recorded, now, where: str) -> None:
    """Every value `recorded` holds is the same `now` (a setting added since then, with its default, is not a
    difference of the recipes)."""
    if isinstance(recorded, dict):
        assert isinstance(now, dict), where
        for key, value in recorded.items():
            assert key in now, f"{where}.{key} is gone"
            _recorded_values_hold(value, now[key], f"{where}.{key}")
    else:
        assert recorded == now, f"{where}: recorded {recorded!r}, now {now!r}"


def test_every_recipe_resolves_to_the_recorded_settings():
    """Recipes written as differences from a base resolve to exactly the settings the full copies had."""
    recorded, now = json.loads(RESOLVED.read_text()), resolved_recipes()
    assert set(now) == set(recorded)
    for name in recorded:
        assert set(now[name]) == set(recorded[name]), name
        _recorded_values_hold(recorded[name], now[name], name)


def _recipe(folder: Path, name: str, text: str) -> str:
    (folder / f"{name}.yaml").write_text(text)
    return str(folder / f"{name}.yaml")


def test_a_recipe_states_only_what_differs_from_its_base(tmp_path):
    """Mappings merge key by key (dotted keys too), lists and null replace; a base is a file beside the recipe or a
    shipped recipe; the chain goes on down."""
    (tmp_path / "sub").mkdir()
    _recipe(tmp_path / "sub", "mine", "base: dearkd_tiny\ndistill: {epochs: 10, stage1_epochs: 5, optim: {lr: 1.0e-3}}")
    child = _recipe(
        tmp_path,
        "child",
        "base: sub/mine.yaml\ndistill:\n  optim.min_lr: 0.0\n  val_data: null\n  augment: {scale: [0.5, 1.0]}\n",
    )
    data = load_recipe(child, "distill")
    shipped = load_recipe("dearkd_tiny", "distill")
    assert data["optim"] == {**shipped["optim"], "lr": 1.0e-3, "min_lr": 0.0}
    assert data["augment"] == {**shipped["augment"], "scale": [0.5, 1.0]}
    assert (data["epochs"], data["stage1_epochs"], data["val_data"], data["student"]) == (
        10,
        5,
        None,
        "dearkd_tiny_patch16_224",
    )


def test_a_cycle_or_an_unknown_base_is_one_error_line(tmp_path):
    _recipe(tmp_path, "a", "base: b\ndistill: {epochs: 1}")
    _recipe(tmp_path, "b", "base: a.yaml\n")
    with pytest.raises(UserError, match="cycle of bases: .*a.yaml -> b -> a.yaml$"):
        load_recipe(str(tmp_path / "a.yaml"), "distill")
    with pytest.raises(UserError, match="names base 'nowhere', which is neither a file beside it nor a shipped"):
        load_recipe(_recipe(tmp_path, "c", "base: nowhere\n"), "distill")


def test_print_config_shows_the_resolved_recipe_and_exits():
    """--print-config prints the settings as a recipe (no --out needed); run as a recipe, it builds the same."""
    result = CliRunner().invoke(distill_command, ["--config", "dearkd_small_1000", "--print-config", "--seed", "3"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    recorded = json.loads(RESOLVED.read_text())["dearkd_small_1000"]["distill"]
    _recorded_values_hold({**recorded, "seed": 3}, printed["distill"], "printed")
    as_run = build(DistillConfig, apply_overrides(load_recipe("dearkd_small_1000", "distill"), {"seed": 3}))
    assert build(DistillConfig, printed["distill"]) == as_run


if __name__ == "__main__":
    RESOLVED.write_text(json.dumps(resolved_recipes(), indent=1, sort_keys=True) + "\n")
