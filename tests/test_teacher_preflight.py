"""A teacher endpoint nobody can connect to fails fast (issue 15, part 7): the openai backend's
preflight (GET /models) turns a refused connection or an unknown host on every endpoint into exit
2 within seconds, while a server that answers -- busy (5xx) or behind a flaky proxy -- still gets
the normal retries. Real servers on loopback: llama.cpp's OpenAI-compatible server, a proxy in
front of it, and a server that answers 503 to everything."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.cli import cli
from edgedistill.data import read_jsonl
from edgedistill.teacher.backends.openai import unreachable
from servers import FaultProxy, closed_port_url, llama_server

PROMPTS = [{"id": f"p{i}", "prompt": f"What is {i} + 1? Reply with the number only.", "answer": str(i + 1)}
           for i in range(3)]


def generate(recipe, run_dir):
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(run_dir)])
    return result, time.monotonic() - t0


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server(smollm2_gguf) -> Iterator[str]:
    with llama_server(smollm2_gguf, threads=1) as url:
        yield url


@contextlib.contextmanager
def busy_server() -> Iterator[tuple[str, list[str]]]:
    """Accepts every connection and answers 503 to every request (a server that is up, but busy)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _busy(self) -> None:
            seen.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b'{"error": {"message": "overloaded"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _busy

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_refused_connection_exits_2_within_seconds(tmp_path):
    url = closed_port_url()
    # the defaults: 6 retries, 120 s timeout -- which took 66 s before the preflight
    recipe = write_recipe(tmp_path / "r", prompts=PROMPTS, teacher={"base_url": url})
    result, seconds = generate(recipe, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert seconds < 5
    assert f"cannot be reached: {url}: connection refused" in result.stderr
    assert "Traceback" not in result.output
    assert last_json(result)["exit_code"] == 2 and url in last_json(result)["error"]
    assert read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl") == []


def test_unknown_host_exits_2_within_seconds(tmp_path):
    recipe = write_recipe(tmp_path / "r", prompts=PROMPTS,
                          teacher={"base_url": ["http://no-such-host.invalid/v1", closed_port_url()]})
    result, seconds = generate(recipe, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert seconds < 15
    assert "http://no-such-host.invalid/v1: the host name does not resolve" in result.stderr
    assert "endpoints cannot be reached" in result.stderr


def test_a_busy_server_still_gets_its_retries(tmp_path):
    with busy_server() as (url, seen):
        recipe = write_recipe(tmp_path / "r", prompts=PROMPTS[:1], data={"eval_fraction": 0.0},
                              teacher={"base_url": url, "max_retries": 2, "concurrency": 1})
        result, _ = generate(recipe, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "failed 3 tries" in result.stderr and "HTTP 503" in result.stderr
    assert seen[0] == "GET /v1/models"  # the preflight, answered: reachable
    assert seen.count("POST /v1/chat/completions") == 3  # then the request and its 2 retries


def test_real_server_next_to_a_refused_one(server, tmp_path):
    proxy = FaultProxy(server, faults=["500"])  # and the live one fails once: a retry, not a stop
    with proxy.running():
        recipe = write_recipe(tmp_path / "r", prompts=PROMPTS, data={"eval_fraction": 0.0}, teacher={
            "base_url": [closed_port_url(), proxy.url], "max_tokens": 8, "temperature": 0.0,
            "max_retries": 3, "concurrency": 1, "min_success_ratio": 0.0})
        result, _ = generate(recipe, tmp_path / "run")
    assert result.exit_code == 0, result.output
    log = read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl")
    assert len(log) == 3 and {r["endpoint"] for r in log} == {proxy.url}
    assert proxy.hits[0].path == "/v1/models" and proxy.hits[0].outcome == "pass"
    assert [h.outcome for h in proxy.hits if h.path.endswith("/chat/completions")][0] == "500"
    assert last_json(result) == {**last_json(result), "command": "generate", "exit_code": 0, "ok": True}


def test_unreachable_reads_the_cause_of_real_socket_errors():
    port = int(closed_port_url().split(":")[2].split("/")[0])
    with pytest.raises(OSError) as refused:
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert unreachable(refused.value) == "connection refused"
    with pytest.raises(socket.gaierror) as dns:
        socket.getaddrinfo("no-such-host.invalid", 80)
    assert unreachable(dns.value).startswith("the host name does not resolve")
    wrapped = RuntimeError("Connection error.")
    wrapped.__cause__ = refused.value  # as openai wraps httpx wraps the socket error
    assert unreachable(wrapped) == "connection refused"
    assert unreachable(TimeoutError("timed out")) is None
