"""The real demo student through calibrated quantization, both ways: GGUF with an importance
matrix from the train split, ONNX and ORT GenAI int4 with GPTQ, each against its uncalibrated
twin by KL divergence at the eval answers.

    EDGEDISTILL_DEMO_RUN=runs/demo pytest -m slow -s tests/test_quant_slow.py

With EDGEDISTILL_DEMO_RUN (a demo run after merge: its merged student, train and eval split) the
distilled student is measured, in a copy (the run itself is not touched); without it, the
SmolLM2-135M base student on the demo prompts, whose gold answers stand in for the teacher's.
Prints each artifact's measurements and stage time (several minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import write_recipe
from edgedistill.artifacts import list_artifacts
from edgedistill.recipes import load_recipe
from edgedistill.data import load_prompts, write_jsonl
from edgedistill.formats.export import export
from edgedistill.formats.quantize import KQUANTS, quantize
from edgedistill.rundir import Run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# llama.cpp's own q4_k_m mix (a demo run's recipe names another): k-quant rows beside the 32-wide
# ones it falls back to, the case the GGUF's third candidate is for
QUANTIZE = {"onnx": ["int4"], "ortgenai": ["int4"], "gguf": ["q4_k_m"], "calibration": "task",
            "algo": "gptq", "gguf_tensor_types": {}}
SYSTEM = "Reply with the answer only."


def _from_demo_run(src: Run, root: Path) -> Run:
    recipe = src.recipe.model_copy(deep=True)
    recipe.export.quantize = recipe.export.quantize.model_copy(update=QUANTIZE)
    recipe.export.formats = ["onnx", "ortgenai", "gguf"]  # the demo exports no plain ONNX
    run = Run.create(root / "run", recipe)
    run.data_dir.mkdir(parents=True, exist_ok=True)
    for p in (src.train_data, src.eval_data):
        shutil.copy2(p, run.data_dir / p.name)
    with run.begin("merge") as stage:
        shutil.copytree(src.merged_dir, stage.output(run.merged_dir))
    return run


def _from_base_student(gguf: Path, root: Path) -> Run:
    from edgedistill.schema import bundled
    from edgedistill.teacher.dedup import split_ids
    from edgedistill.train.student import import_gguf

    prompts = load_prompts(bundled("profiles") / "data" / "demo.jsonl")
    recipe = load_recipe(write_recipe(root / "recipe", prompts=prompts[:2],
                                      export={"quantize": QUANTIZE}))
    run = Run.create(root / "run", recipe)
    eval_ids = split_ids([p["id"] for p in prompts], 0.2, 0)

    def rec(p: dict) -> dict:
        return {"id": p["id"], "answer": p["answer"], "response": p["answer"],
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p["prompt"]}]}

    write_jsonl(run.train_data, [rec(p) for p in prompts if p["id"] not in eval_ids])
    write_jsonl(run.eval_data, [rec(p) for p in prompts if p["id"] in eval_ids])
    imported = import_gguf(gguf, root / "imported")
    with run.begin("merge") as stage:
        shutil.copytree(imported, stage.output(run.merged_dir))
    return run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, request) -> Run:
    root = tmp_path_factory.mktemp("quant-demo")
    src = os.environ.get("EDGEDISTILL_DEMO_RUN")
    if src:
        run = _from_demo_run(Run.open(Path(src)), root)
    else:
        run = _from_base_student(request.getfixturevalue("smollm2_gguf"), root)
    export(run)
    quantize(run)
    return run


def test_demo_imatrix_covers_every_matrix_weight_of_the_tied_model(demo_run):
    imx = demo_run.stage_entry("quantize:imatrix")["metrics"]["imatrix"]
    print("\nimatrix:", json.dumps({k: v for k, v in imx.items() if k != "unmapped_modules"}))
    assert imx["missing"] == [] and imx["entries"] == imx["matrix_weights"]
    # SmolLM2 ties its LM head to the embeddings: the GGUF has no output.weight, and the head's
    # input statistics belong to token_embd.weight
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(str(demo_run.export_dir / "calibration" / "imatrix.gguf")).tensors}
    tied = json.loads((demo_run.merged_dir / "config.json").read_text()).get("tie_word_embeddings")
    assert ("token_embd.weight.in_sum2" if tied else "output.weight.in_sum2") in names


def test_demo_both_formats_calibrated_and_measured(demo_run):
    arts = {a["id"]: a for a in list_artifacts(demo_run)}
    print()
    for art_id in ("gguf-q4_k_m", "onnx-int4", "ortgenai-int4"):
        entry = demo_run.stage_entry(f"quantize:{art_id}")
        cands = entry["metrics"]["quant_loss_candidates"]
        kept = arts[art_id]
        print(f"{art_id}: kept {kept['calibration_source']} ({kept.get('algo') or ''}) in "
              f"{entry['seconds']:.0f} s, {kept['bytes'] / 1e6:.1f} MB; " + "; ".join(
                  f"{label}: KLD {c['kld']:.4f} {c['kld_ci95']} top1 {c['top1_agreement']:.3f} "
                  f"whole KLD {c['kld_whole']:.4f} top1 {c['top1_agreement_whole']:.3f}"
                  for label, c in cands.items()))
        # SmolLM2's 576-wide rows make q4_k_m mostly Q5_0: its GGUF has a third candidate
        assert set(cands) == {"none", "task"} | ({"task" + KQUANTS} if art_id.startswith("gguf") else set())
        assert kept["quant_loss"]["kld"] == min(c["kld"] for c in cands.values())
        for c in cands.values():
            assert 0 <= c["kld"] < 1 and c["top1_agreement"] > 0.5 and c["examples"] >= 10
    cal = demo_run.stage_entry("quantize:calibration")["metrics"]["calibration"]
    print("calibration:", json.dumps(cal))
    assert cal["source"] == "task" and cal["leak_check"]["overlap"] == 0
