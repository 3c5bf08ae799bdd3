"""``edgedistill serve`` on a tiny GGUF artifact of a run, on loopback, as a real subprocess: the
official openai client gets answers (whole and streamed, the same greedy text as the runtime
alone), concurrent requests are all answered by the batching engine, the API key is enforced and
never logged, bad input exits 2, and a second run's ``generate`` uses the server as its teacher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.cli import cli
from edgedistill.data import read_jsonl
from edgedistill.teacher.serve import free_port
from test_bench import gguf_artifact, make_run

KEY = "sk-edgedistill-test-0123456789"
QUESTIONS = ["What is 2 + 2?", "Name a colour.", "Capital of France?", "Say hello.", "Is ice cold?",
             "Count to three.", "Which is larger, 4 or 9?", "Why?"]


def _wait(url: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not start")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_gguf):
    """A run with the tiny GGUF as its only artifact, served with an API key on a free port."""
    run = make_run(tmp_path_factory.mktemp("serve"))
    gguf_artifact(run, tiny_gguf, "f32")
    port = free_port()
    env = {**os.environ, "EDGE_SERVE_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill.cli", "serve", str(run.root), "--port",
                             str(port), "--slots", "4", "--context", "256", "--threads", "1",
                             "--api-key-env", "EDGE_SERVE_KEY"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, proc)
        yield run, f"{base}/v1", proc
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert KEY not in out + err  # the key is never logged
    assert proc.returncode == 0 and json.loads(out.strip().splitlines()[-1])["served"] == "gguf-f32"


def _client(url: str, key: str = KEY):
    import openai

    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def _ask(client, q: str, **kw) -> object:
    return client.chat.completions.create(model="gguf-f32", max_tokens=12, temperature=0,
                                          messages=[{"role": "user", "content": q}], **kw)


def test_openai_client_whole_and_streamed(served, tiny_gguf):
    from edgedistill.runtimes.llama_cpp import LlamaCppRuntime

    _, url, _ = served
    client = _client(url)
    assert [m.id for m in client.models.list().data] == ["gguf-f32"]
    whole = _ask(client, QUESTIONS[0])
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length") and whole.usage.completion_tokens > 0
    with LlamaCppRuntime(tiny_gguf, threads=1) as rt:  # the artifact alone, greedy
        alone = rt.generate([{"role": "user", "content": QUESTIONS[0]}], 12)
    assert choice.message.content == alone.text and whole.usage.completion_tokens == len(alone.token_ids)
    assert whole.usage.prompt_tokens == len(alone.prompt_ids)
    parts = list(_ask(client, QUESTIONS[0], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == alone.text
    assert [c.choices[0].finish_reason for c in parts if c.choices][-1] == choice.finish_reason
    assert parts[-1].usage.completion_tokens == whole.usage.completion_tokens
    stop = alone.text.strip()[1:3]  # a stop string inside the greedy answer ends it there
    cut = alone.text[:alone.text.find(stop)]
    assert _ask(client, QUESTIONS[0], stop=[stop]).choices[0].message.content == cut
    streamed = _ask(client, QUESTIONS[0], stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def test_serial_engine_on_loopback(tiny_gguf):
    """The one-request-at-a-time engine (ORT GenAI and ONNX artifacts use it) behind the same app:
    concurrent requests wait their turn and get the runtime's own greedy answers."""
    import openai

    from edgedistill.runtimes.llama_cpp import LlamaCppRuntime
    from edgedistill.serve.app import listen, make_app, running
    from edgedistill.serve.engine import SerialEngine

    with LlamaCppRuntime(tiny_gguf, threads=1) as rt:
        alone = [rt.generate([{"role": "user", "content": q}], 12).text for q in QUESTIONS[:4]]
        engine = SerialEngine(rt, slots=1, context=256)
        try:
            with running(make_app(engine, "serial"), listen("127.0.0.1", 0)) as url:
                client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
                with ThreadPoolExecutor(4) as pool:
                    got = list(pool.map(lambda q: _ask(client, q).choices[0].message.content, QUESTIONS[:4]))
                with pytest.raises(openai.BadRequestError):  # one answer per request here
                    _ask(client, "hi", n=2)
        finally:
            engine.close()
    assert got == alone


def test_concurrent_requests_all_answered(served):
    _, url, _ = served
    client = _client(url)
    one_by_one = [_ask(client, q).choices[0].message.content for q in QUESTIONS]
    with ThreadPoolExecutor(8) as pool:  # twice the slots: some wait for a free one
        together = list(pool.map(lambda q: _ask(client, q).choices[0].message.content, QUESTIONS * 2))
    assert together == one_by_one * 2  # greedy: batching changes no answer


def test_api_key_required(served):
    import openai

    _, url, proc = served
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        _ask(_client(url, "wrong"), "hi")
    req = urllib.request.Request(url + "/models")  # no header at all
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    assert KEY not in json.dumps(err.value.read().decode())


def test_bad_requests_are_400(served):
    _, url, _ = served
    req = urllib.request.Request(url + "/chat/completions", data=b'{"messages": []}', method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400 and "messages" in err.value.read().decode()


def test_served_student_as_a_teacher(served, tmp_path):
    """A second run's generate with the server as its OpenAI-compatible teacher."""
    _, url, _ = served
    prompts = [{"id": f"p{i}", "prompt": q} for i, q in enumerate(QUESTIONS[:4])]
    recipe = write_recipe(tmp_path / "r", prompts=prompts, data={"eval_fraction": 0.25}, teacher={
        "backend": "openai", "model": "gguf-f32", "base_url": url, "api_key_env": "EDGE_SERVE_KEY",
        "max_tokens": 8, "temperature": 0.0, "concurrency": 4, "min_success_ratio": 0.0,
        "accept_finish_reasons": ["stop", "length"]})
    os.environ["EDGE_SERVE_KEY"] = KEY
    try:
        result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(tmp_path / "run")])
    finally:
        del os.environ["EDGE_SERVE_KEY"]
    assert result.exit_code == 0, result.output
    log = read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl")
    assert len(log) == 4 and all(r["endpoint"].startswith("http://127.0.0.1:") for r in log)
    assert all(r["usage"]["completion_tokens"] > 0 for r in log)


def test_missing_artifact_exits_2(served):
    run, _, _ = served
    result = CliRunner().invoke(cli, ["serve", str(run.root), "--artifact", "gguf-q9_9"])
    assert result.exit_code == 2, result.output
    assert "no artifact 'gguf-q9_9'" in result.output and "gguf-f32" in result.output


def test_port_in_use_exits_2(served):
    run, _, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(run.root), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"Port {port} on 127.0.0.1 is in use" in result.output


def test_unset_key_variable_exits_2(served):
    run, _, _ = served
    result = CliRunner().invoke(cli, ["serve", str(run.root), "--api-key-env", "EDGE_NOT_SET_ANYWHERE"])
    assert result.exit_code == 2 and "EDGE_NOT_SET_ANYWHERE" in result.output
