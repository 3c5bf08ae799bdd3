"""llama.cpp through llama-cpp-python: GGUF artifacts, decoded through its C API."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from edgedistill.errors import ArtifactError, NotAvailable
from edgedistill.runtimes import Generation, Runtime

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def settings(*, threads: int | None = None, n_ctx: int = 2048, gpu_layers: int = 0) -> dict:
    """The llama.cpp settings every caller uses (the bench runtime, the in-process GGUF teacher,
    the served teacher): every core (``Llama`` defaults to half) and flash attention (llama.cpp's
    own default; the Python binding and ``llama_cpp.server`` turn it off, and decoding without it
    measured ~15% slower here). Keys are ``Llama``'s keyword arguments."""
    threads = threads or os.cpu_count() or 1
    return {"n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads,
            "n_gpu_layers": gpu_layers, "flash_attn": True}


def server_flags(**kw) -> list[str]:
    """:func:`settings` as ``python -m llama_cpp.server`` flags."""
    s = settings(**kw)
    out = []
    for key in ("n_ctx", "n_threads", "n_threads_batch", "n_gpu_layers"):
        out += [f"--{key}", str(s[key])]
    return out + ["--flash_attn", "true" if s["flash_attn"] else "false"]


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
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), logits_all=False, verbose=False,
                                       **settings(threads=threads, n_ctx=n_ctx, gpu_layers=gpu_layers))
        except ValueError as e:  # llama-cpp-python raises ValueError when llama.cpp refuses a file
            raise ArtifactError(f"llama.cpp cannot load {path}: {e}.",
                                hint="The file is corrupt or truncated; re-export it.") from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self._eog: list[int] | None = None
        self._ctx = self.llm._ctx.ctx
        self._one = (llama_cpp.llama_token * 1)()  # the decode loop's one-token batch, reused
        self._all_batch = None  # logits(): a batch with an output per token, made on first use
        self._chat = None  # the chat template's formatter, made on first use

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        m = self.llm._model
        if self._chat is None:  # the template compiled once, not per prompt
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self.llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ArtifactError(f"{self.path} has no tokenizer.chat_template in its metadata.")
            self._chat = Jinja2ChatFormatter(template, eos_token=m.token_get_text(m.token_eos()),
                                             bos_token=m.token_get_text(m.token_bos()),
                                             add_generation_prompt=True)
        text = self._chat(messages=messages).prompt
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

    def generate_batch(self, messages_list: list[list[dict]], max_new_tokens: int,
                       batch_size: int = 16, progress: Callable[[int], None] | None = None
                       ) -> list[Generation]:
        """Continuous batching (:class:`~edgedistill.runtimes.llama_batch.BatchedDecoder`): up to
        ``batch_size`` sequences in one llama.cpp context, a finished one replaced by the next
        prompt at once, greedy with llama.cpp's sampler. The whole call is one batch: each reply's
        ``seconds`` is the call's wall time / the number of prompts. ``batch_size`` 1: one chat
        at a time through :meth:`generate`."""
        from edgedistill.runtimes.llama_batch import BatchedDecoder, Completion, Job

        if batch_size <= 1:
            return super().generate_batch(messages_list, max_new_tokens, 1, progress)
        prompts = [self.chat_prompt_ids(m) for m in messages_list]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first
        jobs = [Job(key=i, prompt_ids=prompts[i], max_tokens=max_new_tokens) for i in order]
        done: dict[int, Completion] = {}

        def finished(job: Job, completions: list[Completion], seconds: float) -> None:
            done[job.key] = completions[0]
            if progress:
                progress(1)

        t0 = time.perf_counter()
        BatchedDecoder(self, slots=min(batch_size, max(len(jobs), 1))).run(jobs, finished)
        share = (time.perf_counter() - t0) / max(len(prompts), 1)
        return [Generation(done[i].text, done[i].token_ids, prompts[i], done[i].finish_reason, share)
                for i in range(len(prompts))]

    def is_stop(self, token_id: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token_id))

    def _stop_ids(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if self.is_stop(t)]
        return self._eog

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> "np.ndarray":
        """Every position's logits [len(ids), n_vocab]: the ids decoded in batches of n_batch
        tokens with an output requested for each (one pass, as llama.cpp's perplexity tool does)."""
        import numpy as np

        lc = self._llama_cpp
        self._reset()
        step = self.llm.n_batch
        if self._all_batch is None:
            self._all_batch = lc.llama_batch_init(step, 0, 1)
        batch, rows = self._all_batch, []
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, start + i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(chunk)
            rc = lc.llama_decode(self._ctx, batch)
            if rc != 0:
                raise ArtifactError(f"llama.cpp could not decode {len(ids)} tokens with "
                                    f"{self.path.name} (llama_decode returned {rc}; context "
                                    f"{self.llm.n_ctx()} tokens).",
                                    hint="Shorten the sequence or raise the context.")
            out = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(len(chunk), self.n_vocab))
            rows.append(out.astype(np.float32, copy=True))
        return np.concatenate(rows) if rows else np.zeros((0, self.n_vocab), np.float32)

    def close(self) -> None:
        if self._all_batch is not None:
            self._llama_cpp.llama_batch_free(self._all_batch)
            self._all_batch = None
        self.llm.close()
