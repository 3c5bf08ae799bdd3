"""Teacher pieces that need no model: answer checks, dedup/split, the resume log, the CLI's
answer to an unreachable endpoint or a missing key."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.evaluate import tasks
from edgedistill.cli import cli
from edgedistill.data import read_jsonl
from edgedistill.teacher import BACKENDS, backend_module
from edgedistill.teacher.dedup import dedupe, near_duplicates, split_ids
from edgedistill.teacher.verify import is_refusal
from edgedistill.teacher.resume_log import open_log, read_log
from edgedistill.teacher.backends.openai import retry_after_s, shown
from servers import FaultProxy, closed_port_url


def test_normalize_and_extract():
    assert tasks.normalize_answer("  The Paris. ") == "paris"
    assert tasks.normalize_answer("1,000.50") == "1000.5"
    assert tasks.normalize_answer("An apple-pie!") == "apple pie"
    assert tasks.normalize_answer("The answer is -5.") == "answer is -5"
    assert tasks.normalize_answer("1,2,3") == "1 2 3" and tasks.normalize_answer("U.S.A.") == "usa"
    assert tasks.normalize_answer("A.") == "a"  # a one-letter answer is not an article
    assert tasks.normalize_answer("7.0") == tasks.normalize_answer("7") == "7"
    assert tasks.extract_answer("math", "3 + 5 = 8, so the answer is 8.") == "8"
    assert tasks.extract_answer("math", "We get 12 then #### 1,200") == "1200"
    assert tasks.extract_answer("math", "\\boxed{3/4}") == "0.75"
    assert tasks.extract_answer("nli", "The hypothesis contradicts the premise.") == "contradiction"
    assert tasks.extract_answer("nli", "Label: Entailment") == "entailment"
    assert tasks.extract_answer("classification", "It is clearly Sports news", {"labels": ["Politics", "Sports"]}) == "Sports"
    assert tasks.extract_answer("qa", "Answer: Paris.\nIt is the capital.") == "Paris"
    assert tasks.extract_answer("summarization", "  A summary. ") == "A summary."


def test_check_answer_reasons():
    assert tasks.check_answer("math", "I do not know") == "no_number"
    assert tasks.check_answer("math", "It is 4") is None
    assert tasks.check_answer("nli", "maybe") == "no_label"
    assert tasks.check_answer("qa", "not json", {"prompt": "Return a JSON object with key a."}) == "invalid_json"
    assert tasks.check_answer("qa", '```json\n{"a": 1}\n```', {"prompt": "Answer in JSON."}) is None
    assert tasks.check_answer("qa", "free text", {"prompt": "Explain what JSON is."}) is None
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI language model, I cannot do that")
    assert not is_refusal("Sorry to hear that! The answer is 4.")


def test_dedup_exact_and_near_and_split():
    texts = ["What is 21 - 13?", "what is  21 - 13?", "What is 13 - 21?",
             "Name the capital city of France, please, in one word.",
             "Name the capital city of France, please, in one word!",
             "Translate 'cat' to German."]
    prompts = [{"id": f"p{i}", "prompt": t} for i, t in enumerate(texts)]
    kept, removed = dedupe(prompts, texts, 0.8)
    assert [p["id"] for p in kept] == ["p0", "p2", "p3", "p5"]
    assert {(r["id"], r["kind"], r["duplicate_of"]) for r in removed} == {
        ("p1", "exact", "p0"), ("p4", "near", "p3")}
    # prefix filtering finds exactly what comparing every pair finds
    many = [f"question {i % 7} about topic {i % 5} and item {i % 3} {'extra ' * (i % 4)}" for i in range(80)]
    assert near_duplicates(many, 0.7) == _all_pairs(many, 0.7)
    # after dedup and split, no train prompt is a near duplicate of an eval prompt
    rows = [{"id": f"m{i}", "prompt": m} for i, m in enumerate(many)]
    kept, _ = dedupe(rows, many, 0.7)
    held = split_ids([r["id"] for r in kept], 0.3)
    train_texts = [r["prompt"] for r in kept if r["id"] not in held]
    assert held and train_texts
    assert all(_jac(e["prompt"], x) < 0.7 for e in kept if e["id"] in held for x in train_texts)
    ids = [f"id{i}" for i in range(50)]
    eval_ids = split_ids(ids, 0.2, seed=0)
    assert len(eval_ids) == 10 and eval_ids == split_ids(list(reversed(ids)), 0.2, seed=0)
    assert eval_ids != split_ids(ids, 0.2, seed=1)


def _jac(a: str, b: str) -> float:
    from edgedistill.teacher.dedup import features, jaccard

    return jaccard(features(a), features(b))


def _all_pairs(texts: list[str], t: float) -> dict[int, int]:
    from edgedistill.teacher.dedup import features, jaccard

    sets, kept, dup = [features(x) for x in texts], [], {}
    for i, s in enumerate(sets):
        j = next((k for k in kept if jaccard(s, sets[k]) >= t), None)
        if j is None:
            kept.append(i)
        else:
            dup[i] = j
    return dup


def test_resume_log_repairs_torn_tail(tmp_path):
    path = tmp_path / "teacher.jsonl"
    whole = {"key": "a", "response": "x"}
    path.write_text(json.dumps(whole) + "\n" + '{"key": "b", "resp')
    with open_log(path) as f:
        assert set(read_log(path)) == {"a"}
        f.write(json.dumps({"key": "c"}) + "\n")
    assert [r["key"] for r in read_jsonl(path)] == ["a", "c"]
    path.write_text(json.dumps(whole) + "\n" + json.dumps({"key": "b"}))  # whole line, no newline
    with open_log(path) as f:
        f.write(json.dumps({"key": "c"}) + "\n")
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_resume_key_covers_model_params_and_messages():
    from edgedistill.config import TeacherConfig
    from edgedistill.teacher.asking import make_request

    cfg = TeacherConfig(model="m", base_url="http://x/v1")
    prompt = {"id": "a", "prompt": "Hi"}
    key = make_request(cfg, prompt).key
    assert key == make_request(cfg.model_copy(update={"concurrency": 3, "base_url": "http://y/v1"}), prompt).key
    assert key == make_request(cfg, {"id": "other-id", "prompt": "Hi"}).key
    for changed in ({"temperature": 0.7}, {"max_tokens": 9}, {"model": "n"}, {"system_prompt": "Be brief."},
                    {"logprobs": 2}):
        assert make_request(cfg.model_copy(update=changed), prompt).key != key, changed
    assert make_request(cfg, {"id": "a", "prompt": "Hi!"}).key != key


def test_retry_after_and_shown_url():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None
    assert shown("https://user:secret@api.example.com:8443/v1?key=abc") == "https://api.example.com:8443/v1"


def test_backends_registry_is_lazy():
    assert set(BACKENDS) == {"openai", "gguf", "hf"}
    from edgedistill.errors import ConfigError

    with pytest.raises(ConfigError, match="Known backends"):
        backend_module("vllm")


def test_unreachable_endpoint_exits_2(tmp_path):
    recipe = write_recipe(tmp_path / "r", teacher={"base_url": closed_port_url(), "max_retries": 1,
                                                   "concurrency": 2})
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "cannot be reached" in result.output and "connection refused" in result.output  # preflight
    assert "0 of 10 answers are kept" in result.output
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["status"] == "failed"


def test_missing_key_variable_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_TEST_NO_SUCH_KEY", raising=False)
    recipe = write_recipe(tmp_path / "r", teacher={"base_url": closed_port_url(),
                                                   "api_key_env": "EDGE_TEST_NO_SUCH_KEY"})
    result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "$EDGE_TEST_NO_SUCH_KEY is not set" in result.output


def test_wrong_key_stops_at_once_and_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_TEST_KEY", "sk-wrong-key-0123456789")
    proxy = FaultProxy(closed_port_url(), faults=["401"] * 20)
    with proxy.running():
        recipe = write_recipe(tmp_path / "r", teacher={"base_url": proxy.url, "api_key_env": "EDGE_TEST_KEY"})
        result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "refused the credentials (HTTP 401)" in result.output and "$EDGE_TEST_KEY" in result.output
    assert "sk-wrong-key" not in result.output
    posts = [h for h in proxy.hits if h.path.endswith("/chat/completions")]  # not the preflight GET
    assert len(posts) <= 8, "a refused key is not retried"
    assert not any("sk-wrong-key" in p.read_text(errors="ignore") for p in (tmp_path / "run").rglob("*") if p.is_file())
