"""The one place that loads each artifact kind and generates from it with its chat template.

Kinds: ``hf`` (transformers + torch), ``gguf`` (llama.cpp through llama-cpp-python), ``onnx``
(plain onnxruntime with a KV-cache loop, and the transformers tokenizer saved beside the model),
``ortgenai`` (ONNX Runtime GenAI package). Parity, eval and bench all go through here.

This module imports nothing heavy at top level: the device side of bench uses it without torch.
Every runtime decodes greedily and renders prompts with its OWN tokenizer and chat template, so a
tokenizer that an export broke shows up as different prompt ids, not as silently repaired input.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgedistill.errors import ArtifactError, ConfigError, NotAvailable

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

KINDS = ("hf", "gguf", "onnx", "ortgenai")
_FORMAT_TO_KIND = {
    "hf": "hf", "transformers": "hf", "gguf": "gguf", "llama.cpp": "gguf",
    "onnx": "onnx", "onnxruntime": "onnx", "ortgenai": "ortgenai", "onnxruntime-genai": "ortgenai",
}


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    prompt_ids: list[int]
    finish_reason: str  # "stop" (end-of-turn token) | "length" (hit max_new_tokens)
    seconds: float


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
        out: list[int] = []
        finish = "length"
        for tok in self.stream_ids(prompt, max_new_tokens):
            if self.is_stop(tok):
                finish = "stop"
                break
            out.append(tok)
        return Generation(self.decode(out), out, prompt, finish, time.perf_counter() - t0)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """End-of-turn ids: generation_config.json's eos_token_id (int or list) and the tokenizer's."""
    ids: set[int] = set()
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _hf_chat_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return [int(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# transformers


class HFRuntime(Runtime):
    kind = "hf"

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.eos = _eos_ids(path, self.tokenizer)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        return _hf_chat_ids(self.tokenizer, messages)

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


# ---------------------------------------------------------------------------------------------
# llama.cpp


class LlamaCppRuntime(Runtime):
    kind = "gguf"

    def __init__(self, path: Path, threads: int | None = None, gpu_layers: int = 0,
                 n_ctx: int = 2048):
        try:
            import llama_cpp
        except ImportError:
            raise NotAvailable("llama-cpp-python is not installed; GGUF artifacts need it.",
                               hint="Install it with `pip install llama-cpp-python`.") from None
        self._llama_cpp = llama_cpp
        self.path = path
        threads = threads or os.cpu_count() or 1  # Llama's default is half the cores
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, n_gpu_layers=gpu_layers,
                                       # llama.cpp's own default; the binding's is off, and
                                       # decoding without it measured ~15% slower here
                                       flash_attn=True, logits_all=False, verbose=False)
        except ValueError as e:  # llama-cpp-python raises ValueError when llama.cpp refuses a file
            raise ArtifactError(f"llama.cpp cannot load {path}: {e}.",
                                hint="The file is corrupt or truncated; re-export it.") from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self._eog: list[int] | None = None
        self._ctx = self.llm._ctx.ctx
        self._one = (llama_cpp.llama_token * 1)()  # the decode loop's one-token batch, reused

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ArtifactError(f"{self.path} has no tokenizer.chat_template in its metadata.")
        m = self.llm._model
        text = Jinja2ChatFormatter(template, eos_token=m.token_get_text(m.token_eos()),
                                   bos_token=m.token_get_text(m.token_bos()),
                                   add_generation_prompt=True)(messages=messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=m.add_bos_token(), special=True)

    def _last_logits(self) -> "np.ndarray":
        import numpy as np

        ptr = self._llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # Decoding goes straight to llama.cpp's C API (llama_decode on a one-sequence batch), as
    # llama.cpp's own examples do: the Python wrapper's eval() costs several percent of decode
    # speed on a small model (scripts/bench_overhead.py measures what is left).

    def _reset(self) -> None:
        lc = self._llama_cpp
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)

    def _decode(self, ids: list[int]) -> None:
        lc = self._llama_cpp
        step = self.llm.n_batch
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            if len(chunk) == 1:
                self._one[0] = chunk[0]
                tokens = self._one
            else:  # held in a local: the batch keeps only a raw pointer to it
                tokens = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(tokens, len(chunk)))
            if rc != 0:
                raise ArtifactError(f"llama.cpp could not decode with {self.path.name} (llama_decode "
                                    f"returned {rc}; context {self.llm.n_ctx()} tokens).",
                                    hint="A prompt plus answer longer than the context does this; "
                                         "shorten it or raise the context.")

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        import numpy as np

        self._reset()
        self._decode(prompt_ids)
        for i in range(max_new_tokens):
            logits = self._last_logits()
            if ignore_eos:
                logits = logits.copy()
                logits[self._stop_ids()] = -np.inf
            tok = int(np.argmax(logits))
            yield tok
            if (self.is_stop(tok) and not ignore_eos) or i == max_new_tokens - 1:
                return
            self._decode([tok])

    def is_stop(self, token_id: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token_id))

    def _stop_ids(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if self.is_stop(t)]
        return self._eog

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> "np.ndarray":
        import numpy as np

        self._reset()
        rows = []
        for tok in ids:  # one decode per token: the context keeps only the last row of logits
            self._decode([tok])
            rows.append(self._last_logits().copy())
        return np.stack(rows).astype(np.float32)

    def close(self) -> None:
        self.llm.close()


# ---------------------------------------------------------------------------------------------
# onnxruntime (optimum's text-generation-with-past layout, run without optimum or torch)


class OnnxRuntime(Runtime):
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        if path.is_dir():
            path = path / "model.onnx"
        self.path = path
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ArtifactError(f"onnxruntime cannot load {path}: {e}",
                                hint="The file is corrupt or truncated; re-export it.") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent)
        self.eos = _eos_ids(path.parent, self.tokenizer)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = self.inputs[self.past_names[0]] if self.past_names else None
        self.kv_shape = (first.shape[1], first.shape[3]) if first else None  # heads, head_dim
        self.kv_dtype = "float16" if first is not None and "float16" in first.type else "float32"

    def _run(self, ids: list[int], past: dict | None, n_past: int) -> tuple["np.ndarray", dict]:
        import numpy as np

        n = len(ids)
        feed: dict[str, Any] = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, n_past + n), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(n_past, n_past + n, dtype=np.int64)[None]
        for name in self.past_names:
            feed[name] = past[name] if past else np.zeros(
                (1, self.kv_shape[0], 0, self.kv_shape[1]), dtype=self.kv_dtype)
        outs = self.session.run(["logits", *self.present_names], feed)
        return outs[0][0], dict(zip(self.past_names, outs[1:]))

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        return _hf_chat_ids(self.tokenizer, messages)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        import numpy as np

        logits, past = self._run(prompt_ids, None, 0)
        n_past = len(prompt_ids)
        for i in range(max_new_tokens):
            last = logits[-1].astype(np.float32)
            if ignore_eos:
                last[list(self.eos)] = -np.inf
            tok = int(np.argmax(last))
            yield tok
            if (tok in self.eos and not ignore_eos) or i == max_new_tokens - 1:
                return
            logits, past = self._run([tok], past, n_past)
            n_past += 1

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import numpy as np

        return self._run(ids, None, 0)[0].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime GenAI


class OrtGenAIRuntime(Runtime):
    kind = "ortgenai"

    def __init__(self, path: Path, threads: int | None = None,
                 providers: list[str] | None = None):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise NotAvailable("onnxruntime-genai is not installed; ortgenai artifacts need it.",
                               hint="Install it with `pip install onnxruntime-genai`.") from None
        self._og = og
        self.path = path if path.is_dir() else path.parent
        if not (self.path / "genai_config.json").exists():
            raise ArtifactError(f"{self.path} has no genai_config.json; it is not an "
                                "ONNX Runtime GenAI package.")
        try:
            config = og.Config(str(self.path))
            if providers:
                config.clear_providers()
                for p in providers:
                    name = p.removesuffix("ExecutionProvider").lower()
                    if name != "cpu":
                        config.append_provider(name)
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except RuntimeError as e:
            raise ArtifactError(f"ONNX Runtime GenAI cannot load {self.path}: {e}",
                                hint="The package is corrupt or truncated; re-export it.") from None
        self.tokenizer = og.Tokenizer(self.model)
        cfg = json.loads((self.path / "genai_config.json").read_text())
        eos = cfg["model"].get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        return [int(i) for i in self.tokenizer.encode(text)]

    def _generator(self, prompt_len: int, max_new_tokens: int, ignore_eos: bool) -> Any:
        params = self._og.GeneratorParams(self.model)
        total = prompt_len + max_new_tokens
        opts: dict[str, Any] = {"max_length": total, "do_sample": False}
        if ignore_eos:
            opts["min_length"] = total
        params.set_search_options(**opts)
        return self._og.Generator(self.model, params)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        gen = self._generator(len(prompt_ids), max_new_tokens, ignore_eos)
        gen.append_tokens(prompt_ids)
        produced = 0
        while not gen.is_done() and produced < max_new_tokens:
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            produced += 1
            yield tok
            if tok in self.eos and not ignore_eos:
                return

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def logits(self, ids: list[int]) -> "np.ndarray":
        import numpy as np

        gen = self._generator(len(ids), 1, ignore_eos=True)
        rows = []
        for tok in ids:  # one token at a time: get_logits returns the last position's row
            gen.append_tokens([tok])
            rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def close(self) -> None:
        del self.tokenizer, self.model


# ---------------------------------------------------------------------------------------------


def kind_of(fmt: str) -> str:
    """The runtime kind that runs an artifact format (``onnx``/``ortgenai``/``gguf``/``hf``)."""
    try:
        return _FORMAT_TO_KIND[fmt]
    except KeyError:
        raise ConfigError(f"Unknown artifact format {fmt!r}; known: "
                          f"{', '.join(sorted(_FORMAT_TO_KIND))}.") from None


def load(kind: str, path: str | Path, *, threads: int | None = None,
         providers: list[str] | None = None, gpu_layers: int = 0) -> Runtime:
    """Load an artifact of ``kind`` (hf | gguf | onnx | ortgenai) from ``path``."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.")
    kind = kind_of(kind)
    if kind == "hf":
        return HFRuntime(path, threads)
    if kind == "gguf":
        return LlamaCppRuntime(path, threads, gpu_layers)
    if kind == "onnx":
        return OnnxRuntime(path, threads, providers)
    return OrtGenAIRuntime(path, threads, providers)
