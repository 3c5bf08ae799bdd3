"""Any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, TGI, llama.cpp server, Ollama)
through the official ``openai`` AsyncOpenAI client.

``teacher.base_url`` may be a list: requests go to the endpoint with the fewest in flight; an
endpoint that fails is taken out of rotation for a cool-down that doubles with each failure (or
for as long as its Retry-After says) and is tried again after it. Retries (tenacity: exponential
backoff with jitter, Retry-After honoured) cover 408/409/429/5xx, dropped connections and
timeouts; the openai client's own retries are off so that a retry can move to another endpoint.
A request that still fails after ``teacher.max_retries`` retries, or a refused key, stops the run
with an ``EndpointError`` (exit 2); every answer received before is already in the resume log.

Before the first request, each endpoint gets one cheap preflight (``GET {base_url}/models``, a
short connect timeout): when every endpoint refuses the connection or its host name does not
resolve, the run stops at once (exit 2) instead of spending minutes on retries. Any answer at all,
an error status, a timeout or a dropped connection counts as reachable: a busy server still gets
its retries.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError, EndpointError
from edgedistill.teacher import Answer, Request, Sink, compact_logprobs

log = logging.getLogger(__name__)

RETRY_STATUS = (408, 409, 429)
PREFLIGHT_CONNECT_S = 3.0
PREFLIGHT_TOTAL_S = 10.0
UNREACHABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
MAX_COOLDOWN_S = 60.0
MAX_RETRY_AFTER_S = 300.0


def endpoints_of(cfg: TeacherConfig) -> list[str]:
    urls = [cfg.base_url] if isinstance(cfg.base_url, str) else list(cfg.base_url or [])
    if not urls:
        raise ConfigError(
            "teacher.base_url is not set: the openai backend needs an OpenAI-compatible endpoint.",
            hint="Set it in the recipe or with --set teacher.base_url=http://HOST:PORT/v1 (a list "
            "spreads requests over several servers), or use teacher.serve: true to serve a local GGUF.")
    return [u.rstrip("/") for u in urls]


def shown(url: str) -> str:
    """An endpoint as it may be written down: no user, password or query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def api_key(cfg: TeacherConfig) -> str:
    if not cfg.api_key_env:
        return "no-key"  # local servers (llama.cpp, vLLM without --api-key) accept anything
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"teacher.api_key_env is {cfg.api_key_env}, but ${cfg.api_key_env} is not set.",
            hint=f"export {cfg.api_key_env}=YOUR_KEY and run again (the key is read from the "
            "environment only and never written to the run).")
    return key


@dataclass
class Endpoint:
    url: str
    client: Any  # openai.AsyncOpenAI
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    answered: int = 0


class Pool:
    """Endpoints in rotation: the least busy one that is up; when all are down, the one back first."""

    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = endpoints
        self._turn = itertools.count()

    def pick(self) -> Endpoint:
        now = time.monotonic()
        up = [e for e in self.endpoints if e.down_until <= now]
        if not up:
            return min(self.endpoints, key=lambda e: e.down_until)
        least = min(e.in_flight for e in up)
        ready = [e for e in up if e.in_flight == least]
        return ready[next(self._turn) % len(ready)]

    def others_up(self, than: Endpoint) -> bool:
        now = time.monotonic()
        return any(e is not than and e.down_until <= now for e in self.endpoints)

    def succeeded(self, e: Endpoint) -> None:
        if e.failures and len(self.endpoints) > 1:
            log.info("%s answers again; back in rotation", shown(e.url))
        e.failures, e.down_until = 0, 0.0
        e.answered += 1

    def failed(self, e: Endpoint, retry_after: float | None, reason: str) -> None:
        now = time.monotonic()
        if now < e.down_until:  # another request saw the same outage: no longer a cool-down
            if retry_after is not None:
                e.down_until = max(e.down_until, now + retry_after)
            return
        e.failures += 1
        pause = min(0.5 * 2 ** (e.failures - 1), MAX_COOLDOWN_S)
        if retry_after is not None:
            pause = max(pause, retry_after)
        e.down_until = now + pause
        if len(self.endpoints) > 1:
            log.warning("%s out of rotation for %.1f s (%s)", shown(e.url), pause, reason)


class _Retryable(Exception):
    def __init__(self, endpoint: Endpoint, reason: str, retry_after: float | None):
        super().__init__(reason)
        self.endpoint, self.reason, self.retry_after = endpoint, reason, retry_after


class _Failed(Exception):
    """The endpoint refused this request alone (e.g. 400); the run goes on."""


