"""A local transformers teacher: batched generation with left padding and the model's chat
template. ``teacher.model`` is an HF directory (or a hub id the local cache holds)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError
from edgedistill.teacher import Answer, Request, Sink, compact_logprobs

log = logging.getLogger(__name__)


def load(cfg: TeacherConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(cfg.model).is_dir():  # a corrupt weight file: exit 2 naming it, not a traceback
        from edgedistill.integrity import check_safetensors

        check_safetensors(Path(cfg.model), f"teacher.model {cfg.model}")
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise ConfigError(f"Cannot load the hf teacher {cfg.model!r}: {err}",
                          hint="teacher.model must be a transformers model directory (or a hub id "
                          "already in the local cache).") from None
    if tok.chat_template is None:
        raise ConfigError(f"The tokenizer of {cfg.model} has no chat template.",
                          hint="Use an instruct model, whose tokenizer_config.json carries one.")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model.eval()


def _eos_ids(tok: Any, model: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids + [tok.eos_token_id] if i is not None}


def _batches(requests: list[Request], size: int) -> list[list[Request]]:
    """Requests grouped by similar prompt length (less padding), in batches of ``size``."""
    ordered = sorted(requests, key=lambda r: sum(len(m["content"]) for m in r.messages))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def answer_all(cfg: TeacherConfig, requests: list[Request], sink: Sink) -> None:
    if not requests:
        return
    import torch

    tok, model = load(cfg)
    eos = _eos_ids(tok, model)
    endpoint = f"transformers:{cfg.model}"
    p = requests[0].params  # the same for every request of a run
    if p.get("seed") is not None:
        torch.manual_seed(p["seed"])
    gen_kw: dict[str, Any] = {"max_new_tokens": p["max_tokens"], "pad_token_id": tok.pad_token_id,
                              "eos_token_id": sorted(eos), "return_dict_in_generate": True,
                              "output_logits": bool(p.get("logprobs"))}
    if p["temperature"] > 0:
        gen_kw.update(do_sample=True, temperature=p["temperature"], top_p=p.get("top_p") or 1.0)
    else:
        gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    for batch in _batches(requests, cfg.batch_size):
        texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, **gen_kw)
        latency = time.perf_counter() - t0
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        for row, req in enumerate(batch):
            ids = new[row].tolist()
            stop = next((i for i, t in enumerate(ids) if t in eos), None)
            kept = ids if stop is None else ids[:stop]
            logprobs = None
            if p.get("logprobs"):
                steps = []
                for step, token_id in enumerate(kept):
                    lp = torch.log_softmax(out.logits[step][row].float(), dim=-1)
                    top = torch.topk(lp, p["logprobs"])
                    steps.append({"token": tok.decode([token_id]), "token_id": token_id,
                                  "logprob": lp[token_id].item(),
                                  "top_logprobs": [{"token": tok.decode([i]), "token_id": i, "logprob": v}
                                                   for i, v in zip(top.indices.tolist(), top.values.tolist())]})
                logprobs = compact_logprobs(steps)
            sink.answer(Answer(
                request=req, text=tok.decode(kept, skip_special_tokens=True),
                finish_reason="stop" if stop is not None else "length",
                prompt_tokens=int(enc["attention_mask"][row].sum()), completion_tokens=len(kept) + (stop is not None),
                endpoint=endpoint, latency_s=latency, logprobs=logprobs))
