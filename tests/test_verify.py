"""Which teacher answers become training data: the format checks, agreement with a gold answer,
self-consistency by majority vote, minimum Bayes risk for free text."""

from __future__ import annotations

from edgedistill.config import TeacherConfig
from edgedistill.teacher import verify

LARGER = {"id": "q", "prompt": "Which number is larger: 161 or 37?", "answer": "161"}


def test_format_checks():
    cfg = TeacherConfig(model="t")
    ok = {"response": "161", "finish_reason": "stop"}
    assert verify.check("qa", cfg, ok, LARGER) is None
    assert verify.check("qa", cfg, {**ok, "finish_reason": "length"}, LARGER) == "finish_reason:length"
    assert verify.check("qa", cfg, {**ok, "response": "  "}, LARGER) == "empty"
    assert verify.check("qa", cfg, {**ok, "response": "I'm sorry, but I can't help with that."}, LARGER) == "refusal"
    assert verify.check("math", cfg, {**ok, "response": "no idea"}, {"prompt": "2+2?"}) == "no_number"
    assert verify.check("qa", cfg, None, LARGER, "request_failed: HTTP 400") == "request_failed: HTTP 400"


def test_gold_keeps_the_first_sample_that_matches():
    v = verify.against_gold("qa", ["37 is larger than 161.", "161 is larger than 37."], LARGER, None)
    assert (v.index, v.verified, v.answer) == (1, "gold", "161")  # the first said the wrong thing
    wrong = verify.against_gold("qa", ["37", None, "37 is larger."], LARGER, None)
    assert wrong.index is None and wrong.reason == "wrong_answer"
    none = verify.against_gold("qa", [None], LARGER, "finish_reason:length")
    assert none.index is None and none.reason == "finish_reason:length"


def test_majority_vote():
    q = {"id": "m", "prompt": "What is 7 times 8?"}
    v = verify.by_vote("qa", ["56", "7 times 8 is 56.", "54"], q, 0.5, None)
    assert (v.index, v.verified, v.agreement, v.answer) == (0, "majority", 0.6667, "56")
    split = verify.by_vote("qa", ["56", "54", "58"], q, 0.5, None)
    assert split.index is None and split.reason == "no_majority" and split.agreement == 0.3333
    # a sample that failed its checks is a vote for nothing: 1 of 3 is no majority
    assert verify.by_vote("qa", ["56", None, None], q, 0.5, None).reason == "no_majority"
    assert verify.by_vote("qa", ["56"], q, 0.5, None).verified == "unverified"  # one sample only
    nli = {"id": "n", "prompt": "Premise ... Hypothesis ..."}
    v = verify.by_vote("nli", ["Neutral.", "It is not entailment; neutral.", "entailment"], nli, 0.5, None)
    assert v.answer == "neutral" and v.index == 0


def test_free_text_keeps_the_sample_closest_to_the_others():
    q = {"id": "s", "prompt": "Summarize: plants make sugar from light."}
    texts = ["Plants use light to make sugar.", "Stock prices fell sharply on Monday.",
             "Plants make sugar using light energy."]
    v = verify.by_vote("summarization", texts, q, 0.5, None)
    assert v.verified == "mbr" and v.index in (0, 2) and 0 < v.agreement <= 1
