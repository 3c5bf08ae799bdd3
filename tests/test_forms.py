"""Format is part of the answer: a qa or math record that asks for a form ("format": "value" or
"sentence") scores only a reply that is right and in that form, and a teacher answer in another
form never becomes a training label."""

from __future__ import annotations

import pytest

from edgedistill.config import TeacherConfig
from edgedistill.evaluate import metrics
from edgedistill.evaluate.tasks import check_answer, in_form, requested_form
from edgedistill.teacher import verify

VALUE = {"prompt": "What is the capital of France? Only the city name, please.", "answer": "Paris",
         "format": "value"}
SENTENCE = {"prompt": "What is 6 times 7? Reply in one whole sentence.", "answer": "42", "format": "sentence"}


@pytest.mark.parametrize("form, reply, answer, expected", [
    ("value", "Paris", "Paris", True),
    ("value", "**Paris.**", "Paris", True),
    ("value", "The capital of France is Paris.", "Paris", False),
    ("value", "42", "42", True),
    ("value", "42 apples", "42", False),
    ("sentence", "6 times 7 is 42.", "42", True),
    ("sentence", "The product of 6 and 7 is 42!", "42", True),
    ("sentence", "42", "42", False),
    ("sentence", "The answer is 42", "42", False),  # no end
    ("sentence", "Forty two.", "42", False),  # too short for a sentence
])
def test_in_form(form, reply, answer, expected):
    assert in_form(form, reply, answer) is expected


def test_only_value_and_sentence_are_forms():
    assert requested_form({"format": "Sentence"}) == "sentence"
    assert requested_form({"format": "json"}) is None and requested_form(None) is None
    with pytest.raises(ValueError, match="value, sentence"):
        in_form("list", "a, b", None)


@pytest.mark.parametrize("record, reply, score, exact", [
    (VALUE, "Paris", 1.0, 1.0),
    (VALUE, "The capital of France is Paris.", 0.0, 1.0),  # right, not in the form asked
    (VALUE, "Lyon", 0.0, 0.0),
    (SENTENCE, "Six times seven is 42.", 1.0, 1.0),
    (SENTENCE, "42", 0.0, 1.0),
    (SENTENCE, "6 times 7 is 48.", 0.0, 0.0),  # in form, wrong
])
def test_a_record_that_asks_for_a_form_scores_right_and_in_form(record, reply, score, exact):
    out = metrics.score_example("qa", reply, record["answer"], record=record)
    assert (out["score"], out["exact_match"], out["in_form"]) == (score, exact, float(in_form(
        record["format"], reply, out["extracted"])))


def test_records_without_a_form_score_as_before():
    out = metrics.score_example("qa", "The capital of France is Paris.", "Paris",
                                record={"prompt": "What is the capital of France?", "answer": "Paris"})
    assert out["score"] == 1.0 and "in_form" not in out
    rows = [out, metrics.score_example("qa", "Lyon", "Paris", record={"answer": "Paris"})]
    agg = metrics.aggregate(rows, "qa")
    assert agg["score"] == 0.5 and "in_form" not in agg


def test_aggregate_reports_the_share_in_form_and_scores_right_and_in_form():
    rows = [metrics.score_example("qa", r, rec["answer"], record=rec) for rec, r in
            [(VALUE, "Paris"), (VALUE, "It is Paris."), (SENTENCE, "42"), (SENTENCE, "6 times 7 makes 42.")]]
    agg = metrics.aggregate(rows, "qa")
    assert agg["in_form"] == 0.5 and agg["score"] == 0.5 and agg["exact_match"] == 1.0


def test_a_teacher_answer_in_another_form_is_no_training_label():
    cfg = TeacherConfig(model="teacher")
    ok = {"response": "The capital of France is Paris.", "finish_reason": "stop"}
    assert verify.check("qa", cfg, ok, VALUE) == "not_in_form"
    assert verify.check("qa", cfg, {**ok, "response": "Paris"}, VALUE) is None
    assert check_answer("qa", "42", SENTENCE) == "not_in_form"
    assert check_answer("qa", "Six times seven is 42.", SENTENCE) is None
    # and a sample in form wins over a right one that is not
    v = verify.against_gold("qa", ["The capital of France is Paris.", "Paris"], VALUE, None)
    assert v.index == 1
    # free-text tasks ignore it (a reply has no value to be alone)
    assert check_answer("conversation", "Hello there, how can I help?", VALUE) is None


def test_compare_forms_counts_each_form_from_the_run(tmp_path):
    """scripts/compare_forms.py (docs/forms.md's figures) reads the rows eval wrote."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    (run / "eval" / "forms").mkdir(parents=True)
    (run / "data").mkdir()
    recs = [{"id": "forms:a", **VALUE}, {"id": "forms:b", **SENTENCE}]
    (run / "data" / "eval-forms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rungs = {}
    for rung, replies in {"teacher": ["Paris", "6 times 7 is 42."], "student_merged": ["It is Paris.", "42"]}.items():
        out = [{"id": r["id"], **metrics.score_example("qa", t, r["answer"], record=r)} for r, t in zip(recs, replies)]
        (run / "eval" / "forms" / f"{rung}.jsonl").write_text("".join(json.dumps(o) + "\n" for o in out))
        score = metrics.aggregate(out, "qa")["score"]
        rungs[rung] = {"score": score, "retention": score, "score_ci95": [0, 1], "retention_ci95": [0, 1]}
    (run / "eval" / "summary.json").write_text(json.dumps({"sets": {"forms": {"n": 2, "rungs": rungs}}}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_forms.py"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, check=True).stdout
    assert "teacher          1.000" in out and "value: in form 1, right 1, both 1 of 1" in out
    assert "student_merged   0.000" in out and "sentence: in form 0, right 1, both 0 of 1" in out
