"""`edgedistill merge RUN`: fold the LoRA adapter into the base weights, and prove it.

The base is loaded in float32 (a GGUF student was dequantized at import: the adapter is never
merged into quantized weights), ``merge_and_unload`` folds the adapter in, the result is cast to
``student.dtype`` and saved as safetensors with the tokenizer, chat template and a generation
config whose eos is the end-of-turn token. Before the output is renamed into place, it is loaded
back from disk and compared with the adapter model on eval prompts: the largest |logit
difference| (teacher-forced over prompt + response) and greedy token agreement go into the
manifest, and the stage fails (ArtifactError) beyond tolerance. A run already merged from the
same adapter is left alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill.data import messages_of, read_jsonl
from edgedistill.errors import ArtifactError
from edgedistill.rundir import Run
from edgedistill.train.student import load_tokenizer, student_path

log = logging.getLogger(__name__)

# max |logit diff| allowed, relative to the largest |logit| of the adapter model (at least 1)
TOLERANCE = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
MIN_GREEDY_AGREEMENT = {"float32": 0.9, "float16": 0.75, "bfloat16": 0.5}
CHECK_PROMPTS = 4
CHECK_NEW_TOKENS = 16


def trained_dir(run: Run) -> Path:
    """What train wrote: the LoRA adapter, or the fully fine-tuned model (train.method: full)."""
    method = ((run.stage_entry("train") or {}).get("metrics") or {}).get("method", "lora")
    return run.finetuned_dir if method == "full" else run.adapter_dir


def merge(run: Run, *, force: bool = False) -> None:
    """Write RUN/student/merged/ from the base and RUN/student/adapter/ (skipped when merged); a
    fully fine-tuned student is taken as it is (saved in student.dtype, with the same checks)."""
    run.require("train", needed_by="merge")
    stage = run.begin("merge", inputs=[trained_dir(run)], force=force)
    if stage is None:
        log.info("%s is already merged from this adapter; nothing to do (--force to redo).",
                 run.merged_dir)
        return
    with stage:
        out = stage.output(run.merged_dir)
        stage.metrics.update(merge_adapter(run, out))
    m = stage.metrics
    log.info("merged model written to %s (max |logit diff| %.2e, greedy agreement %.3f)",
             run.merged_dir, m["max_abs_logit_diff"], m["greedy_token_agreement"])


def _fold(model):
    """The adapter folded into the base weights (a seam the tests perturb)."""
    return model.merge_and_unload()


def merge_adapter(run: Run, out: Path) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    dtype_name = run.recipe.student.dtype
    source = trained_dir(run)
    trained = source / "edgedistill_train.json"
    base = json.loads(trained.read_text())["base"] if trained.is_file() else student_path(run)
    if not Path(base).exists():  # a hub id, or an imported student removed since training
        base = student_path(run)
    tok = load_tokenizer(base, run.recipe.student.trust_remote_code)
    full = source == run.finetuned_dir
    model = AutoModelForCausalLM.from_pretrained(source if full else base, dtype=torch.float32,
                                                 trust_remote_code=run.recipe.student.trust_remote_code)
    if not full:
        model = PeftModel.from_pretrained(model, run.adapter_dir)
    model = model.eval()
    prompts = _check_prompts(run, tok)
    with torch.no_grad():
        ref_logits = [model(torch.tensor([ids])).logits[0] for ids, _ in prompts]
        ref_greedy = [_greedy(model, p, tok) for _, p in prompts]

    merged = (model if full else _fold(model)).to(getattr(torch, dtype_name))
    for key in ("eos_token_id", "pad_token_id"):
        setattr(merged.config, key, getattr(tok, key))
    merged.config.use_cache = True
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    gen = _generation_config(base, GenerationConfig)
    gen.eos_token_id, gen.pad_token_id = tok.eos_token_id, tok.pad_token_id
    if tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    gen.save_pretrained(out)
    del model, merged
    return verify(out, prompts, ref_logits, ref_greedy, tok, dtype_name)


def verify(merged_dir: Path, prompts, ref_logits, ref_greedy, tok, dtype_name: str) -> dict[str, Any]:
    """Compare the saved merged model with the adapter model's logits and greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=getattr(torch, dtype_name)).eval()
    with torch.no_grad():
        diffs = [float((merged(torch.tensor([ids])).logits[0].float() - ref).abs().max())
                 for (ids, _), ref in zip(prompts, ref_logits)]
        greedy = [_greedy(merged, p, tok) for _, p in prompts]
    scale = max(1.0, max(float(r.abs().max()) for r in ref_logits))
    agree = sum(a == b for ga, gb in zip(ref_greedy, greedy) for a, b in zip(ga, gb))
    total = sum(max(len(ga), len(gb)) for ga, gb in zip(ref_greedy, greedy))
    metrics = {
        "max_abs_logit_diff": max(diffs), "logit_scale": round(scale, 4),
        "tolerance": TOLERANCE[dtype_name] * scale,
        "greedy_token_agreement": round(agree / max(total, 1), 4),
        "check_prompts": len(prompts), "check_new_tokens": CHECK_NEW_TOKENS, "dtype": dtype_name,
    }
    ok_logits = metrics["max_abs_logit_diff"] <= metrics["tolerance"]
    ok_greedy = metrics["greedy_token_agreement"] >= MIN_GREEDY_AGREEMENT[dtype_name]
    log.info("merge check: max |logit diff| %.3g (tolerance %.3g) %s; greedy agreement %.3f %s",
             metrics["max_abs_logit_diff"], metrics["tolerance"], "✓" if ok_logits else "✗",
             metrics["greedy_token_agreement"], "✓" if ok_greedy else "✗")
    if not (ok_logits and ok_greedy):
        raise ArtifactError(
            f"The merged model does not reproduce the adapter model: max |logit diff| "
            f"{metrics['max_abs_logit_diff']:.3g} (tolerance {metrics['tolerance']:.3g}), greedy token "
            f"agreement {metrics['greedy_token_agreement']:.3f} (needs "
            f"{MIN_GREEDY_AGREEMENT[dtype_name]}), over {len(prompts)} eval prompts.",
            hint="Nothing was written to student/merged/. Check student.dtype, or retrain with "
                 "`edgedistill train RUN --force`.")
    return metrics


def _check_prompts(run: Run, tok) -> list[tuple[list[int], list[int]]]:
    """(prompt + response ids, prompt ids) for the first eval records (train when eval is empty)."""
    source = run.eval_data if run.eval_data.exists() and run.eval_data.stat().st_size else run.train_data
    out = []
    for rec in read_jsonl(source)[:CHECK_PROMPTS]:
        msgs = messages_of(rec)
        prompt = list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        full = list(tok.apply_chat_template(msgs + [{"role": "assistant", "content": rec["response"]}],
                                            tokenize=True))
        out.append((full[:1024], prompt[:1024]))
    return out


def _greedy(model, prompt: list[int], tok) -> list[int]:
    import torch

    ids = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=CHECK_NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    return ids[0, len(prompt):].tolist()


def _generation_config(base: str, cls):
    try:
        return cls.from_pretrained(base)
    except OSError:
        return cls(do_sample=False)
