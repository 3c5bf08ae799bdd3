"""Asking the teacher: requests with resume keys, rounds of them through a backend, every answer in
the resume log as it arrives.

A request's key is a hash of (model, parameters, messages); a second answer to the same prompt
(a self-consistency sample, a retry after a wrong answer) carries ``sample: i`` in its parameters,
so it is a key of its own. ``Asker.ask`` sends only the requests the log does not already answer,
so a run killed in any round resumes there. With ``teacher.serve`` the llama.cpp server starts
with the first request that needs it and stops when generate ends.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

from edgedistill.config import TeacherConfig
from edgedistill.data import append_jsonl, content_id, messages_of
from edgedistill.errors import ConfigError, EndpointError
from edgedistill.teacher import Answer, Request, backend_module

log = logging.getLogger(__name__)


def request_params(cfg: TeacherConfig, sample: int = 0, **override: Any) -> dict[str, Any]:
    """The parameters of answer ``sample`` of a prompt: the first at ``teacher.temperature``, the
    others at ``teacher.sample_temperature`` (with ``seed + sample`` when a seed is set)."""
    params = {"temperature": cfg.temperature if sample == 0 else cfg.sample_temperature,
              "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
              "seed": None if cfg.seed is None else cfg.seed + sample, "logprobs": cfg.logprobs}
    params.update(override)
    if sample:
        params["sample"] = sample
    return params


def make_request(cfg: TeacherConfig, prompt: dict[str, Any], sample: int = 0, *,
                 system_prompt: bool = True, **override: Any) -> Request:
    msgs = messages_of(prompt, cfg.system_prompt if system_prompt else None)
    params = request_params(cfg, sample, **override)
    key = content_id({"model": cfg.model, "params": params, "messages": msgs})
    return Request(key=key, id=prompt["id"], messages=msgs, params=params)


@contextlib.contextmanager
def served(cfg: TeacherConfig, logs_dir: Any) -> Iterator[TeacherConfig]:
    """The teacher config to ask with: with ``teacher.serve``, a llama.cpp server on loopback for
    ``teacher.model``, stopped when the block ends."""
    if not cfg.serve:
        yield cfg
        return
    if cfg.backend != "openai":
        raise ConfigError(f"teacher.serve needs teacher.backend: openai (got {cfg.backend}).",
                          hint="Use backend gguf to run the GGUF in-process instead (batched).")
    if cfg.base_url:
        raise ConfigError("teacher.serve starts its own server, but teacher.base_url is set too.",
                          hint="Remove one of them (--set teacher.base_url=null or --set teacher.serve=false).")
    from edgedistill.teacher.serve import serve

    logs_dir.mkdir(parents=True, exist_ok=True)
    with serve(cfg.model, n_ctx=cfg.n_ctx, log_path=logs_dir / "teacher-server.log") as url:
        yield cfg.model_copy(update={"base_url": url})


class Asker:
    """Rounds of requests to the teacher; answers go to ``cache`` (key → record) and the log."""

    def __init__(self, log_file: Any, cfg: TeacherConfig, cache: dict[str, dict[str, Any]], logs_dir: Any,
                 stack: contextlib.ExitStack):
        self.f, self.cfg, self.cache, self.logs_dir, self.stack = log_file, cfg, cache, logs_dir, stack
        self.failures: dict[str, str] = {}
        self.asked = self.reused = self.retries = self.tokens = 0
        self.seconds = 0.0
        self._asking: TeacherConfig | None = None

    def ask(self, requests: list[Request], label: str) -> None:
        """Answer every request the log does not hold yet (duplicates asked once)."""
        todo = list({r.key: r for r in requests if r.key not in self.cache}.values())
        self.reused += len(requests) - len(todo)
        if not todo:
            return
        if self._asking is None:  # the server (teacher.serve) starts with the first real request
            self._asking = self.stack.enter_context(served(self.cfg, self.logs_dir))
        session = _Session(self, len(todo), label)
        try:
            backend_module(self.cfg.backend).answer_all(self._asking, todo, session)
        except EndpointError as err:
            have = sum(1 for r in requests if r.key in self.cache)
            raise type(err)(err.message, hint=(err.hint + "\n" if err.hint else "") + (
                f"{have} of {len(requests)} answers are kept in the resume log; run the same command "
                "again to resume with the rest.")) from None
        finally:
            session.close()
        self.asked += len(todo)


class _Session:
    """Receives one round's answers from a backend: logs each at once, drives the progress bar."""

    def __init__(self, asker: Asker, total: int, label: str):
        from tqdm import tqdm

        self.asker, self.cfg = asker, asker.cfg
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.bar = tqdm(total=total, desc=f"teacher: {label}", unit="ans", dynamic_ncols=True,
                        disable=None)  # no bar in logs (not a terminal); the summary line stays
        log.info("teacher: %s, %d request(s)", label, total)

    def answer(self, a: Answer) -> None:
        rec = {
            "key": a.request.key, "id": a.request.id, "response": a.text, "finish_reason": a.finish_reason,
            "usage": {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens},
            "model": self.cfg.model, "backend": self.cfg.backend, "endpoint": a.endpoint,
            "params": a.request.params, "messages": a.request.messages, "latency_s": round(a.latency_s, 4),
            "retries": a.retries, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **a.extra,
        }
        if a.logprobs is not None:
            rec["logprobs"] = a.logprobs
        append_jsonl(self.asker.f, rec)
        self.asker.cache[a.request.key] = rec
        self.tokens += a.completion_tokens or 0
        self._tick()

    def failed(self, request: Request, reason: str) -> None:
        log.warning("prompt %s: %s", request.id, reason)
        self.asker.failures[request.key] = reason
        self._tick()

    def retry(self, reason: str) -> None:
        log.debug("retrying: %s", reason)
        self.asker.retries += 1
        self._tick(0)

    def _tick(self, n: int = 1) -> None:
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(retries=self.asker.retries, tok_s=f"{rate:.0f}", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.asker.seconds += time.perf_counter() - self.t0
        self.asker.tokens += self.tokens
        self.bar.close()
