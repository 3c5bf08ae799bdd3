"""The tiny in-process student through every format and quantization, with real llama.cpp,
optimum, onnxruntime and ONNX Runtime GenAI."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.recipes import load_recipe
from edgedistill.errors import ArtifactError
from edgedistill.artifacts import list_artifacts
from edgedistill.formats.export import export
from edgedistill.formats.quantize import quantize
from edgedistill.rundir import Run

EXPORT = {"parity_prompts": 2, "parity_max_new_tokens": 12,
          "quantize": {"onnx": ["int8", "int4"], "gguf": ["q8_0", "q4_k_m"], "ortgenai": ["int4"]}}
ALL_IDS = {"onnx-fp32", "onnx-int8", "onnx-int4", "ortgenai-fp32", "ortgenai-int4",
           "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"}
MESSAGES = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are helpful."},
     {"role": "user", "content": "The capital of France is which city?"},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Italy, 7 times 3?"}],
]


def make_run(root: Path, model_dir: Path, **export_cfg) -> Run:
    recipe = load_recipe(write_recipe(root / "recipe", export={**EXPORT, **export_cfg}))
    run = Run.create(root / "run", recipe)
    stage = run.begin("merge")
    with stage:
        shutil.copytree(model_dir, stage.output(run.merged_dir))
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Run:
    run = make_run(tmp_path_factory.mktemp("formats"), tiny_model_dir)
    export(run)
    quantize(run)
    return run


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_every_format_and_quantization_is_an_artifact_with_parity(tiny_run):
    arts = {a["id"]: a for a in list_artifacts(tiny_run)}
    assert set(arts) == ALL_IDS
    for a in arts.values():
        assert a["path"].is_absolute() and a["path"].exists()
        assert a["parity"]["prompts"] == 2
        assert a["parity"]["chat_prompt_ids_match"] is True
        assert a["parity"]["eos_is_stop_token"] is True
        assert 0.0 <= a["parity"]["greedy_token_agreement"] <= 1.0
        if a["format"] != "ortgenai":
            assert a["sha256"] == sha256(a["path"])
            assert a["bytes"] >= a["path"].stat().st_size
    for fp in ("onnx-fp32", "ortgenai-fp32", "gguf-f16"):
        p = arts[fp]["parity"]
        assert p["greedy_token_agreement"] == 1.0 and p["first_divergence"] is None
        assert p["max_abs_logit_diff"] is not None and p["max_abs_logit_diff"] < 0.05
    # every artifact lives where DESIGN.md says
    export_dir = tiny_run.export_dir
    assert arts["gguf-q4_k_m"]["path"] == export_dir / "gguf" / "model-q4_k_m.gguf"
    assert arts["onnx-fp32"]["path"] == export_dir / "onnx" / "model.onnx"
    assert (arts["ortgenai-int4"]["path"] / "genai_config.json").exists()
    # quantization makes files smaller than their fp source (MatMul weights dominate even here)
    assert arts["gguf-q8_0"]["bytes"] < arts["gguf-f16"]["bytes"]
    assert arts["onnx-int8"]["bytes"] < arts["onnx-fp32"]["bytes"]


def test_manifest_records_source_and_tool_versions(tiny_run):
    stages = tiny_run.read_manifest()["stages"]
    gguf = stages["export:gguf"]
    assert gguf["metrics"]["artifact"]["llama_cpp_version"].startswith("llama-cpp-python ")
    assert gguf["versions"]["llama-cpp-python"] and gguf["versions"]["onnxruntime"]
    assert "student/merged" in gguf["inputs"]
    assert stages["quantize:gguf-q8_0"]["metrics"]["artifact"]["quantized_from"] == \
        "export/gguf/model-f16.gguf"
    # llama.cpp's quantizer prints a line per tensor: into the run's log, not the terminal
    assert "blk.0.attn_q.weight" in (tiny_run.logs_dir / "gguf-quantize-q4_k_m.log").read_text()


def test_chat_prompt_ids_match_across_hf_llama_cpp_and_ort_genai(tiny_run):
    arts = {a["id"]: a for a in list_artifacts(tiny_run)}
    loaded = [runtimes.load("hf", tiny_run.merged_dir),
              runtimes.load("gguf", arts["gguf-f16"]["path"]),
              runtimes.load("ortgenai", arts["ortgenai-fp32"]["path"]),
              runtimes.load("onnx", arts["onnx-fp32"]["path"])]
    try:
        for msgs in MESSAGES:
            ids = [rt.chat_prompt_ids(msgs) for rt in loaded]
            assert all(i == ids[0] for i in ids), dict(zip([r.kind for r in loaded], ids))
        # the same greedy tokens from every fp runtime, fed the same ids
        prompt = loaded[0].chat_prompt_ids(MESSAGES[1])
        streams = [list(rt.stream_ids(prompt, 8, ignore_eos=True)) for rt in loaded]
        assert all(len(s) == 8 and s == streams[0] for s in streams)
    finally:
        for rt in loaded:
            rt.close()


def test_onnx_export_runs_in_optimum_too(tiny_run):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(tiny_run.onnx_dir, file_name="model.onnx")
    with runtimes.load("hf", tiny_run.merged_dir) as hf:
        prompt = hf.chat_prompt_ids(MESSAGES[0])
        want = list(hf.stream_ids(prompt, 6, ignore_eos=True))
    out = model.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6,
                         do_sample=False)
    assert out[0, len(prompt):].tolist() == want


def test_up_to_date_artifacts_are_skipped(tiny_run):
    before = tiny_run.read_manifest()["stages"]
    export(tiny_run)
    quantize(tiny_run)
    after = tiny_run.read_manifest()["stages"]
    assert {k: v.get("finished_at") for k, v in before.items()} == \
        {k: v.get("finished_at") for k, v in after.items()}


def test_adding_a_quantization_redoes_nothing_else(tiny_run, tmp_path):
    run = Run(tmp_path / "copy")
    shutil.copytree(tiny_run.root, run.root)
    before = run.read_manifest()["stages"]
    run = Run.open(run.root, overrides=["export.quantize.gguf=[q8_0, q4_k_m, q4_0]"])
    export(run)
    quantize(run)
    after = run.read_manifest()["stages"]
    assert set(after) - set(before) == {"quantize:gguf-q4_0"}
    assert all(after[k]["finished_at"] == v["finished_at"] for k, v in before.items())
    assert "gguf-q4_0" in {a["id"] for a in list_artifacts(run)}


def test_truncated_gguf_fails_its_check(tiny_run, tmp_path):
    src = tiny_run.gguf_dir / "model-f16.gguf"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    with pytest.raises(ArtifactError, match="cannot load"):
        runtimes.load("gguf", bad)


def test_truncated_onnx_fails_its_check(tiny_run, tmp_path):
    from edgedistill.formats import onnx

    for p in tiny_run.onnx_dir.iterdir():
        if p.is_file():
            shutil.copy(p, tmp_path / p.name)
    bad = tmp_path / "model.onnx"
    bad.write_bytes((tiny_run.onnx_dir / "model.onnx").read_bytes()[:100_000])
    with pytest.raises(ArtifactError):
        onnx.check(bad)
    with pytest.raises(ArtifactError, match="cannot load"):
        runtimes.load("onnx", bad)


def test_a_damaged_artifact_in_the_run_is_not_listed(tiny_run, tmp_path):
    run = Run(tmp_path / "copy")
    shutil.copytree(tiny_run.root, run.root)
    q = run.gguf_dir / "model-q8_0.gguf"
    q.write_bytes(q.read_bytes()[:1000])
    ids = {a["id"] for a in list_artifacts(run)}
    assert "gguf-q8_0" not in ids and "gguf-f16" in ids


def test_killed_export_leaves_no_artifact(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir)
    code = ("import logging, sys; from edgedistill.rundir import Run; "
            "from edgedistill.formats.export import export; export(Run(sys.argv[1]), formats=['gguf'])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.root)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it while the converter writes the GGUF
        if list(run.gguf_dir.glob(".*.partial")) if run.gguf_dir.exists() else []:
            break
        assert proc.poll() is None, "the export finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list_artifacts(run) == []
    assert not (run.gguf_dir / "model-f16.gguf").exists()
    assert run.stage_entry("export:gguf")["status"] == "running"
    export(run, formats=["gguf"])  # the next attempt redoes it
    assert [a["id"] for a in list_artifacts(run)] == ["gguf-f16"]


def test_unsupported_architecture_names_format_and_others_still_run(tmp_path):
    """A GPT-2 student: optimum exports it, ONNX Runtime GenAI's builder cannot take it."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tiny import TINY_TOKENIZER

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2,
                                       n_positions=256, eos_token_id=tok.eos_token_id,
                                       bos_token_id=tok.bos_token_id))
    src = tmp_path / "gpt2"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    run = make_run(tmp_path, src)
    with pytest.raises(ArtifactError) as e:
        export(run, formats=["ortgenai", "onnx"])
    assert "ORT GenAI" in str(e.value) and "GPT2LMHeadModel" in str(e.value)
    assert "LlamaForCausalLM" in str(e.value)  # the supported architectures are listed
    assert [a["id"] for a in list_artifacts(run)] == ["onnx-fp32"]
