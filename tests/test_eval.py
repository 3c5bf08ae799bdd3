"""eval: metrics on known strings, and the retention ladder on a tiny run (the tiny HF model as
base and merged student, the real SmolLM2 GGUF as an artifact in llama.cpp)."""

from __future__ import annotations

import json
import shutil

import pytest

from edgedistill.evaluate import ladder as ev
from edgedistill.evaluate import metrics
from edgedistill.data import read_jsonl

from test_bench import gguf_artifact, make_run

# --- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gold, expected", [
    ("Paris", "paris", 1.0),
    ("The Eiffel Tower.", "eiffel tower", 1.0),      # articles and punctuation normalised away
    ("Answer: 42", "42", 1.0),
    ("42.0", "42", 1.0),                              # numeric match
    ("1,000", "1000", 1.0),
    ("The answer is 12 apples", "12", 1.0),           # the number stated as the answer
    ("London", "Paris", 0.0),
    ("41", "42", 0.0),
    ("", "42", 0.0),
])
def test_qa_exact_and_numeric_match(pred, gold, expected):
    assert metrics.score_example("qa", pred, gold)["score"] == expected


def test_math_compares_the_final_number():
    reply = "First 3 * 4 = 12, then 12 + 5 = 17.\n#### 17"
    assert metrics.score_example("math", reply, "17")["score"] == 1.0
    assert metrics.score_example("math", "3 * 4 = 12, so 12", "17")["score"] == 0.0
    assert metrics.score_example("math", "It is 0.75", "3/4")["numeric_match"] == 1.0
    # against the teacher's full reply, both answers are extracted the same way
    assert metrics.score_example("math", "so 17", "... #### 17", reference_is_reply=True)["score"] == 1.0


def test_label_accuracy():
    s = metrics.score_example("nli", "The hypothesis contradicts the premise.", "contradiction")
    assert s["accuracy"] == 1.0 and s["extracted"] == "contradiction"
    assert metrics.score_example("nli", "Neutral", "entailment")["score"] == 0.0
    rec = {"labels": ["positive", "negative"]}
    assert metrics.score_example("classification", "Negative.", "negative", record=rec)["score"] == 1.0


def test_rouge_l_and_chrf_against_the_libraries():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    pred, ref = "the cat sat on the mat today", "a cat was sitting on the mat"
    s = metrics.score_example("summarization", pred, ref)
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    assert s["rouge_l"] == pytest.approx(expected) and s["score"] == s["rouge_l"]
    assert s["chrf"] == pytest.approx(CHRF().sentence_score(pred, [ref]).score / 100)
    assert metrics.score_example("conversation", ref, ref)["score"] == pytest.approx(1.0)
    assert 0 < s["rouge_l"] < 1 and 0 < s["chrf"] < 1


def test_aggregate_is_the_mean_of_examples():
    rows = [metrics.score_example("qa", p, g) for p, g in (("4", "4"), ("5", "4"), ("six", "6"))]
    agg = metrics.aggregate(rows, "qa")
    assert agg["n"] == 3 and agg["score"] == pytest.approx(1 / 3)


# --- the ladder -------------------------------------------------------------------------------

GOLD = [
    {"id": "a", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "response": "4", "answer": "4"},
    {"id": "b", "messages": [{"role": "user", "content": "Capital of France?"}], "response": "Paris.",
     "answer": "Paris"},
    {"id": "c", "messages": [{"role": "user", "content": "What is 3 + 5?"}], "response": "9", "answer": "8"},
    {"id": "d", "messages": [{"role": "user", "content": "What is 1 + 1?"}], "response": None,
     "rejected": "no_number", "answer": "2"},
]


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    def make(records, **eval_cfg):
        run = make_run(tmp_path, records, student={"model": str(tiny_model_dir)},
                       eval={"max_new_tokens": 6, **eval_cfg})
        shutil.copytree(tiny_model_dir, run.merged_dir)
        return run
    return make


def test_ladder_on_gold_answers(tiny_run, smollm2_gguf):
    run = tiny_run(GOLD)
    gguf_artifact(run, smollm2_gguf)  # an artifact in the manifest, run in llama.cpp
    ev.evaluate(run)

    summary = json.loads((run.eval_dir / "summary.json").read_text())
    assert summary["reference"] == "gold" and summary["metric"] == "exact_match" and summary["n"] == 4
    assert set(summary["rungs"]) == {"teacher", "student_base", "student_merged", "gguf-q4_1"}
    teacher = summary["rungs"]["teacher"]
    assert teacher["score"] == pytest.approx(0.5)  # right on a, b; wrong on c; rejected on d
    for name, rung in summary["rungs"].items():
        rows = read_jsonl(run.root / rung["file"])
        assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
        assert all(r["reference_source"] == "gold" for r in rows)
        # every score can be recomputed from the per-example file
        assert rung["score"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
        assert rung["retention"] == pytest.approx(rung["score"] / teacher["score"])
    rows = read_jsonl(run.eval_dir / "gguf-q4_1.jsonl")
    assert all(r["prediction"] is not None and r["new_tokens"] <= 6 for r in rows)
    # the same tiny weights as base and merged: the same greedy outputs
    base = [r["prediction"] for r in read_jsonl(run.eval_dir / "student_base.jsonl")]
    merged = [r["prediction"] for r in read_jsonl(run.eval_dir / "student_merged.jsonl")]
    assert base == merged
    assert run.stage_entry("eval")["metrics"]["reference"] == "gold"


def test_a_gguf_student_is_scored_as_packaged_in_llama_cpp(tmp_path, tiny_model_dir, smollm2_gguf):
    run = make_run(tmp_path, GOLD, student={"model": str(smollm2_gguf)}, eval={"max_new_tokens": 6})
    shutil.copytree(tiny_model_dir, run.merged_dir)
    ev.evaluate(run)
    base = json.loads((run.eval_dir / "summary.json").read_text())["rungs"]["student_base"]
    assert base["kind"] == "gguf" and base["model"] == str(smollm2_gguf)
    assert not run.student_base.exists()  # no HF import just to score the base student
    rows = read_jsonl(run.eval_dir / "student_base.jsonl")
    assert all(r["prediction"] and 0 < r["new_tokens"] <= 6 for r in rows)


def test_teacher_is_the_reference_without_gold(tiny_run):
    records = [{k: v for k, v in r.items() if k != "answer"} for r in GOLD]
    run = tiny_run(records, limit=3)
    ev.evaluate(run)
    summary = json.loads((run.eval_dir / "summary.json").read_text())
    assert summary["reference"] == "teacher" and summary["n"] == 3
    assert summary["rungs"]["teacher"]["score"] == 1.0


def test_unchanged_rungs_are_reused(tiny_run, monkeypatch):
    run = tiny_run(GOLD[:2])
    ev.evaluate(run)
    calls = []
    real = ev._generate_all
    monkeypatch.setattr(ev, "_generate_all", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    (run.merged_dir / "extra.txt").write_text("the merged model changed")
    ev.evaluate(run)
    assert calls == ["student_merged"]  # the base student was not asked again


def test_eval_needs_generate(tmp_path):
    from edgedistill.recipes import load_recipe
    from edgedistill.errors import StageMissing
    from edgedistill.rundir import Run

    from conftest import write_recipe

    run = Run.create(tmp_path / "run", load_recipe(write_recipe(tmp_path / "r")))
    with pytest.raises(StageMissing) as e:
        ev.evaluate(run)
    assert "edgedistill generate" in str(e.value)
