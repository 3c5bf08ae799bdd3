"""``edgedistill generate`` against a real ``python -m llama_cpp.server`` serving SmolLM2-135M on
127.0.0.1, through the official openai client: a full run, kill -9 and resume, two endpoints,
429/500 from a fault-injecting proxy, an endpoint that dies mid-run, logprobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.cli import cli
from edgedistill.data import read_jsonl
from servers import FaultProxy, closed_port_url, llama_server

QUESTIONS = [
    "What is 7 + 5?", "What is the capital of France?", "What is 9 - 4?", "Name a primary colour.",
    "What is 3 times 3?", "What colour is the sky on a clear day?", "What is 10 + 10?",
    "What is the opposite of hot?", "How many legs does a cat have?", "What is 6 - 2?",
    "Which animal says moo?", "What is 8 + 1?",
]
SUFFIX = " Reply with the answer only."


def prompts(n: int) -> list[dict]:
    return [{"id": f"q{i:02d}", "prompt": QUESTIONS[i] + SUFFIX} for i in range(n)]


def teacher(url, **kw) -> dict:
    return {"backend": "openai", "model": "smollm2", "base_url": url, "max_tokens": 8,
            "temperature": 0.0, "concurrency": 2, "min_success_ratio": 0.0, "retries_on_wrong": 0,
            "accept_finish_reasons": ["stop", "length"], **kw}


def generate(recipe: Path, run_dir: Path, *extra: str):
    return CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(run_dir), *extra])


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["metrics"]


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("srv") / "server.log"
    with llama_server(smollm2_gguf, threads=1, log_path=log) as url:
        yield url


def test_full_run(server, tmp_path, monkeypatch):
    secret = "sk-edgedistill-test-not-a-real-key-123"
    monkeypatch.setenv("EDGE_TEST_KEY", secret)
    rows = prompts(6) + [
        {"id": "dup", "prompt": QUESTIONS[0] + SUFFIX},  # exact duplicate of q00
        {"id": "near", "prompt": QUESTIONS[1] + " Reply with the answer only!"},  # near duplicate of q01
        {"id": "gold", "prompt": "What is 2 + 2?" + SUFFIX, "answer": "4"},
    ]
    recipe = write_recipe(tmp_path / "r", prompts=rows,
                          data={"eval_fraction": 0.3, "near_duplicate_threshold": 0.8},
                          teacher=teacher(server, api_key_env="EDGE_TEST_KEY"))
    run_dir = tmp_path / "run"
    result = generate(recipe, run_dir)
    assert result.exit_code == 0, result.output

    data = run_dir / "data"
    log = read_jsonl(data / "teacher.jsonl")
    assert len(log) == 7 and len({r["key"] for r in log}) == 7
    m = metrics(run_dir)
    assert m["duplicates_removed"] == {"exact": 1, "near": 1} and m["prompts"] == 7
    assert m["asked"] == 7 and m["completion_tokens"] > 0 and m["train_prompts"] == 5 and m["eval"] == 2
    train, evals = read_jsonl(data / "train.jsonl"), read_jsonl(data / "eval.jsonl")
    rejected_train = [r for r in read_jsonl(data / "rejected.jsonl") if r["split"] == "train"]
    assert len(evals) == 2 and len(train) == m["train"] and len(train) + len(rejected_train) == 5
    assert all(e["response"] for e in evals)  # eval replies are kept as the teacher gave them
    assert {t["verified"] for t in train} <= {"unverified", "gold"}
    assert not {e["id"] for e in evals} & {t["id"] for t in train}
    assert {p["id"] for p in read_jsonl(data / "prompts.jsonl")} == {f"q{i:02d}" for i in range(6)} | {"gold"}
    for rec in train + evals:
        assert {"id", "messages", "response", "answer", "provenance"} <= set(rec)
        assert rec["messages"][-1]["role"] == "user"
    for rec in train:
        prov = rec["provenance"]
        assert prov["teacher_model"] == "smollm2" and prov["backend"] == "openai"
        assert prov["endpoint"] == server and prov["usage"]["completion_tokens"] > 0
        assert prov["finish_reason"] in ("stop", "length") and prov["latency_s"] > 0 and prov["time"]
        assert prov["params"]["max_tokens"] == 8
    assert [r for r in train + evals if r["id"] == "gold"][0]["answer"] == "4"
    # the key never lands in the run
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path

    # unchanged: skipped; --force: re-derived from the log without asking again
    assert generate(recipe, run_dir).exit_code == 0
    result = generate(recipe, run_dir, "--force")
    assert result.exit_code == 0 and metrics(run_dir)["asked"] == 0 and metrics(run_dir)["reused"] == 7
    assert len(read_jsonl(data / "teacher.jsonl")) == 7

    # the success gate, on the answers already given (accept_finish_reasons is not part of the key)
    result = generate(recipe, run_dir, "--set", "teacher.accept_finish_reasons=[tool_calls]",
                      "--set", "teacher.min_success_ratio=0.5")
    assert result.exit_code == 1, result.output
    assert "Only 0 of 5 train prompts got a verified teacher answer" in result.output
    assert Counter(r["reason"] for r in read_jsonl(data / "rejected.jsonl")) == Counter(
        f"finish_reason:{r['finish_reason']}" for r in log)


def test_an_imperfect_teacher_goes_through_train_and_eval(server, tmp_path, tiny_model_dir):
    """Replies cut at max_tokens are rejected: train learns from the rest, eval scores the teacher
    on exactly what it said (a cut reply as given, not as empty), and the chain ends in exit 0."""
    rows = prompts(12) + [{"id": "gold", "prompt": "What is 2 + 2?" + SUFFIX, "answer": "4"},
                          {"id": "long", "prompt": "Write a long poem about the sea."}]
    recipe = write_recipe(tmp_path / "r", prompts=rows, data={"eval_fraction": 0.35},
                          teacher=teacher(server, max_tokens=12, accept_finish_reasons=["stop"]),
                          student={"model": str(tiny_model_dir)},
                          train={"max_steps": 2, "batch_size": 2, "dev_fraction": 0.0, "precision": "fp32"},
                          eval={"max_new_tokens": 4, "batch_size": 4})
    run_dir = tmp_path / "run"
    assert generate(recipe, run_dir).exit_code == 0
    rejected = read_jsonl(run_dir / "data" / "rejected.jsonl")
    evals = read_jsonl(run_dir / "data" / "eval.jsonl")
    assert "finish_reason:length" in {r["reason"] for r in rejected}
    cut = [e for e in evals if e["provenance"]["finish_reason"] == "length"]
    assert all(e["response"] for e in cut)  # kept as the teacher said it
    for stage in ("train", "merge", "eval"):
        result = CliRunner().invoke(cli, [stage, str(run_dir)])
        assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    teacher_rows = read_jsonl(run_dir / "eval" / "teacher.jsonl")
    assert len(teacher_rows) == len(evals) and summary["rungs"]["teacher"]["score"] is not None
    assert summary["rungs"]["student_merged"]["n"] == len(evals)
    assert any(r["rejected"] == "finish_reason:length" for r in teacher_rows)
    by_id = {e["id"]: e for e in evals}
    assert all(r["prediction"] == by_id[r["id"]]["response"] for r in teacher_rows)


def test_kill_9_then_resume(server, tmp_path):
    N = 8
    recipe = write_recipe(tmp_path / "r", prompts=prompts(N), teacher=teacher(server))
    run_dir = tmp_path / "run"
    log = run_dir / "data" / "teacher.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill.cli", "generate", str(recipe),
                             "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(log, tolerate_torn_tail=True)
    assert 2 <= len(before) < N, "the run must be killed mid-way"
    assert not (run_dir / "data" / "train.jsonl").exists()
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["status"] == "running"
    with log.open("a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"key": "torn", "id": "q0')

    result = generate(recipe, run_dir)
    assert result.exit_code == 0, result.output
    after = read_jsonl(log)
    assert len(after) == N, "one answer per prompt: none lost, none asked twice"
    assert len({r["key"] for r in after}) == N and {r["id"] for r in after} == {f"q{i:02d}" for i in range(N)}
    assert after[:len(before)] == before
    m = metrics(run_dir)
    assert (m["reused"], m["asked"]) == (len(before), N - len(before))


def test_two_endpoints_and_a_dead_one(server, smollm2_gguf, tmp_path):
    with llama_server(smollm2_gguf, threads=1) as second:
        recipe = write_recipe(tmp_path / "r", prompts=prompts(4), teacher=teacher([server, second]))
        result = generate(recipe, tmp_path / "run")
        assert result.exit_code == 0, result.output
    used = Counter(r["endpoint"] for r in read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl"))
    assert set(used) == {server, second} and sum(used.values()) == 4

    dead = closed_port_url()
    recipe = write_recipe(tmp_path / "r2", prompts=prompts(3), teacher=teacher([dead, server], max_retries=2))
    result = generate(recipe, tmp_path / "run2")
    assert result.exit_code == 0, result.output
    log = read_jsonl(tmp_path / "run2" / "data" / "teacher.jsonl")
    assert len(log) == 3 and {r["endpoint"] for r in log} == {server}
    assert metrics(tmp_path / "run2")["retries"] >= 1


def test_429_and_500_are_retried(server, tmp_path):
    proxy = FaultProxy(server, faults=["429", "500", "500", None, "429"], retry_after="1")
    with proxy.running():
        recipe = write_recipe(tmp_path / "r", prompts=prompts(3),
                              teacher=teacher(proxy.url, concurrency=1, max_retries=3))
        result = generate(recipe, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl")) == 3
    assert metrics(tmp_path / "run")["retries"] == 4
    posts = [h for h in proxy.hits if h.path.endswith("/chat/completions")]
    assert [h.outcome for h in posts] == ["429", "500", "500", "pass", "429", "pass", "pass"]
    assert posts[1].at - posts[0].at >= 1.0, "Retry-After: 1 must be honoured"


def test_timeout_is_retried(server, tmp_path):
    proxy = FaultProxy(server, faults=["slow"], slow_s=8.0)
    with proxy.running():
        recipe = write_recipe(tmp_path / "r", prompts=prompts(1), data={"eval_fraction": 0.0},
                              teacher=teacher(proxy.url, timeout_s=4.0, max_retries=2, max_tokens=4))
        t0 = time.monotonic()
        result = generate(recipe, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert metrics(tmp_path / "run")["retries"] == 1
    assert len(read_jsonl(tmp_path / "run" / "data" / "teacher.jsonl")) == 1
    assert 4.0 <= time.monotonic() - t0 < 30


def test_endpoint_dies_mid_run_keeps_answers(server, tmp_path):
    proxy = FaultProxy(server, die_after=2)
    recipe = write_recipe(tmp_path / "r", prompts=prompts(5),
                          teacher=teacher(None, concurrency=1, max_retries=1))
    run_dir = tmp_path / "run"
    with proxy.running():
        result = generate(recipe, run_dir, "--set", f"teacher.base_url={proxy.url}")
    assert result.exit_code == 2, result.output
    assert "2 of 5 answers are kept" in result.output and "failed 2 tries" in result.output
    assert len(read_jsonl(run_dir / "data" / "teacher.jsonl")) == 2
    assert not (run_dir / "data" / "train.jsonl").exists()

    result = generate(recipe, run_dir, "--set", f"teacher.base_url={server}")
    assert result.exit_code == 0, result.output
    assert (metrics(run_dir)["reused"], metrics(run_dir)["asked"]) == (2, 3)
    assert len(read_jsonl(run_dir / "data" / "teacher.jsonl")) == 5


def test_logprobs_stored_compactly(server, tmp_path):
    recipe = write_recipe(tmp_path / "r", prompts=prompts(2), data={"eval_fraction": 0.0},
                          teacher=teacher(server, logprobs=2, max_tokens=4))
    result = generate(recipe, tmp_path / "run")
    assert result.exit_code == 0, result.output
    train = read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    assert train
    for rec in train:
        lp = rec["logprobs"]
        assert len(lp) == rec["provenance"]["usage"]["completion_tokens"]
        for step in lp:
            assert set(step) <= {"token", "logprob", "bytes", "top_logprobs"} and step["logprob"] <= 0
            tops = [c["logprob"] for c in step["top_logprobs"]]
            assert len(tops) == 2 and tops[0] >= tops[1]
        assert "".join(step["token"] for step in lp) == rec["response"]
        # what training reads (edgedistill.train.kd), mapped through a vocabulary of the tokens seen
        from edgedistill.train.kd import teacher_topk

        seen = sorted({c["token"] for s in lp for c in [s, *s["top_logprobs"]]})
        ids, lps, chosen, unmapped = teacher_topk(lp, {tok.encode(): i for i, tok in enumerate(seen)})
        assert unmapped == 0 and len(ids) == len(lp) and all(len(r) == 2 for r in ids)
        assert None not in chosen
