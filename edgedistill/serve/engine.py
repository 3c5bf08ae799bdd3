"""The engines behind ``edgedistill serve`` and the concurrency bench: requests in, tokens out.

- :class:`BatchingEngine` (GGUF): one decoder thread owns a llama.cpp context with ``slots``
  sequences (``runtimes.llama_batch.BatchedDecoder.serve``); a request that arrives joins the next
  step's batch (continuous batching), each with its own sampler, so many users share one read of
  the weights per step.
- :class:`SerialEngine` (ORT GenAI, ONNX): one worker thread answers one request at a time through
  the runtime's greedy ``stream_ids``; the others wait in the queue (what their TTFT shows).

Both take prompt ids (the artifact's own chat template, ``Runtime.chat_prompt_ids``) and call the
request's ``on_token(sample, token)`` and ``on_done(completions, error)`` from their thread; the HTTP
layer (:mod:`edgedistill.serve.app`) hands these over to its event loop. Imports no torch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from edgedistill.errors import ConfigError
from edgedistill.runtimes import Runtime

log = logging.getLogger(__name__)

OnToken = Callable[[int, int], None]
OnDone = Callable[[list, "str | None"], None]


@dataclass
class Ticket:
    """One request as an engine holds it; ``cancel()`` (any thread) ends it at its next token."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seed: int = 0
    n: int = 1
    logprobs: int | None = None
    on_token: OnToken | None = None
    on_done: OnDone | None = None
    job: Any = field(default=None, repr=False)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.job is not None:
            self.job.cancelled = True


class _Engine:
    """What both engines share: limits, the queue, the worker thread and its failure handling."""

    batching = False

    def __init__(self, rt: Runtime, *, slots: int, context: int):
        self.rt, self.slots, self.context = rt, max(1, slots), context
        self._inbox: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._pending: set[int] = set()  # ids of tickets submitted and not done
        self._tickets: dict[int, Ticket] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    def check(self, prompt_len: int, max_tokens: int, n: int) -> int:
        """The max_tokens a request gets (cut to what its share of the context holds); a
        ConfigError when its prompt alone does not fit, or it asks for more samples than slots."""
        room = self.context - prompt_len
        if room < 1:
            raise ConfigError(f"the prompt has {prompt_len} tokens; this server's context per request "
                              f"is {self.context} tokens (edgedistill serve --context)")
        if n > self.slots:
            raise ConfigError(f"n={n} needs {n} parallel slots; this server has {self.slots} (--slots)")
        return max(1, min(max_tokens, room))

    def submit(self, ticket: Ticket) -> Ticket:
        if self._closing.is_set():
            raise RuntimeError("the engine is closed")
        ticket.max_tokens = self.check(len(ticket.prompt_ids), ticket.max_tokens, ticket.n)
        with self._lock:
            self._tickets[id(ticket)] = ticket
        self._inbox.put(ticket)
        return ticket

    def _finish(self, ticket: Ticket, completions: list, error: str | None = None) -> None:
        with self._lock:
            if self._tickets.pop(id(ticket), None) is None:  # already answered (with an error)
                return
        if ticket.on_done is not None:
            ticket.on_done(completions, error)

    def _fail_all(self, error: str) -> None:
        with self._lock:
            tickets = list(self._tickets.values())
        for t in tickets:
            self._finish(t, [], error)

    def _work(self) -> None:
        while not self._closing.is_set():
            try:
                self._serve()
            except Exception as e:  # noqa: BLE001 -- every waiting request is told; the engine goes on
                log.error("the %s engine failed: %s; its requests get an error", self.rt.kind, e,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self._fail_all(f"{type(e).__name__}: {e}")
                time.sleep(0.05)

    def _serve(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=30)
        self._fail_all("the server is shutting down")


class BatchingEngine(_Engine):
    """Continuous batching over ``slots`` sequences of one llama.cpp context, ``context`` tokens
    each (the KV cache holds ``slots * context``)."""

    batching = True

    def _take(self, idle: bool) -> list | None:
        from edgedistill.runtimes.llama_batch import Job

        got: list[Ticket] = []
        if idle:
            while not got:
                if self._closing.is_set():
                    return None
                try:
                    got.append(self._inbox.get(timeout=0.1))
                except queue.Empty:
                    continue
        while True:
            try:
                got.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if not got and self._closing.is_set():
            return None
        jobs = []
        for t in got:
            if t.cancelled:
                self._finish(t, [], None)
                continue
            t.job = Job(key=t, prompt_ids=t.prompt_ids, max_tokens=t.max_tokens, temperature=t.temperature,
                        top_p=t.top_p, seeds=[t.seed + i for i in range(t.n)], logprobs=t.logprobs,
                        on_token=t.on_token)
            jobs.append(t.job)
        return jobs

    def _serve(self) -> None:
        from edgedistill.runtimes.llama_batch import BatchedDecoder

        dec = BatchedDecoder(self.rt, slots=self.slots)
        dec.serve(self._take, lambda job, completions, s: self._finish(job.key, completions),
                  n_ctx=self.slots * self.context + 8)


@dataclass
class _Reply:
    """A completion as BatchedDecoder gives one (token ids, text, finish reason)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list | None = None


class SerialEngine(_Engine):
    """One request at a time through the runtime's greedy ``stream_ids`` (ORT GenAI, ONNX)."""

    def check(self, prompt_len: int, max_tokens: int, n: int) -> int:
        if n != 1:
            raise ConfigError(f"n={n}: a {self.rt.kind} artifact is served one answer per request")
        return super().check(prompt_len, max_tokens, 1)

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                t = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            out: list[int] = []
            finish = "cancelled" if t.cancelled else "length"
            if not t.cancelled:
                for tok in self.rt.stream_ids(t.prompt_ids, t.max_tokens):
                    if t.cancelled:
                        finish = "cancelled"
                        break
                    if self.rt.is_stop(tok):
                        finish = "stop"
                        break
                    out.append(tok)
                    if t.on_token is not None:
                        t.on_token(0, tok)
            self._finish(t, [_Reply(out, self.rt.decode(out), finish)])


def make_engine(rt: Runtime, *, slots: int, context: int) -> _Engine:
    """The engine for ``rt``'s kind: batching for GGUF, one at a time otherwise."""
    if rt.kind == "gguf":
        return BatchingEngine(rt, slots=slots, context=context)
    return SerialEngine(rt, slots=slots, context=context)