def retry_after_s(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    import email.utils

    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, min(float(raw) * scale, MAX_RETRY_AFTER_S))
        except ValueError:
            parsed = email.utils.parsedate_tz(raw)
            if parsed is not None:
                return max(0.0, min(email.utils.mktime_tz(parsed) - time.time(), MAX_RETRY_AFTER_S))
    return None


def _cause(err: BaseException) -> str:
    inner = err.__cause__ or err.__context__
    return f"{err}" + (f" ({inner})" if inner and str(inner) and str(inner) != str(err) else "")


def _classify(err: Exception, ep: Endpoint, cfg: TeacherConfig) -> Exception:
    """An openai exception as _Retryable, _Failed or a run-stopping EndpointError."""
    import openai

    where = shown(ep.url)
    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return _Retryable(ep, f"{type(err).__name__}: {_cause(err)}", None)
    if not isinstance(err, openai.APIStatusError):
        return _Failed(f"{type(err).__name__}: {err}")
    status = err.status_code
    if status in RETRY_STATUS or status >= 500:
        return _Retryable(ep, f"HTTP {status}", retry_after_s(err.response.headers))
    if status in (401, 403):
        return EndpointError(
            f"{where} refused the credentials (HTTP {status}).",
            hint=(f"Check the key in ${cfg.api_key_env}." if cfg.api_key_env else
                  "No key was sent: set teacher.api_key_env to the NAME of the variable holding it."))
    if status == 404:
        return EndpointError(
            f"{where} answered 404 for model {cfg.model!r}: the model or the URL is wrong.",
            hint="Check teacher.model and teacher.base_url (it usually ends in /v1); "
            f"`curl {where}/models` lists the models the endpoint serves.")
    message = str(getattr(err, "message", err))
    if cfg.logprobs and "logprob" in message.lower():
        return EndpointError(f"{where} does not support logprobs: {message}",
                             hint="Unset teacher.logprobs (--set teacher.logprobs=null).")
    return _Failed(f"HTTP {status}: {message[:200]}")


