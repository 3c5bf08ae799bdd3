"""A format that fails does not take the others down: `edgedistill run` goes on with the formats
that exported through quantize, eval, bench and report, and ends with exit 2 naming the failed
ones. The failure is real: the student's tokenizer.model is not a SentencePiece model (the file
a GGUF import once wrote there), which transformers never reads (it loads tokenizer.json) but
llama.cpp's converter does, and refuses ("could not parse ModelProto")."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from conftest import write_recipe
from trainkit import records, write_data
from edgedistill.cli import cli
from edgedistill.recipes import load_recipe
from edgedistill.rundir import Run

SETTINGS = {"threads": 1, "thread_sweep": [], "context": 128, "prompt_tokens": 8,
            "generate_tokens": 4, "repetitions": 1, "warmup": 0}
RUNS = [{"runtime": "llama.cpp", "format": "gguf", "precisions": ["f16", "q8_0"]},
        {"runtime": "onnxruntime", "format": "onnx", "precisions": ["fp32", "int8"]}]


def test_a_failing_format_leaves_the_others_through_every_stage(tmp_path, tiny_model_dir, monkeypatch):
    from edgedistill.teacher import generate

    student = tmp_path / "student"
    shutil.copytree(tiny_model_dir, student)
    (student / "tokenizer.model").write_bytes(b"GGUF\x03\x00\x00\x00 not a SentencePiece model")
    target = tmp_path / "targets" / "tiny-host.yaml"
    target.parent.mkdir()
    target.write_text(yaml.safe_dump({"name": "tiny-host", "arch": platform.machine(), "cores": None,
                                      "runs": RUNS, "settings": SETTINGS}))
    recipe = write_recipe(
        tmp_path / "recipe", student={"model": str(student)}, targets=[str(target)],
        train={"max_steps": 2, "batch_size": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        export={"formats": ["onnx", "gguf"], "parity_prompts": 2, "parity_max_new_tokens": 8,
                "quantize": {"onnx": ["int8"], "gguf": ["q8_0"], "ortgenai": []}},
        gates={"min_retention": None})
    run = Run.create(tmp_path / "run", load_recipe(recipe))
    write_data(run, records(12), records(4, seed=1, prefix="e"))
    # the teacher's answers are the ones written above: generate is made a no-op
    monkeypatch.setattr(generate, "generate", lambda run, force=False: None)

    result = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(run.root)])

    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")][0]
    assert "export:gguf" in error and "1 artifact(s) failed" in error
    assert "could not parse ModelProto" in result.stderr  # why, from the converter's own log
    assert "onnx-fp32, onnx-int8" in error  # the ones that went on
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["exit_code"] == 2 and last["ok"] is False
    stages = last["stages"]
    assert stages["export:gguf"] == "failed" and "quantize:gguf-q8_0" not in stages
    for name in ("export:onnx", "quantize:onnx-int8", "eval", "bench:tiny-host", "report"):
        assert stages.get(name) == "done", (name, stages)
    report = json.loads(run.report_json.read_text())
    assert {a["id"] for a in report["artifacts"]} == {"onnx-fp32", "onnx-int8"}
    for art in report["artifacts"]:
        assert art["score"] is not None and art["bench"], art["id"]
    assert last["report"] == str(run.report_json)
