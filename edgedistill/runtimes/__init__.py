"""The one place that loads each artifact kind and generates from it with its chat template.

Kinds: ``hf`` (transformers + torch), ``gguf`` (llama.cpp through llama-cpp-python), ``onnx``
(plain onnxruntime with a KV-cache loop, and the transformers tokenizer saved beside the model),
``ortgenai`` (ONNX Runtime GenAI package). Parity, eval and bench all go through here.

Layout: this module holds what every runtime shares (``Runtime``, ``Generation``, ``load``); one
module per kind (``hf``, ``llama_cpp``, ``onnx``, ``ortgenai``, listed in
:data:`edgedistill.registry.KINDS`) holds its class and imports its runtime library inside it.
Nothing here imports torch, onnx or llama_cpp at module level: the device side of bench uses it
without torch. It may import ``edgedistill.errors`` and ``edgedistill.registry`` only.
Every runtime decodes greedily and renders prompts with its OWN tokenizer and chat template, so a
tokenizer that an export broke shows up as different prompt ids, not as silently repaired input.

``generate`` answers one chat; ``generate_batch`` answers many with the kind's own batching (padded
batches for hf, onnx and ortgenai, continuous batching in one llama.cpp context for gguf) and the
same greedy tokens up to floating-point summation order.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import importlib

from edgedistill.errors import ArtifactError, ConfigError
from edgedistill import registry

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)



@dataclass
class Generation:
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    prompt_ids: list[int]
    finish_reason: str  # "stop" (end-of-turn token) | "length" (hit max_new_tokens)
    # generate: this reply's wall time; generate_batch: its share of the batch's wall time (the
    # batch's seconds / its size), so the seconds of a rung add up to its wall time either way
    seconds: float


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size``, longest prompts first, so a padded
    batch holds prompts of similar length (and the slowest batch shows in the first progress step)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), max(1, batch_size))]


def left_padded(prompts: list[list[int]], pad: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Prompts of different lengths as one batch, padded on the left: (ids, attention mask), int64."""
    import numpy as np

    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def first_stop(ids: list[int], is_stop: Callable[[int], bool]) -> tuple[list[int], str]:
    """A row of generated ids cut at its first stop token: (ids before it, finish reason)."""
    for i, tok in enumerate(ids):
        if is_stop(tok):
            return ids[:i], "stop"
    return ids, "length"


class Runtime:
    """Shared greedy ``generate`` on top of each kind's ``chat_prompt_ids`` and ``stream_ids``."""

    kind: str = ""
    path: Path

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        raise NotImplementedError

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        raise NotImplementedError

    def is_stop(self, token_id: int) -> bool:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def logits(self, ids: list[int]) -> "np.ndarray | None":
        return None

    def close(self) -> None:
        pass

    def generate(self, messages: list[dict], max_new_tokens: int) -> Generation:
        t0 = time.perf_counter()
        prompt = self.chat_prompt_ids(messages)
        out, finish = self.greedy_ids(prompt, max_new_tokens)
        return Generation(self.decode(out), out, prompt, finish, time.perf_counter() - t0)

    def greedy_ids(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
        """(generated ids without the stop token, finish reason) for one prompt."""
        out: list[int] = []
        for tok in self.stream_ids(prompt_ids, max_new_tokens):
            if self.is_stop(tok):
                return out, "stop"
            out.append(tok)
        return out, "length"

    def generate_batch(self, messages_list: list[list[dict]], max_new_tokens: int,
                       batch_size: int = 16, progress: Callable[[int], None] | None = None
                       ) -> list[Generation]:
        """Greedy replies to many chats, in their order: the prompts in batches of up to
        ``batch_size`` of similar length, each batch through :meth:`generate_ids_batch`
        (``batch_size`` 1: :meth:`generate`, one chat at a time).
        ``progress(n)`` is called with the number of replies each finished batch adds."""
        if batch_size <= 1:
            out = []
            for messages in messages_list:
                out.append(self.generate(messages, max_new_tokens))
                if progress:
                    progress(1)
            return out
        prompts = [self.chat_prompt_ids(m) for m in messages_list]
        slots: list[Generation | None] = [None] * len(prompts)
        for idx in length_batches([len(p) for p in prompts], batch_size):
            t0 = time.perf_counter()
            rows = self.generate_ids_batch([prompts[i] for i in idx], max_new_tokens)
            share = (time.perf_counter() - t0) / len(idx)
            for i, (ids, finish) in zip(idx, rows):
                slots[i] = Generation(self.decode(ids), ids, prompts[i], finish, share)
            if progress:
                progress(len(idx))
        return slots  # type: ignore[return-value]

    def generate_ids_batch(self, prompts: list[list[int]], max_new_tokens: int
                           ) -> list[tuple[list[int], str]]:
        """:meth:`greedy_ids` for each prompt. This fallback decodes one prompt at a time; a kind
        with batching overrides it."""
        return [self.greedy_ids(p, max_new_tokens) for p in prompts]

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """End-of-turn ids: generation_config.json's eos_token_id (int or list) and the tokenizer's."""
    ids: set[int] = set()
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def hf_chat_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def kind_of(fmt: str) -> str:
    """The runtime kind that runs an artifact format (``onnx``/``ortgenai``/``gguf``/``hf``)."""
    try:
        return registry.kind_of(fmt)
    except KeyError:
        known = sorted(set(registry.KINDS) | set(registry.FORMATS) | set(registry.RUNTIME_NAMES))
        raise ConfigError(f"Unknown artifact format {fmt!r}; known: {', '.join(known)}.") from None


CLASSES = {"hf": "HFRuntime", "gguf": "LlamaCppRuntime", "onnx": "OnnxRuntime",
           "ortgenai": "OrtGenAIRuntime"}


def load(kind: str, path: str | Path, *, threads: int | None = None,
         providers: list[str] | None = None, gpu_layers: int = 0, n_ctx: int | None = None) -> Runtime:
    """Load an artifact of ``kind`` (hf | gguf | onnx | ortgenai) from ``path``."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.")
    kind = kind_of(kind)
    cls = getattr(importlib.import_module(registry.KINDS[kind][0]), CLASSES[kind])
    if kind == "hf":
        return cls(path, threads)
    if kind == "gguf":
        return cls(path, threads, gpu_layers, **({"n_ctx": n_ctx} if n_ctx else {}))
    return cls(path, threads, providers)
