"""docs/recipes.md is generated from the config models and cannot drift; every recipe and target key
is documented there; every numeric key has bounds the config enforces, and a value outside them
fails from the command line naming the key (exit 2) before any stage starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgedistill.cli import cli
from edgedistill.config import Recipe
from edgedistill.errors import ConfigError
from edgedistill.hardware import Target, load_target
from edgedistill.schema import bundled

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the generator imports its neighbour scripts/generated.py
import gen_recipe_reference as gen  # noqa: E402

RECIPE_KEYS = gen.keys(Recipe)
TARGET_KEYS = gen.keys(Target)


def test_recipes_md_matches_the_models():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_recipe_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_key_is_documented():
    text = (ROOT / "docs" / "recipes.md").read_text()
    missing = [k.path for k in RECIPE_KEYS + TARGET_KEYS if f"| `{k.path}` |" not in text]
    assert not missing, f"not in docs/recipes.md: {missing}"
    undocumented = [k.path for k in RECIPE_KEYS + TARGET_KEYS if k.doc == gen.UNDOCUMENTED]
    assert not undocumented, ("give these a comment beside the field (or a Field description), then run "
                              f"python scripts/gen_recipe_reference.py: {undocumented}")


def test_every_numeric_key_has_bounds():
    unbounded = [k.path for k in RECIPE_KEYS + TARGET_KEYS if k.numeric and not k.bounds]
    assert not unbounded, f"numeric keys without ge/gt/le/lt: {unbounded}"


def _outside(key: gen.Key):
    """A value just outside the key's first bound (a list of one, for a list of numbers)."""
    sign, _, limit = key.bounds[0].partition(" ")
    limit = float(limit)
    step = 1 if "int" in key.type.split(" ")[0] or key.type.startswith("list[int") else 0.5
    value = {">=": limit - step, ">": limit, "<=": limit + step, "<": limit}[sign]
    value = int(value) if value == int(value) and step == 1 else value
    return [value] if key.type.startswith("list[") else value


@pytest.mark.parametrize("key", [k for k in RECIPE_KEYS if k.numeric], ids=lambda k: k.path)
def test_a_recipe_value_out_of_bounds_exits_2_naming_the_key(key, recipe_file, tmp_path):
    value = _outside(key)
    result = CliRunner().invoke(cli, ["generate", str(recipe_file), "--run-dir", str(tmp_path / "run"),
                                      "--set", f"{key.path}={value}"])
    assert result.exit_code == 2, result.output
    assert "does not validate" in result.output and re.search(rf"\b{re.escape(key.path)}(\.0)?: ", result.output), \
        result.output
    assert not (tmp_path / "run" / "data").exists()  # nothing asked of the teacher


@pytest.mark.parametrize("epochs", ["-1", "0", "lots"])
def test_epochs_must_be_positive_or_auto(epochs, recipe_file, tmp_path):
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--run-dir", str(tmp_path / "run"),
                                      "--set", f"train.epochs={epochs}"])
    assert result.exit_code == 2, result.output
    assert "train.epochs: Input should be" in result.output and "or 'auto'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key", [k for k in TARGET_KEYS if k.numeric], ids=lambda k: k.path)
def test_a_target_value_out_of_bounds_fails_naming_the_key(key, tmp_path):
    data = yaml.safe_load((bundled("targets") / "cpu-x86.yaml").read_text())
    node, parts = data, key.path.replace("[]", ".0").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = _outside(key)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_target(str(path))
    assert re.search(rf"\b{re.escape(key.path.replace('[]', '.0'))}(\.0)?: ", str(e.value)), str(e.value)
