"""Teacher backends: one name → module map, imported lazily, and the types they share.

Every backend module has one function::

    answer_all(cfg: TeacherConfig, requests: list[Request], sink: Sink) -> None

It asks the teacher each request and hands every answer to ``sink.answer`` as soon as it
arrives (``generate`` appends it to the resume log there and then). A request the endpoint
refuses for that request alone (e.g. 400: prompt too long) goes to ``sink.failed``; a teacher
that cannot answer at all raises an ``EdgeDistillError``. Backends import their heavy
libraries inside ``answer_all``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from edgedistill.errors import ConfigError

BACKENDS: dict[str, str] = {
    "openai": "edgedistill.teacher.backends.openai",
    "gguf": "edgedistill.teacher.backends.gguf",
    "hf": "edgedistill.teacher.backends.hf",
}


def backend_module(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ConfigError(f"Unknown teacher backend {name!r}.",
                          hint=f"Known backends: {', '.join(BACKENDS)} (teacher.backend).")
    return importlib.import_module(BACKENDS[name])


@dataclass(frozen=True)
class Request:
    key: str  # content hash of (model, params, messages): the resume key
    id: str  # the prompt id
    messages: list[dict[str, str]]
    params: dict[str, Any]  # temperature, top_p, max_tokens, seed, logprobs (None: not sent)


@dataclass
class Answer:
    request: Request
    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    endpoint: str | None = None
    latency_s: float = 0.0
    retries: int = 0
    logprobs: list[dict[str, Any]] | None = None  # top-k per token, see ``compact_logprobs``
    extra: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    def answer(self, answer: Answer) -> None: ...

    def failed(self, request: Request, reason: str) -> None: ...

    def retry(self, reason: str) -> None: ...


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    lp = e.get("logprob")
    out: dict[str, Any] = {"token": e["token"],
                           "logprob": None if lp is None else round(max(float(lp), -9999.0), 4)}
    raw = e.get("bytes")
    if raw and bytes(raw) != str(e["token"]).encode():  # only where the string cannot spell them
        out["bytes"] = list(raw)
    if e.get("token_id") is not None:
        out["token_id"] = int(e["token_id"])
    return out


def compact_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per generated token, in the OpenAI shape (``choices[0].logprobs.content``) that training
    reads (edgedistill.train.kd): ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}``,
    compacted: logprobs rounded to 4 decimals, ``bytes`` kept only where the token string cannot
    spell them, ``token_id`` where the backend knows it, nulls dropped."""
    return [{**_entry(e), "top_logprobs": [_entry(c) for c in e.get("top_logprobs") or []]}
            for e in entries]
