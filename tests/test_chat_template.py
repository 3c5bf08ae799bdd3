"""student.chat_template for base models: refused up front without one, and the chosen template
trained on, recorded, and carried into the merged tokenizer, the GGUF and the ORT GenAI package
(parity compares each artifact's own chat ids with the merged model's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from trainkit import records, write_data
from edgedistill.artifacts import list_artifacts
from edgedistill.cli import cli
from edgedistill.recipes import load_recipe
from edgedistill.rundir import Run
from edgedistill.train.templates import TEMPLATE_RECORD, TEMPLATES, own_template

TRAIN = {"max_steps": 2, "batch_size": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


@pytest.fixture
def base_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model as a base model: its tokenizer without a chat template."""
    student = tmp_path / "base"
    shutil.copytree(tiny_model_dir, student)
    (student / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((student / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (student / "tokenizer_config.json").write_text(json.dumps(tc))
    assert own_template(student) is None
    return student


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_a_base_model_without_a_template_is_refused_before_any_work(tmp_path, base_model):
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(base_model)})
    result = invoke("run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert "has no chat template" in result.stderr
    assert "model (its own) | chatml | gemma | llama3 | FILE" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_a_template_whose_markers_are_not_tokens_is_refused(tmp_path, base_model):
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(base_model), "chat_template": "gemma"})
    result = invoke("run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert "no <start_of_turn>, <end_of_turn> token" in result.stderr
    assert "Templates whose markers it has: chatml" in result.stderr


def test_an_unknown_choice_names_the_choices(tmp_path, base_model):
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(base_model), "chat_template": "vicuna"})
    result = invoke("run", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "none of model, chatml, gemma, llama3" in result.stderr


def test_the_chosen_template_reaches_every_artifact(tmp_path, base_model, monkeypatch):
    from edgedistill.teacher import generate

    template = tmp_path / "mine.jinja"  # a FILE choice; its text is ChatML's
    template.write_text(TEMPLATES["chatml"])
    recipe = write_recipe(
        tmp_path / "recipe", student={"model": str(base_model), "chat_template": str(template)},
        train=TRAIN, export={"parity_prompts": 2, "parity_max_new_tokens": 8,
                             "quantize": {"onnx": [], "gguf": [], "ortgenai": []}})
    run = Run.create(tmp_path / "run", load_recipe(recipe))
    write_data(run, records(12), records(4, seed=1, prefix="e"))
    monkeypatch.setattr(generate, "generate", lambda run, force=False: None)

    result = invoke("run", str(recipe), "--run-dir", str(run.root), "--until", "export")

    assert result.exit_code == 0, result.output
    text = TEMPLATES["chatml"]
    assert own_template(run.merged_dir) == text
    assert json.loads((run.student_base / TEMPLATE_RECORD).read_text())["chat_template"] == str(template)
    assert own_template(base_model) is None  # the recipe's own directory is left as it was
    from gguf import GGUFReader

    field = GGUFReader(str(run.gguf_dir / "model-f16.gguf")).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == text
    assert own_template(run.ortgenai_dir / "fp32") == text
    arts = list_artifacts(run)
    assert {a["id"] for a in arts} == {"onnx-fp32", "ortgenai-fp32", "gguf-f16"}
    for art in arts:  # parity compared each runtime's own chat ids with the merged model's
        assert art["chat_template"]["choice"] == str(template)
        assert art["parity"]["chat_prompt_ids_match"] is True, art["id"]
