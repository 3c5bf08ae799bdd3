"""The local teachers: the gguf backend (llama-cpp-python in-process) on the real SmolLM2-135M
GGUF, ``teacher.serve`` (llama.cpp's server started for the run), and the hf backend on the tiny
in-process Llama."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.cli import cli
from edgedistill.data import read_jsonl

PROMPTS = [{"id": f"p{i}", "prompt": q + " Reply with the answer only."}
           for i, q in enumerate(["What is 2 + 3?", "What is the capital of Italy?", "What is 4 + 4?"])]


def generate(recipe: Path, run_dir: Path):
    return CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(run_dir)])


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["metrics"]


def test_gguf_backend(smollm2_gguf, tmp_path):
    recipe = write_recipe(tmp_path / "r", prompts=PROMPTS, data={"eval_fraction": 0.34}, teacher={
        "backend": "gguf", "model": str(smollm2_gguf), "base_url": None, "max_tokens": 12,
        "temperature": 0.0, "n_ctx": 512, "min_success_ratio": 0.0, "logprobs": 2})
    result = generate(recipe, tmp_path / "run")
    assert result.exit_code == 0, result.output
    log = read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl")
    assert len(log) == 3 and {r["endpoint"] for r in log} == {f"llama.cpp:{smollm2_gguf.name}"}
    assert all(r["finish_reason"] in ("stop", "length") and r["usage"]["completion_tokens"] > 0 for r in log)
    assert all(len(r["logprobs"]) == r["usage"]["completion_tokens"] for r in log)
    assert all(len(s["top_logprobs"]) == 2 for r in log for s in r["logprobs"])
    assert any("5" in (r["response"] or "") for r in log if r["id"] == "p0"), log
    m = metrics(tmp_path / "run")
    assert m["train_prompts"] == 2 and m["eval"] == 1 and m["asked"] == 3


def test_serve_a_packaged_gguf(tmp_path):
    recipe = write_recipe(tmp_path / "r", prompts=PROMPTS[:2], data={"eval_fraction": 0.0}, teacher={
        "backend": "openai", "serve": True, "model": "pypi:smollm2-135m-instruct", "base_url": None,
        "max_tokens": 8, "temperature": 0.0, "concurrency": 2, "min_success_ratio": 0.0, "n_ctx": 512})
    run_dir = tmp_path / "run"
    result = generate(recipe, run_dir)
    assert result.exit_code == 0, result.output
    log = read_jsonl(run_dir / "data" / "teacher.jsonl")
    assert len(log) == 2 and all(r["endpoint"].startswith("http://127.0.0.1:") for r in log)
    assert (run_dir / "logs" / "teacher-server.log").exists()


def test_hf_backend_batched(tiny_model_dir, tmp_path):
    prompts = [{"id": f"h{i}", "prompt": "word " * (i + 1) + f"number {i}"} for i in range(5)]
    recipe = write_recipe(tmp_path / "r", prompts=prompts, data={"eval_fraction": 0.2}, teacher={
        "backend": "hf", "model": str(tiny_model_dir), "base_url": None, "max_tokens": 6,
        "temperature": 0.0, "batch_size": 2, "min_success_ratio": 0.0, "logprobs": 3,
        "accept_finish_reasons": ["stop", "length"]})
    run_dir = tmp_path / "run"
    result = generate(recipe, run_dir)
    assert result.exit_code == 0, result.output
    log = read_jsonl(run_dir / "data" / "teacher.jsonl")
    assert len(log) == 5 and {r["id"] for r in log} == {p["id"] for p in prompts}
    for r in log:
        assert r["endpoint"] == f"transformers:{tiny_model_dir}"
        n = len(r["logprobs"])
        assert 1 <= n <= 6 and all(len(s["top_logprobs"]) == 3 for s in r["logprobs"])
        # greedy: the chosen token is the top one, with the same id and logprob
        assert all(s["token_id"] == s["top_logprobs"][0]["token_id"] for s in r["logprobs"])
        assert all(abs(s["logprob"] - s["top_logprobs"][0]["logprob"]) < 1e-3 for s in r["logprobs"])
        assert r["usage"]["prompt_tokens"] > 0
    # greedy, batched with left padding: the same answers as one prompt at a time
    recipe_one = write_recipe(tmp_path / "r1", prompts=prompts, data={"eval_fraction": 0.2}, teacher={
        "backend": "hf", "model": str(tiny_model_dir), "base_url": None, "max_tokens": 6,
        "temperature": 0.0, "batch_size": 1, "min_success_ratio": 0.0,
        "accept_finish_reasons": ["stop", "length"]})
    assert generate(recipe_one, tmp_path / "run1").exit_code == 0
    one = {r["id"]: r["response"] for r in read_jsonl(tmp_path / "run1" / "data" / "teacher.jsonl")}
    assert one == {r["id"]: r["response"] for r in log}
