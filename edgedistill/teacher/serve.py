"""``teacher.serve: true``: serve the teacher GGUF with llama.cpp's OpenAI-compatible server on
127.0.0.1 for the length of ``generate``, so a local teacher goes through the same client path
as a remote API. The server's log goes to RUN/logs/teacher-server.log."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from edgedistill.errors import EndpointError, NotAvailable

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout_s: float = 180.0) -> None:
    """Poll ``base_url/models`` until it answers 200; fail when the process exits or time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EndpointError(f"The llama.cpp server exited with code {proc.returncode} while starting.")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                if resp.status == 200:
                    json.load(resp)
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    raise EndpointError(f"The llama.cpp server at {base_url} did not answer within {timeout_s:.0f} s.")


def server_command(model_path: Path, port: int, alias: str, n_ctx: int,
                   threads: int | None = None) -> list[str]:
    from edgedistill.runtimes.llama_cpp import server_flags

    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
            "--port", str(port), "--model_alias", alias, "--verbose", "False",
            *server_flags(threads=threads, n_ctx=n_ctx)]


@contextlib.contextmanager
def serve(model_ref: str, *, n_ctx: int = 2048, log_path: Path | None = None,
          threads: int | None = None, timeout_s: float = 180.0) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` for the GGUF ``model_ref`` (a path or ``pypi:NAME``)
    on a free loopback port; yield its base URL; stop it afterwards."""
    import importlib.util

    from edgedistill.teacher.backends.gguf import gguf_path

    if importlib.util.find_spec("llama_cpp") is None:
        raise NotAvailable("teacher.serve needs llama-cpp-python[server], which is not installed.",
                           hint="Install it with scripts/install.sh (it compiles llama.cpp).")
    path = gguf_path(model_ref)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = server_command(path, port, model_ref, n_ctx, threads)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    log.info("serving %s with llama.cpp at %s", path.name, base_url)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_ready(base_url, proc, timeout_s)
        except EndpointError as err:
            where = f" See {log_path}." if log_path else ""
            raise EndpointError(f"{err.message}{where}", hint=f"The command was: {' '.join(cmd)}") from None
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            out.close()
