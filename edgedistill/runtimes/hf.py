"""Transformers (torch): the merged student and an HF student, for parity and eval."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgedistill.runtimes import Runtime, eos_ids, hf_chat_ids

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class HFRuntime(Runtime):
    kind = "hf"

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgedistill.integrity import check_safetensors

        check_safetensors(path, "the model")  # corrupt weights: an ArtifactError, not a traceback
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.eos = eos_ids(path, self.tokenizer)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        return hf_chat_ids(self.tokenizer, messages)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        import torch

        past = None
        feed = torch.tensor([prompt_ids])
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                out = self.model(input_ids=feed, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1]
                if ignore_eos:
                    logits[list(self.eos)] = float("-inf")
                tok = int(torch.argmax(logits))
                yield tok
                if tok in self.eos and not ignore_eos:
                    return
                feed = torch.tensor([[tok]])

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
