"""Real servers for teacher tests: llama.cpp's OpenAI-compatible server on loopback (through
edgedistill's own ``serve``), and a small fault-injecting HTTP proxy in front of it that answers
429/500, drops connections, or stops accepting them, on a script."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from edgedistill.teacher.serve import free_port, serve


@contextlib.contextmanager
def llama_server(gguf: Path, threads: int = 1, log_path: Path | None = None) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving ``gguf`` on 127.0.0.1; yields its /v1 base URL."""
    with serve(str(gguf), n_ctx=512, threads=threads, log_path=log_path, timeout_s=120) as url:
        yield url


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


@dataclass
class Hit:
    at: float
    path: str
    outcome: str  # an HTTP status ("429", "500", ...), "drop", "slow" or "pass"


@dataclass
class FaultProxy:
    """Forwards to ``upstream``; the n-th POST gets ``faults[n]`` when there is one (an HTTP
    status such as "429" or "500", "drop", "slow", or None for a pass-through); after
    ``die_after`` forwarded POSTs, every later request has its connection dropped unanswered."""

    upstream: str
    faults: list[str | None] = field(default_factory=list)
    retry_after: str = "1"
    slow_s: float = 3.0
    die_after: int | None = None
    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._posts = 0
        self._forwarded = 0

    def _next(self) -> str | None:
        with self._lock:
            if self.die_after is not None and self._forwarded >= self.die_after:
                return "drop"
            n = self._posts
            self._posts += 1
            fault = self.faults[n] if n < len(self.faults) else None
            if fault is None:
                self._forwarded += 1
            return fault

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._next() if method == "POST" else None
                proxy.hits.append(Hit(time.monotonic(), self.path, fault or "pass"))
                if fault == "slow":  # answer nothing for longer than the client waits, then hang up
                    time.sleep(proxy.slow_s)
                    fault = "drop"
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault.isdigit():
                    headers = {"Content-Type": "application/json"}
                    if fault == "429":
                        headers["Retry-After"] = proxy.retry_after
                    msg = b'{"error": {"message": "injected fault", "type": "server_error"}}'
                    self._reply(int(fault), msg, headers)
                    return
                req = urllib.request.Request(proxy.upstream.rstrip("/") + self.path.removeprefix("/v1"),
                                             data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as resp:
                        self._reply(resp.status, resp.read(), {"Content-Type": "application/json"})
                except urllib.error.HTTPError as err:
                    self._reply(err.code, err.read(), {"Content-Type": "application/json"})

            def do_POST(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                    self._forward("POST")

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._forward("GET")

        return Handler

    @contextlib.contextmanager
    def running(self) -> Iterator["FaultProxy"]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
