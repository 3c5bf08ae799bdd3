"""Recipes and targets: bundled ones load; bad input fails with a message that names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgedistill.config import Recipe
from edgedistill.recipes import find_recipe, load_recipe
from edgedistill.hardware import known_targets, load_target
from edgedistill.schema import apply_overrides, bundled
from edgedistill.errors import ConfigError

from conftest import write_recipe


@pytest.mark.parametrize("name", sorted(p.stem for p in bundled("profiles").glob("*.yaml")))
def test_bundled_profiles_validate_and_their_data_exists(name):
    path = find_recipe(name)
    recipe = load_recipe(path)
    assert Path(recipe.data.prompts).is_absolute() and Path(recipe.data.prompts).exists()
    first = path.read_text().splitlines()[0]
    assert first.startswith("# edgedistill run"), "a profile opens with the command that runs it"


def test_default_recipe_is_demo():
    assert find_recipe(None).name == "demo.yaml"


@pytest.mark.parametrize("name", ["cpu-x86", "raspberry-pi-5", "android-arm64", "jetson-orin-nano"])
def test_bundled_targets_load_by_name(name):
    target = load_target(name)
    assert target.name == name
    assert target.runs and all(r.precisions for r in target.runs)
    assert set(known_targets()) >= {name}


def test_target_loads_by_path_and_knows_what_it_runs(tmp_path):
    src = bundled("targets") / "raspberry-pi-5.yaml"
    copy = tmp_path / "my-pi.yaml"
    copy.write_text(src.read_text())
    target = load_target(str(copy))
    assert target.runtime_for("gguf", "q4_k_m").runtime == "llama.cpp"
    assert target.runtime_for("gguf", "f16") is None


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError) as e:
        load_target("pi-zero")
    assert "pi-zero" in str(e.value) and "raspberry-pi-5" in str(e.value)


def test_target_with_unknown_runtime(tmp_path):
    data = yaml.safe_load((bundled("targets") / "cpu-x86.yaml").read_text())
    data["runs"][0]["runtime"] = "tensorrt-llm"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_target(str(path))
    msg = str(e.value)
    assert "tensorrt-llm" in msg and "llama.cpp" in msg and "runs.0.runtime" in msg


def test_paths_resolve_relative_to_the_recipe_file(tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "somewhere")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe.data.prompts == str((tmp_path / "somewhere" / "prompts.jsonl").resolve())


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = write_recipe(tmp_path, text="task: qa\ndata:\n  prompts: [a, b\nteacher: {}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert "line 4" in str(e.value) and "column" in str(e.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write_recipe(tmp_path, train={"lr": 0.1})
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "'train.lr'" in msg and "learning_rate" in msg and "max_steps" in msg


def test_set_overrides_are_typed(recipe_file):
    recipe = load_recipe(recipe_file, ["train.max_steps=50", "gates.min_retention=0.95",
                                       "export.formats=[gguf]", "teacher.base_url=null"])
    assert recipe.train.max_steps == 50 and recipe.gates.min_retention == 0.95
    assert recipe.export.formats == ["gguf"] and recipe.teacher.base_url is None


def test_set_wrong_type_names_key_and_value(recipe_file):
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe_file, ["train.max_steps=lots"])
    msg = str(e.value)
    assert "train.max_steps" in msg and "'lots'" in msg and "--set" in msg


@pytest.mark.parametrize("item,expected", [
    ("train.nope=1", "valid keys under train"),
    ("nope=1", "valid keys under the top level"),
    ("train.lora.rank=8", "valid keys under train.lora: r, alpha"),
    ("train.max_steps.x=1", "not a section"),
    ("train.max_steps", "KEY=VALUE"),
])
def test_set_unknown_keys(item, expected):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Recipe, {}, [item])
    assert expected in str(e.value)


def test_set_adds_a_named_data_set(tmp_path):
    """data.train_sets and data.eval_sets take names the user chooses: --set may add one (and
    change one the recipe has), a wrong value type still fails naming the key."""
    recipe_file = write_recipe(tmp_path, data={"prompts": "prompts.jsonl", "eval_fraction": 0.2,
                                               "eval_sets": {"hard": "hard.jsonl"}})
    recipe = load_recipe(recipe_file, ["data.train_sets.more=/abs/extra.jsonl",
                                       "data.eval_sets.hard=/abs/other.jsonl"])
    assert recipe.data.train_sets == {"more": "/abs/extra.jsonl"}
    assert recipe.data.eval_sets == {"hard": "/abs/other.jsonl"}
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe_file, ["data.train_sets.more=[1, 2]"])
    assert "data.train_sets.more" in str(e.value)
    with pytest.raises(ConfigError) as e:  # below a named set there is nothing to set
        load_recipe(recipe_file, ["data.train_sets.more.path=x.jsonl"])
    assert "not a section" in str(e.value)


def test_set_paths_are_read_from_the_current_folder(tmp_path, monkeypatch):
    """A recipe's relative paths are read from its folder; one given with --set from where the
    command runs (made absolute, so the run's saved config reads the same file from anywhere)."""
    recipe_file = write_recipe(tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(recipe_file, ["data.train_sets.more=extra.jsonl", "data.prompts=mine.jsonl",
                                       "train.max_steps=5"])
    assert recipe.data.train_sets == {"more": str(tmp_path / "extra.jsonl")}
    assert recipe.data.prompts == str(tmp_path / "mine.jsonl")
    assert recipe.train.max_steps == 5
    assert load_recipe(recipe_file).data.prompts == str(tmp_path / "recipes" / "prompts.jsonl")


def test_missing_required_section(tmp_path):
    path = write_recipe(tmp_path, text="task: qa\ndata: {prompts: p.jsonl}\nteacher: {model: t}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert "missing key 'student'" in str(e.value)


def test_section_hash_depends_only_on_named_sections(recipe_file):
    a = load_recipe(recipe_file)
    b = load_recipe(recipe_file, ["gates.min_retention=0.5"])
    assert a.section_hash("train") == b.section_hash("train")
    assert a.section_hash("gates") != b.section_hash("gates")


def test_trainable_layers_are_refused_for_lora(tmp_path):
    path = write_recipe(tmp_path, train={"method": "lora", "trainable_layers": 4})
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert "trainable_layers" in str(e.value) and "full" in str(e.value)
    assert "got dict" not in str(e.value)  # the section as a whole is not echoed back
    assert load_recipe(write_recipe(tmp_path / "full", train={"method": "full", "trainable_layers": 4})
                       ).train.trainable_layers == 4
