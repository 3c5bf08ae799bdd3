"""Transformers (torch): the merged student and an HF student, for parity and eval."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgedistill.runtimes import Runtime, eos_ids, first_stop, hf_chat_ids, left_padded

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

    def generate_ids_batch(self, prompts: list[list[int]], max_new_tokens: int
                           ) -> list[tuple[list[int], str]]:
        """One transformers ``generate`` call for the batch: left padding with an attention mask
        (positions follow from it), greedy with the KV cache, a row done at its first end-of-turn
        id. A fresh GenerationConfig, and ``use_model_defaults=False``: the checkpoint's own
        sampling settings (Qwen ships do_sample and a repetition penalty) must not leak in, so the
        tokens are the argmax that ``stream_ids`` takes."""
        import torch
        from transformers import GenerationConfig

        pad = self.tokenizer.pad_token_id
        pad = min(self.eos) if pad is None else pad
        padded, padded_mask = left_padded(prompts, pad)
        ids, mask = torch.from_numpy(padded), torch.from_numpy(padded_mask)
        width = ids.shape[1]
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=sorted(self.eos), pad_token_id=pad, use_cache=True)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      use_model_defaults=False)
        return [first_stop(row.tolist(), self.is_stop) for row in out[:, width:]]

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