def unreachable(err: BaseException) -> str | None:
    """Why ``err`` (or an exception it was raised from) says nobody can be connected to: a refused
    connection, no route, a host name that does not resolve; None for anything else (a timeout,
    a dropped connection, an HTTP status: the server is there, perhaps busy)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return f"the host name does not resolve ({e.strerror or e})"
        if isinstance(e, OSError) and e.errno in UNREACHABLE:
            return os.strerror(e.errno).lower()
        e = e.__cause__ or e.__context__
    return None


async def preflight(endpoints: list[Endpoint]) -> None:
    """One ``GET /models`` per endpoint; an EndpointError when not one of them can be connected to.
    An endpoint that refuses while others answer stays in rotation (it may come back)."""
    import openai

    timeout = openai.Timeout(PREFLIGHT_TOTAL_S, connect=PREFLIGHT_CONNECT_S)

    async def probe(e: Endpoint) -> str | None:
        try:
            await e.client.with_options(timeout=timeout, max_retries=0).models.list()
        except openai.APIConnectionError as err:  # includes timeouts (reachable: left to retries)
            return unreachable(err)
        except openai.OpenAIError:  # an HTTP status or an odd body: something answered
            return None
        return None

    reasons = await asyncio.gather(*(probe(e) for e in endpoints))
    down = {shown(e.url): r for e, r in zip(endpoints, reasons) if r}
    if len(down) == len(endpoints):
        listed = "; ".join(f"{url}: {why}" for url, why in down.items())
        raise EndpointError(
            f"The teacher endpoint{'s' if len(down) > 1 else ''} cannot be reached: {listed}.",
            hint="Start the server, or fix teacher.base_url (host, port, and the /v1 path "
                 "prefix); `curl URL/models` should list the served models.")
    for url, why in down.items():
        log.warning("%s cannot be reached (%s); the other endpoints take its requests", url, why)


def _request_kwargs(req: Request) -> dict[str, Any]:
    p = req.params
    kw: dict[str, Any] = {"temperature": p["temperature"], "max_tokens": p["max_tokens"]}
    if p.get("top_p") is not None:
        kw["top_p"] = p["top_p"]
    if p.get("seed") is not None:
        kw["seed"] = p["seed"]
    if p.get("logprobs"):
        kw["logprobs"] = True
        kw["top_logprobs"] = p["logprobs"]
    return kw


def _logprobs_of(choice: Any, cfg: TeacherConfig, where: str) -> list[dict[str, Any]] | None:
    if not cfg.logprobs:
        return None
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        if choice.message.content:
            raise EndpointError(
                f"{where} returned no logprobs although teacher.logprobs={cfg.logprobs} asked for them.",
                hint="This endpoint does not support logprobs: unset teacher.logprobs "
                "(--set teacher.logprobs=null) or use an endpoint that does (vLLM, OpenAI).")
        return compact_logprobs([])
    return compact_logprobs([t.model_dump() for t in content])


class _Runner:
    def __init__(self, cfg: TeacherConfig, sink: Sink):
        import openai

        self.cfg, self.sink = cfg, sink
        key = api_key(cfg)
        timeout = openai.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s))
        self.pool = Pool([Endpoint(url, openai.AsyncOpenAI(base_url=url, api_key=key, timeout=timeout,
                                                            max_retries=0))
                          for url in endpoints_of(cfg)])
        self.fatal: BaseException | None = None

    def _stop(self, state: Any) -> bool:
        return self.fatal is not None or state.attempt_number > self.cfg.max_retries

    def _wait(self, state: Any) -> float:
        err = state.outcome.exception()
        if isinstance(err, _Retryable) and self.pool.others_up(err.endpoint):
            return 0.0  # another endpoint is up: go there now
        if isinstance(err, _Retryable) and err.retry_after is not None:
            return err.retry_after * random.uniform(1.0, 1.1)
        base = min(0.5 * 2 ** (state.attempt_number - 1), 30.0)
        return base * random.uniform(0.75, 1.25)

    def _before_sleep(self, state: Any) -> None:
        err = state.outcome.exception()
        self.sink.retry(getattr(err, "reason", str(err)))

    async def _attempt(self, req: Request) -> Answer:
        ep = self.pool.pick()
        now = time.monotonic()
        if ep.down_until > now:  # every endpoint is cooling down: wait for the first one back
            await asyncio.sleep(ep.down_until - now)
        ep.in_flight += 1
        t0 = time.perf_counter()
        try:
            resp = await ep.client.chat.completions.create(
                model=self.cfg.model, messages=req.messages, **_request_kwargs(req))
        except Exception as err:  # openai raises its own hierarchy; _classify sorts it
            kind = _classify(err, ep, self.cfg)
            if isinstance(kind, _Retryable):
                self.pool.failed(ep, kind.retry_after, kind.reason)
            raise kind from err
        finally:
            ep.in_flight -= 1
        latency = time.perf_counter() - t0
        if not resp.choices:
            raise _Failed("the endpoint returned no choices")
        self.pool.succeeded(ep)
        choice = resp.choices[0]
        usage = resp.usage
        return Answer(
            request=req, text=choice.message.content, finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            endpoint=shown(ep.url), latency_s=latency,
            logprobs=_logprobs_of(choice, self.cfg, shown(ep.url)),
            extra={"served_model": resp.model} if resp.model and resp.model != self.cfg.model else {},
        )

    async def _one(self, req: Request) -> None:
        from tenacity import AsyncRetrying, retry_if_exception_type

        retrying = AsyncRetrying(stop=self._stop, wait=self._wait, before_sleep=self._before_sleep,
                                 retry=retry_if_exception_type(_Retryable), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    answer = await self._attempt(req)
                    answer.retries = attempt.retry_state.attempt_number - 1
        except _Failed as err:
            self.sink.failed(req, f"request_failed: {err}")
            return
        except _Retryable as err:
            if self.fatal is None:
                urls = ", ".join(shown(e.url) for e in self.pool.endpoints)
                self.fatal = EndpointError(
                    f"The teacher endpoint ({urls}) failed {self.cfg.max_retries + 1} tries for "
                    f"prompt {req.id}: {err.reason.rstrip('.')}.",
                    hint="Check that the server is up and the URL is right (teacher.base_url); "
                    "raise teacher.max_retries or teacher.timeout_s for a slow or busy server.")
            return
        self.sink.answer(answer)

    async def _worker(self, todo: Any) -> None:
        for req in todo:
            if self.fatal is not None:
                return
            try:
                await self._one(req)
            except Exception as err:  # an EndpointError, or a bug: stop every worker, raise it after
                if self.fatal is None:
                    self.fatal = err
                return

    async def run(self, requests: list[Request]) -> None:
        todo = iter(requests)
        try:
            await preflight(self.pool.endpoints)
            n = max(1, min(self.cfg.concurrency, len(requests)))
            await asyncio.gather(*(self._worker(todo) for _ in range(n)))
        finally:
            for e in self.pool.endpoints:
                await e.client.close()
        if self.fatal is not None:
            raise self.fatal
        for e in self.pool.endpoints:
            log.debug("%s answered %d request(s)", shown(e.url), e.answered)


def answer_all(cfg: TeacherConfig, requests: list[Request], sink: Sink) -> None:
    if not requests:
        return
    runner = _Runner(cfg, sink)
    asyncio.run(runner.run(requests))
