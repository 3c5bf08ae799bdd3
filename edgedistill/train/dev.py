"""The dev slice the best checkpoint is chosen on, and what the training hardware computes well.

The dev slice is a deterministic share of the train split (``train.dev_fraction``, at most
``train.dev_max`` examples), never the eval split: eval stays untouched until the ladder. Its score
is the task's own metric on greedy answers (batched generation, left padding), against the gold
answer when there is one, else the teacher's verified answer.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def split_dev(records: list[dict[str, Any]], fraction: float, most: int, seed: int
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(fit, dev): dev is the ``round(n * fraction)`` records (at most ``most``) that rank first by
    sha256(seed:id); at least 8 records stay to fit on."""
    if fraction <= 0 or len(records) < 16:
        return records, []
    n_dev = min(most, max(1, round(len(records) * fraction)), len(records) - 8)
    ranked = sorted(records, key=lambda r: hashlib.sha256(f"{seed}:dev:{r['id']}".encode()).hexdigest())
    dev_ids = {r["id"] for r in ranked[:n_dev]}
    return [r for r in records if r["id"] not in dev_ids], [r for r in records if r["id"] in dev_ids]


def bf16_native() -> bool:
    """This machine computes bf16 matmuls natively (a CUDA GPU with bf16, or a CPU with AMX-BF16
    or AVX512-BF16, which oneDNN uses under torch's CPU autocast)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and torch.backends.mkldnn.is_available()


def precision(choice: str) -> str:
    if choice == "auto":
        return "bf16" if bf16_native() else "fp32"
    return choice


# train.attention: auto picks eager attention on a CPU for padded batches of examples up to this
# many tokens, where SDPA's CPU kernels cost more than they save; from about 96 tokens on
# eager is no faster (scripts/bench_attention.py prints both, by length)
EAGER_MAX_TOKENS = 64


def attention(choice: str, *, on_gpu: bool, packing: bool, longest: int) -> str:
    """The attention implementation the student trains with: ``choice`` unless it is auto."""
    if choice != "auto":
        return choice
    return "eager" if not on_gpu and not packing and longest <= EAGER_MAX_TOKENS else "sdpa"


class DevScorer:
    """Scores a model on the dev slice: greedy answers, the task's metric."""

    def __init__(self, tok, records: list[dict[str, Any]], task: str, max_new_tokens: int = 32,
                 batch_size: int = 16):
        from edgedistill.data import messages_of

        self.tok, self.records, self.task = tok, records, task
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.prompts = [tok.apply_chat_template(messages_of(r), add_generation_prompt=True, tokenize=False)
                        for r in records]

    def __call__(self, model) -> dict[str, Any]:
        import torch

        from edgedistill.evaluate import metrics
        from edgedistill.evaluate.ladder import reference_of

        tok = self.tok
        side, tok.padding_side = tok.padding_side, "left"
        was_training = model.training
        model.eval()
        scores = []
        try:
            with torch.inference_mode():
                for start in range(0, len(self.records), self.batch_size):
                    texts = self.prompts[start:start + self.batch_size]
                    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                    out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                    replies = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    for rec, reply in zip(self.records[start:start + self.batch_size], replies):
                        _, ref, is_reply = reference_of(rec)
                        scores.append(metrics.score_example(self.task, reply, ref, is_reply, rec)["score"])
        finally:
            tok.padding_side = side
            model.train(was_training)
        return {"dev_score": round(sum(scores) / len(scores), 6) if scores else None, "dev_n": len(scores)}
