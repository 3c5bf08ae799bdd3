"""The OpenAI-compatible HTTP side of ``edgedistill serve`` (FastAPI on uvicorn, both brought by
``llama-cpp-python[server]``): ``GET /v1/models``, ``POST /v1/chat/completions`` (streamed as
server-sent events with ``"stream": true``), ``GET /health``.

A request's messages go through the artifact's own chat template (``Runtime.chat_prompt_ids``)
into the engine (:mod:`edgedistill.serve.engine`); its tokens come back from the engine's thread
through ``loop.call_soon_threadsafe``. ``temperature`` defaults to 0 (greedy, as eval scored the
artifact); ``max_tokens`` is cut to what the request's share of the context holds; ``stop`` strings
end a reply early. With an API key, every /v1 route wants ``Authorization: Bearer <key>`` (401
otherwise); the key is compared in constant time and never logged.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)
import asyncio
import contextlib
import errno
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from typing import Any, Iterator

from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.serve.engine import Ticket

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


class _Text:
    """A reply's text as its tokens arrive: whole characters only (a token may end inside a UTF-8
    sequence), held back where a ``stop`` string could still begin, cut at the first stop."""

    def __init__(self, rt: Any, stops: list[str]):
        self.rt, self.stops, self.ids, self.sent = rt, [s for s in stops if s], [], 0
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.stopped = False

    def _cut(self, text: str) -> str:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return text[:min(hits)]
        return text

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.rt.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        text = self._cut(text)
        safe = len(text) if self.stopped else len(text) - self.hold
        delta = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta

    def finish(self, text: str) -> str:
        """The rest of the reply once it is done (``text``: all its tokens decoded)."""
        text = self._cut(text)
        delta = text[self.sent:]
        self.sent = len(text)
        return delta

    def final(self, text: str) -> str:
        return self._cut(text)


def _params(body: Any, engine: Any) -> dict[str, Any]:
    """The request's parameters, checked (a ConfigError says what is wrong: 400)."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise ConfigError("messages must be a non-empty list of {role, content} objects")
    for m in messages:  # content as a list of text parts (newer clients) becomes one string
        if isinstance(m.get("content"), list):
            m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    temperature = body.get("temperature")
    stop = body.get("stop") or []
    n = body.get("n") or 1
    top_logprobs = body.get("top_logprobs")
    logprobs = bool(body.get("logprobs"))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError("max_tokens must be a positive integer")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
        raise ConfigError("temperature must be a number >= 0")
    if not isinstance(n, int) or n < 1:
        raise ConfigError("n must be a positive integer")
    if logprobs and not engine.batching:
        raise ConfigError(f"logprobs: a {engine.rt.kind} artifact is served without them")
    stream = bool(body.get("stream"))
    if stream and n > 1:
        raise ConfigError("n > 1 is not streamed; ask without stream")
    return {"messages": messages, "max_tokens": max_tokens, "temperature": float(temperature or 0.0),
            "top_p": body.get("top_p"), "seed": int(body.get("seed") or 0), "n": n,
            "stop": [stop] if isinstance(stop, str) else list(stop), "stream": stream,
            "logprobs": max(1, int(top_logprobs or 1)) if logprobs else None,
            "top_logprobs": int(top_logprobs or 0),
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage"))}


def _logprobs(entries: list[dict] | None, k: int) -> dict[str, Any] | None:
    if entries is None:
        return None
    keep = ("token", "logprob", "bytes")
    return {"content": [{**{x: e[x] for x in keep},
                         "top_logprobs": [{x: t[x] for x in keep} for t in e["top_logprobs"][:k]]}
                        for e in entries]}


def make_app(engine: Any, model_id: str, *, api_key: str | None = None, info: dict | None = None):
    """The FastAPI app serving ``engine`` (its runtime's chat template) as model ``model_id``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    rt = engine.rt
    app = FastAPI(title="edgedistill serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def denied(request: Request):
        if api_key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
            return None
        return _error(401, "Missing or wrong API key: send the header `Authorization: Bearer <key>`.",
                      "invalid_request_error", "invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        if (no := denied(request)) is not None:
            return no
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "edgedistill", **(info or {})}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if (no := denied(request)) is not None:
            return no
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        try:
            p = _params(body, engine)
        except ConfigError as e:
            return _error(400, e.message)
        try:
            prompt = rt.chat_prompt_ids(p["messages"])
        except Exception as e:  # noqa: BLE001 -- a template that refuses these messages: the client's 400
            return _error(400, f"the chat template cannot render these messages: {e}")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is stopping
                loop.call_soon_threadsafe(events.put_nowait, item)

        watch = p["stream"] or bool(p["stop"])
        ticket = Ticket(prompt, p["max_tokens"], temperature=p["temperature"], top_p=p["top_p"],
                        seed=p["seed"], n=p["n"], logprobs=p["logprobs"],
                        on_token=(lambda i, tok: put(("token", i, tok))) if watch else None,
                        on_done=lambda comps, err: put(("done", comps, err)))
        try:
            engine.submit(ticket)
        except ConfigError as e:
            return _error(400, e.message)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if p["stream"]:
            return StreamingResponse(_stream(ticket, events, rt, p, rid, model_id, len(prompt)),
                                     media_type="text/event-stream")
        text = _Text(rt, p["stop"])
        while True:
            kind, a, b = await events.get()
            if kind == "token":
                if a == 0:
                    text.push(b)
                    if text.stopped:
                        ticket.cancel()
                        comps = [None]
                        break
                continue
            if b or not a:
                return _error(500, f"generation failed: {b or 'cancelled'}", "server_error")
            comps = a
            break
        if comps == [None]:  # a stop string ended it
            choices = [{"index": 0, "message": {"role": "assistant", "content": text.final(rt.decode(text.ids))},
                        "finish_reason": "stop", "logprobs": None}]
            used = len(text.ids)
        else:
            choices = [{"index": i, "message": {"role": "assistant", "content": text.final(c.text)},
                        "finish_reason": "length" if c.finish_reason == "length" else "stop",
                        "logprobs": _logprobs(c.logprobs, p["top_logprobs"]) if p["logprobs"] else None}
                       for i, c in enumerate(comps)]
            used = sum(len(c.token_ids) for c in comps)
        return JSONResponse({"id": rid, "object": "chat.completion", "created": int(time.time()),
                             "model": model_id, "choices": choices,
                             "usage": {"prompt_tokens": len(prompt), "completion_tokens": used,
                                       "total_tokens": len(prompt) + used}})

    return app


async def _stream(ticket: Ticket, events: asyncio.Queue, rt: Any, p: dict, rid: str, model_id: str,
                  prompt_len: int):
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    text = _Text(rt, p["stop"])
    finish = "stop"
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, a, b = await events.get()
            if kind == "token":
                delta = text.push(b)
                if delta:
                    yield chunk({"content": delta})
                if text.stopped:
                    ticket.cancel()
                    break
                continue
            if b or not a:
                why = f"generation failed: {b}" if b else "the request was cancelled"
                yield f"data: {json.dumps({'error': {'message': why, 'type': 'server_error'}})}\n\n"
                return
            c = a[0]
            rest = text.finish(c.text)
            if rest:
                yield chunk({"content": rest})
            finish = "length" if c.finish_reason == "length" and not text.stopped else "stop"
            break
        yield chunk({}, finish)
        if p["include_usage"]:
            used = len(text.ids)
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": [], "usage": {"prompt_tokens": prompt_len, "completion_tokens": used,
                                             "total_tokens": prompt_len + used}}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        ticket.cancel()  # a client that went away frees its slot at the next token


def listen(bind: str, port: int) -> socket.socket:
    """A listening socket on ``bind``:``port`` (0: a free port); exit 2 when the port is taken."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EdgeDistillError(f"Port {port} on {bind} is in use.",
                                   hint="Stop what listens there, or pick another port with --port N "
                                        "(--port 0 takes a free one).") from None
        raise ConfigError(f"Cannot listen on {bind}:{port}: {e.strerror or e}.",
                          hint="--bind takes an address of this machine (127.0.0.1 by default).") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"


def _server(app: Any):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                         timeout_graceful_shutdown=2))


def run_forever(app: Any, sock: socket.socket) -> None:
    """Serve until Ctrl-C or SIGTERM, either a normal stop (uvicorn runs in a thread, so it
    neither takes the signals nor re-raises them at exit)."""
    import signal

    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running(app, sock):
            while not stop.wait(0.5):
                pass
            log.info("stopping")
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def running(app: Any, sock: socket.socket, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on ``sock`` from a thread of this process (the concurrency bench, tests);
    yields the /v1 base URL."""
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise EdgeDistillError("the loopback server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
