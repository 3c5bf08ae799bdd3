"""Training examples: the student's chat template, loss on the assistant's tokens only, and
batches without padding waste.

An example is the prompt turns plus the teacher's response as the assistant turn, rendered
with the student's own chat template. Labels are -100 on everything the template puts before
the response (system prompt, user turns, the assistant header), so the loss falls on the
response and its end-of-turn token only.

Packing (``train.packing: true``) concatenates a batch's examples into one row with
``position_ids`` restarting at 0 for each example and no attention mask; transformers
(masking_utils.find_packed_sequence_indices) turns that into a block-diagonal causal mask for
eager/SDPA attention, so no example attends to another (tests/test_train.py checks the logits).
Without packing, examples are padded to the longest in the batch and the Trainer groups
similar lengths (``group_by_length``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edgedistill.data import messages_of
from edgedistill.errors import DataError

log = logging.getLogger(__name__)

IGNORE = -100


def encode_example(tok, rec: dict[str, Any], max_length: int, where: str = "") -> dict[str, Any] | None:
    """input_ids and labels of one record; None when the prompt alone fills ``max_length``."""
    if not isinstance(rec.get("response"), str) or not rec["response"].strip():
        raise DataError(f"{where}: record {rec.get('id')!r} has no \"response\" text.",
                        hint="train.jsonl is written by `edgedistill generate`; regenerate it.")
    prompt = messages_of(rec)
    prompt_ids = list(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    full = prompt + [{"role": "assistant", "content": rec["response"]}]
    full_ids = list(tok.apply_chat_template(full, tokenize=True))
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError(
            f"{where}: the student's chat template renders the conversation so that the prompt is "
            f"not a prefix of prompt + answer (record {rec.get('id')!r}).",
            hint="Completion-only loss needs a prefix-stable template (ChatML, Llama 3, Phi …).")
    if len(prompt_ids) >= max_length:
        return None
    ids = full_ids[:max_length]
    labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    return {"input_ids": ids, "labels": labels, "response_start": len(prompt_ids)}


@dataclass
class Collator:
    """Packs (or pads) a list of encoded examples into a batch of tensors.

    Optional per-example ``kd_ids`` / ``kd_logprobs`` (lists of top-k lists, starting at
    ``response_start``) become [rows, tokens, k] tensors with id -1 where the teacher said
    nothing."""

    pad_id: int
    packing: bool = True
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        k = max((len(c) for e in examples for c in e.get("kd_ids") or [] if c), default=0)
        if self.packing:
            rows = [[t for e in examples for t in e["input_ids"]]]
            labels = [[t for e in examples for t in [IGNORE] + e["labels"][1:]]]
            positions = [[p for e in examples for p in range(len(e["input_ids"]))]]
            batch = {"input_ids": torch.tensor(rows), "labels": torch.tensor(labels),
                     "position_ids": torch.tensor(positions)}
            kd_rows = [[c for e in examples for c in _kd_rows(e, k)]]
        else:
            width = max(len(e["input_ids"]) for e in examples)
            if self.pad_to_multiple_of:
                width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
            pad = [width - len(e["input_ids"]) for e in examples]
            batch = {
                "input_ids": torch.tensor([e["input_ids"] + [self.pad_id] * n for e, n in zip(examples, pad)]),
                "labels": torch.tensor([e["labels"] + [IGNORE] * n for e, n in zip(examples, pad)]),
                "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * n
                                                for e, n in zip(examples, pad)]),
            }
            kd_rows = [_kd_rows(e, k) + [([-1] * k, [0.0] * k)] * n for e, n in zip(examples, pad)]
        if k:
            batch["kd_ids"] = torch.tensor([[c[0] for c in row] for row in kd_rows], dtype=torch.long)
            batch["kd_logprobs"] = torch.tensor([[c[1] for c in row] for row in kd_rows], dtype=torch.float32)
        return batch


def _kd_rows(e: dict[str, Any], k: int) -> list[tuple[list[int], list[float]]]:
    """One (ids, logprobs) pair per token of ``e``, padded to ``k``; id -1 = no teacher signal."""
    n = len(e["input_ids"])
    out = [([-1] * k, [0.0] * k) for _ in range(n)]
    start = e.get("response_start", 0)
    for j, (ids, lps) in enumerate(zip(e.get("kd_ids") or [], e.get("kd_logprobs") or [])):
        if start + j >= n:
            break
        if ids:
            out[start + j] = (list(ids) + [-1] * (k - len(ids)), list(lps) + [0.0] * (k - len(lps)))
    return out


def count_tokens(examples: list[dict[str, Any]]) -> dict[str, int]:
    n = [len(e["input_ids"]) for e in examples]
    trained = sum(sum(1 for t in e["labels"] if t != IGNORE) for e in examples)
    return {"examples": len(n), "tokens": sum(n), "trained_tokens": trained,
            "max_tokens": max(n, default=0)}
