"""More prompts from the teacher: parsing its numbered lines, dedup against every prompt of the run,
and decontamination against the eval prompts (n-gram overlap and content-word similarity), with
the thresholds and the counts recorded. Then the whole round trip through `generate` against a
real teacher (SmolLM2 served by llama.cpp in-process)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.cli import cli
from edgedistill.recipes import load_recipe
from edgedistill.data import read_jsonl
from edgedistill.teacher import synthesize as synth
from edgedistill.teacher.asking import make_request

EVAL = ["What is 21 - 13?", "What is the capital of France?", "How many letters are in the word 'jungle'?"]
TRAIN = ["What is 40 + 2?", "What is the capital of Spain?"]


def _recipe(tmp_path, **syn):
    rows = [{"id": f"t{i}", "prompt": p} for i, p in enumerate(TRAIN)]
    return load_recipe(write_recipe(tmp_path, prompts=rows, data={"synthesize": {"n": 10, **syn}}))


def test_parse_numbered_and_bulleted_lines():
    reply = "Sure! Here they are:\n1. What is 5 + 9?\n2) Name the capital of Peru.\n- Is 7 odd?\n\n3. ok"
    assert synth.parse(reply) == ["What is 5 + 9?", "Name the capital of Peru.", "Is 7 odd?"]
    assert synth.parse(None) == []


def test_select_drops_duplicates_and_eval_lookalikes(tmp_path):
    recipe = _recipe(tmp_path)
    req = make_request(recipe.teacher, {"id": "synthesize-0", "prompt": "x"})
    reply = "\n".join([
        "1. What is 21 - 13?",                        # an eval prompt, verbatim
        "2. Compute 21 - 13 please.",                 # the same content, reworded
        "3. What is 40 + 2?",                         # a train prompt
        "4. What is the capital of Portugal?",        # new: the same template as an eval prompt is fine
        "5. What is the capital of Portugal ?",       # a near duplicate of 4
        "6. How many vowels are in the word 'orange'?",
    ])
    out = synth.select(recipe, [(req, {"response": reply})], TRAIN + EVAL, EVAL)
    kept = [k["prompt"] for k in out.kept]
    assert kept == ["What is the capital of Portugal?", "How many vowels are in the word 'orange'?"]
    reasons = {d["prompt"]: d["reason"] for d in out.dropped}
    assert reasons == {"What is 21 - 13?": "duplicate", "Compute 21 - 13 please.": "eval_content_similarity",
                       "What is 40 + 2?": "duplicate", "What is the capital of Portugal ?": "near_duplicate"}
    m = out.metrics(recipe)
    assert m["parsed"] == 6 and m["kept"] == 2 and m["decontamination"]["ngram"] == 3
    assert all(k["source"] == "synthesized" and k["id"].startswith("syn-") for k in out.kept)


def test_ngram_overlap_catches_a_lightly_edited_eval_prompt(tmp_path):
    recipe = _recipe(tmp_path)
    idx = synth.EvalIndex(EVAL, 3)
    overlap, _ = idx.closest("How many letters are in the word 'jungle'? Please")
    assert overlap >= recipe.data.synthesize.max_eval_overlap
    req = make_request(recipe.teacher, {"id": "s", "prompt": "x"})
    out = synth.select(recipe, [(req, {"response": "1. How many letters are in the word 'jungle' ?!"})],
                       TRAIN, EVAL)
    assert out.kept == [] and out.dropped[0]["reason"] in ("eval_ngram_overlap", "eval_content_similarity")


def test_requests_show_train_prompts_only(tmp_path):
    recipe = _recipe(tmp_path, per_request=3)
    texts = TRAIN + [f"What is {i} times {i + 2}?" for i in range(6)]
    train = [{"id": f"t{i}", "prompt": p} for i, p in enumerate(texts)]
    reqs = synth.requests(recipe, train)
    assert len(reqs) == 5  # 1.25 x 10 asked for, one per example shown, 3 shown per request
    bodies = [r.messages[-1]["content"] for r in reqs]
    assert all(sum(p in b for p in texts) == 3 for b in bodies)
    assert not any(e in b for e in EVAL for b in bodies)
    assert reqs[0].params["temperature"] == 1.0 and reqs[0].params["purpose"] == "synthesize"
    assert len({r.key for r in reqs}) == 5 and reqs == synth.requests(recipe, train)  # seeded


def test_generate_with_synthesis_and_votes(smollm2_gguf, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i + 1}?"} for i in range(8)] + [
        {"id": "g", "prompt": "What is 2 + 2?", "answer": "4"}]
    recipe = write_recipe(tmp_path / "r", prompts=rows, data={
        "eval_fraction": 0.25, "synthesize": {"n": 6, "per_request": 4, "max_tokens": 160}},
        teacher={"backend": "gguf", "model": str(smollm2_gguf), "base_url": None, "max_tokens": 16,
                 "temperature": 0.0, "samples": 3, "retries_on_wrong": 1, "min_success_ratio": 0.0,
                 "accept_finish_reasons": ["stop", "length"], "n_ctx": 1024, "concurrency": 8})
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    m = json.loads((run / "manifest.json").read_text())["stages"]["generate"]["metrics"]
    syn = m["synthesized"]
    assert syn["asked_for"] == 6 and syn["kept"] <= 6 and syn["parsed"] >= syn["kept"]
    assert syn["decontamination"]["max_eval_overlap"] == 0.8
    synthesized = read_jsonl(run / "data" / "synthesized.jsonl")
    assert len(synthesized) == syn["parsed"]
    evals = {r["messages"][-1]["content"] for r in read_jsonl(run / "data" / "eval.jsonl")}
    train = read_jsonl(run / "data" / "train.jsonl")
    assert not evals & {r["messages"][-1]["content"] for r in train}
    assert {r["verified"] for r in train} <= {"majority", "gold"}
    for r in train:
        if r["verified"] == "majority":
            assert r["agreement"] > 0.5 and r["attempts"] == 3
    log = read_jsonl(run / "data" / "teacher.jsonl")
    # every prompt without gold got 3 samples; 1 and 2 carry their index, so resume keys differ
    samples = {(r["id"], r["params"].get("sample", 0)) for r in log if r["params"].get("purpose") is None}
    assert {s for _, s in samples} <= {0, 1, 2}
    kinds = {k for k in m["verified"]}
    assert kinds <= {"majority", "gold"} and m["train"] == len(train)
    rejected = read_jsonl(run / "data" / "rejected.jsonl")
    assert all(r["reason"] for r in rejected)


def test_train_sets_add_train_prompts_and_never_touch_eval(tmp_path):
    """data.train_sets: a train-only file's prompts join the train split, except one that repeats a
    train prompt or comes too close to a held-out prompt (each dropped with its reason); the eval
    split and the eval sets stay whole."""
    from edgedistill.teacher.generate import _prompts

    main = [{"id": f"m{i}", "prompt": p, "answer": a} for i, (p, a) in enumerate([
        ("What is 21 - 13?", "8"), ("What is the capital of France?", "Paris"),
        ("What is 40 + 2?", "42"), ("What is 7 times 8?", "56")])]
    extra = tmp_path / "more.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "What is 30 + 5?", "answer": "35"},
        {"id": "b", "prompt": "Name the capital of Peru.", "answer": "Lima"},
        {"id": "c", "prompt": "Compute 70 minus 3.", "answer": "67"},       # an eval-set question reworded
        {"id": "d", "prompt": "What is 30 + 5?", "answer": "35"},            # a repeat within the file
    ]))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"id": "h", "prompt": "What is 70 minus 3?", "answer": "67"}) + "\n")
    recipe = load_recipe(write_recipe(tmp_path, prompts=main, data={
        "eval_fraction": 0.25, "eval_sets": {"reworded": str(held)}, "train_sets": {"more": str(extra)}}))
    train, evals, sets, removed = _prompts(recipe)
    assert len(evals) == 1 and [p["id"] for p in sets["reworded"]] == ["reworded:h"]
    extra_kept = [p for p in train if p.get("source") == "train_sets:more"]
    assert [p["id"] for p in extra_kept] == ["more:a", "more:b"]
    assert {p["id"] for p in train} - {p["id"] for p in extra_kept} == {p["id"] for p in main} - {evals[0]["id"]}
    why = {r["id"]: r["kind"] for r in removed}
    assert why == {"more:c": "train_set_near_eval", "more:d": "train_set_exact"}
    # a train-set prompt that repeats an eval prompt verbatim is dropped, the eval prompt stays
    extra.write_text(json.dumps({"id": "e", "prompt": evals[0]["prompt"], "answer": evals[0]["answer"]}) + "\n")
    train, evals2, _, removed = _prompts(recipe)
    assert evals2 == evals and not any(p.get("source") for p in train)
    assert removed[-1]["id"] == "more:e" and removed[-1]["kind"] == "train_set_near_eval"


def test_a_missing_prompt_file_of_any_set_is_bad_input(tmp_path):
    """A train or eval set that points at no file ends generate with exit 2 naming the key."""
    for key in ("train_sets", "eval_sets"):
        recipe = write_recipe(tmp_path / key, data={key: {"more": "nowhere.jsonl"}})
        res = CliRunner().invoke(cli, ["generate", str(recipe), "--run-dir", str(tmp_path / key / "run")])
        assert res.exit_code == 2, res.output
        assert f"data.{key}.more" in res.output and "nowhere.jsonl does not exist" in res.output
