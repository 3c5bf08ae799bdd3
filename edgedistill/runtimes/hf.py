"""Transformers (torch): the merged student and an HF student, for parity and eval."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgedistill.runtimes import Runtime, eos_ids, first_stop, hf_chat_ids, left_padded

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# A batch's common prefix at least this long is computed once and its cache shared by the rows
# (generate_ids_batch). Below it the one-row prefill, the cache copies and the second call cost
# about what recomputing the prefix per row does, and the demo's chats (a one-line system turn:
# well under 64 tokens with the template's) stay on the plain path, so their scores do not move.
# A policy card is well above it (support: the chats share ~280 tokens).
MIN_SHARED_PREFIX = 64


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
        self.share_prefix = True  # off for good once the model refuses to continue from a cache
        self.prefix_stats = {"batches": 0, "tokens_not_recomputed": 0}

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
        tokens are the argmax that ``stream_ids`` takes. A long prefix that every prompt shares
        (a policy card in the system turn) is computed once for the batch: :meth:`_generate_shared`."""
        from transformers import GenerationConfig

        pad = self.tokenizer.pad_token_id
        pad = min(self.eos) if pad is None else pad
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=sorted(self.eos), pad_token_id=pad, use_cache=True)
        shared = self._prefix_to_share(prompts, max_new_tokens)
        if shared:
            try:
                out = self._generate_shared(prompts, shared, pad, config)
                self.prefix_stats["batches"] += 1
                self.prefix_stats["tokens_not_recomputed"] += shared * (len(prompts) - 1)
                return out
            except (TypeError, ValueError, AttributeError, NotImplementedError) as e:
                if self.prefix_stats["batches"]:  # it worked before: not the model's refusal
                    raise
                # a model that cannot continue a batch from a cache (remote code, a cache class
                # without batch_repeat_interleave): every row computes its whole prompt
                log.warning("hf: %s cannot continue a batch from a shared prefix (%s: %s); every row "
                            "computes its own prompt", type(self.model).__name__, type(e).__name__, e)
                self.share_prefix = False
        return self._generate_plain(prompts, pad, config)

    def _prefix_to_share(self, prompts: list[list[int]], max_new_tokens: int) -> int:
        """How many leading tokens of the batch to compute once; 0 for the plain path."""
        from edgedistill.runtimes.llama_batch import common_prefix

        if not self.share_prefix or len(prompts) < 2:
            return 0
        n = common_prefix(prompts)
        if n < MIN_SHARED_PREFIX:
            return 0
        lengths = {len(p) for p in prompts}
        window = self._sliding_window()
        if window and len(lengths) > 1 and max(lengths) + max_new_tokens > window:
            # a sliding window counts cache slots, and the shared layout puts a row's padding
            # between the prefix and its suffix: once the window is full the row would see fewer
            # real tokens than without sharing (left padding, the plain path, sits in front)
            return 0
        return n

    def _sliding_window(self) -> int | None:
        """The model's attention window when some layer slides (Gemma 2/3, Mistral), else None."""
        config = self.model.config.get_text_config()
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and "sliding_attention" not in layer_types:
            return None
        return window or None

    def _generate_plain(self, prompts: list[list[int]], pad: int, config) -> list[tuple[list[int], str]]:
        import torch

        padded, padded_mask = left_padded(prompts, pad)
        ids, mask = torch.from_numpy(padded), torch.from_numpy(padded_mask)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      use_model_defaults=False)
        return [first_stop(row.tolist(), self.is_stop) for row in out[:, ids.shape[1]:]]

    def _generate_shared(self, prompts: list[list[int]], shared: int, pad: int, config
                         ) -> list[tuple[list[int], str]]:
        """The first ``shared`` tokens run once, as one row, into a cache repeated for every row;
        ``generate`` gets whole rows laid out [prefix][padding][suffix], the mask zero on the
        padding (so positions, which follow from the mask, continue from the prefix), and feeds
        only what the cache does not hold. The same greedy tokens as the plain path up to float
        summation order (a prefix computed in a one-row call)."""
        import torch
        from transformers import DynamicCache

        rows = len(prompts)
        prefix = torch.tensor([prompts[0][:shared]])
        tails, tails_mask = left_padded([p[shared:] for p in prompts], pad)
        ids = torch.cat([prefix.expand(rows, -1), torch.from_numpy(tails)], dim=1)
        mask = torch.cat([torch.ones(rows, shared, dtype=torch.int64), torch.from_numpy(tails_mask)], dim=1)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        with torch.inference_mode():
            # a cache of our own, built from the config: sliding-window layers get theirs
            cache = self.model(input_ids=prefix, past_key_values=DynamicCache(config=self.model.config),
                               use_cache=True, **keep).past_key_values
            cache.batch_repeat_interleave(rows)
            out = self.model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                      generation_config=config, use_model_defaults=False)
        return [first_stop(row.tolist(), self.is_stop) for row in out[:, ids.shape[1]:]]

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
