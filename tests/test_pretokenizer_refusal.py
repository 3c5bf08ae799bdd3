"""A byte-level BPE student whose pre-tokenizer llama.cpp's converter does not know is refused
before any work when gguf is among the formats (the converter would raise "BPE pre-tokenizer was
not recognized" at the GGUF export, after generate and train). The verdict is the converter's own
get_vocab_base_pre, asked of the tiny student of tests/families.py (SmolLM2's pre-tokenizer,
which it knows) and of the same student with ``add_prefix_space`` turned on (which it does not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from families import build_family_model
from edgedistill.cli import cli
from edgedistill.formats import support
from edgedistill.recipes import load_recipe

STAGES = {"generate", "train", "export"}


@pytest.fixture(scope="module")
def bpe_student(tmp_path_factory) -> Path:
    """The tiny Llama with the byte-level BPE tokenizer, and llama.cpp's converter at hand."""
    from edgedistill.formats import gguf

    gguf.converter()  # fetched once into the cache, where the preflight looks for it
    return build_family_model("Llama", tmp_path_factory.mktemp("llama") / "model")


def _unknown_pretokenizer(model: Path, out: Path) -> Path:
    """The same student, its ByteLevel pre-tokenizer adding a prefix space: the ids of the
    converter's check text change, so its hash is not one the converter knows."""
    shutil.copytree(model, out)
    tj = json.loads((out / "tokenizer.json").read_text())
    for pre in tj["pre_tokenizer"]["pretokenizers"]:
        if pre["type"] == "ByteLevel":
            pre["add_prefix_space"] = True
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    return out


def test_the_tiny_byte_level_student_passes(bpe_student, tmp_path):
    assert support._byte_level_bpe(bpe_student)
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(bpe_student)},
                          export={"formats": ["onnx", "gguf"]})
    support.check_student(load_recipe(recipe), STAGES)


def test_an_unknown_pretokenizer_is_refused_before_any_work(bpe_student, tmp_path, monkeypatch):
    from edgedistill.teacher import generate

    def started(run, force=False):
        raise AssertionError("generate started")

    monkeypatch.setattr(generate, "generate", started)
    model = _unknown_pretokenizer(bpe_student, tmp_path / "model")
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(model)},
                          export={"formats": ["onnx", "gguf"]})
    result = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")][0]
    assert "(Llama)" in error and "gguf:" in error and "pre-tokenizer" in error
    assert "Nothing was started" in result.stderr and "export.formats=[onnx]" in result.stderr
    assert not (tmp_path / "run").exists()
    # without gguf among the formats nothing asks the converter, and nothing is refused
    support.check_student(load_recipe(recipe, ["export.formats=[onnx]"]), STAGES)


def test_a_gguf_student_is_left_to_its_import(tmp_path):
    """A GGUF student's tokenizer is the one llama.cpp's converter made; it is not read here."""
    gguf_file = tmp_path / "student.gguf"
    gguf_file.write_bytes(b"GGUF")
    recipe = load_recipe(write_recipe(tmp_path / "recipe", student={"model": str(gguf_file)},
                                      export={"formats": ["gguf"]}))
    assert support.student_dir(recipe.student.model) is None
    support.check_student(recipe, {"export"})
