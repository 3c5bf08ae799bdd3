"""The real SmolLM2-135M-Instruct student (imported from its GGUF) through every format and
quantization: `pytest -m slow tests/test_formats_slow.py` (several minutes on 2 cores)."""

from __future__ import annotations

import shutil

import pytest

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.recipes import load_recipe
from edgedistill.data import write_jsonl
from edgedistill.artifacts import list_artifacts
from edgedistill.formats.export import export
from edgedistill.formats.quantize import quantize
from edgedistill.rundir import Run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PROMPTS = [
    {"id": "p1", "prompt": "What is the capital of France?", "answer": "Paris"},
    {"id": "p2", "prompt": "What is 3 + 4?", "answer": "7"},
    {"id": "p3", "prompt": "Say hello in one word.", "answer": "Hello"},
]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory, smollm2_gguf) -> Run:
    from edgedistill.train.student import import_gguf

    root = tmp_path_factory.mktemp("smol")
    recipe = load_recipe(write_recipe(
        root / "recipe", prompts=PROMPTS,
        export={"parity_prompts": 3, "parity_max_new_tokens": 48,
                "quantize": {"onnx": ["int8", "int4"], "ortgenai": ["int4"],
                             "gguf": ["q8_0", "q4_k_m", "q4_0"]}}))
    run = Run.create(root / "run", recipe)
    write_jsonl(run.eval_data, PROMPTS)  # the parity prompts (as the generate stage would split)
    imported = import_gguf(smollm2_gguf, root / "imported")
    stage = run.begin("merge")
    with stage:
        shutil.copytree(imported, stage.output(run.merged_dir))
    export(run)
    quantize(run)
    return run


def test_smollm2_every_format_and_quantization(smol_run):
    arts = {a["id"]: a for a in list_artifacts(smol_run)}
    assert set(arts) == {"onnx-fp32", "onnx-int8", "onnx-int4", "ortgenai-fp32",
                         "ortgenai-int4", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0"}
    for a in arts.values():
        p = a["parity"]
        assert p["chat_prompt_ids_match"] and p["eos_is_stop_token"], a["id"]
    for fp in ("onnx-fp32", "ortgenai-fp32", "gguf-f16"):
        p = arts[fp]["parity"]
        assert p["greedy_token_agreement"] == 1.0 and p["lost_eos"] == 0
        # the student answers short prompts and stops at <|im_end|> within the limit
        assert p["reference_stopped_at_eos"] >= 1 and p["stopped_at_eos"] == p["reference_stopped_at_eos"]
    assert arts["gguf-q4_k_m"]["bytes"] < arts["gguf-q8_0"]["bytes"] < arts["gguf-f16"]["bytes"]
    assert arts["onnx-int4"]["bytes"] < arts["onnx-int8"]["bytes"] < arts["onnx-fp32"]["bytes"]


def test_smollm2_chat_prompt_ids_match_across_runtimes(smol_run):
    arts = {a["id"]: a for a in list_artifacts(smol_run)}
    msgs = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "List 3 colours, then count: 1, 2, 3 — done?"}]
    ids = {}
    for kind, path in (("hf", smol_run.merged_dir), ("gguf", arts["gguf-q4_k_m"]["path"]),
                       ("ortgenai", arts["ortgenai-int4"]["path"]),
                       ("onnx", arts["onnx-int8"]["path"])):
        with runtimes.load(kind, path) as rt:
            ids[kind] = rt.chat_prompt_ids(msgs)
    assert all(v == ids["hf"] for v in ids.values()), ids
