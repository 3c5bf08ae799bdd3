"""The metric judges what a reply says: the value it asserts as its answer, for every task family the
bundled profiles ship (qa, math, nli, summarization, conversation)."""

from __future__ import annotations

import pytest

from edgedistill.evaluate import metrics
from edgedistill.evaluate.answers import choice_options, extract_answer


def qa(prompt: str, reply: str, gold: str) -> float:
    return metrics.score_example("qa", reply, gold, record={"prompt": prompt})["score"]


LARGER = "Which number is larger: 161 or 37?"


@pytest.mark.parametrize("reply, expected", [
    ("161", 1.0),
    ("161 is larger than 37.", 1.0),        # the subject of the comparative
    ("37 is larger than 161.", 0.0),        # the wrong claim, though 161 is its last number
    ("37 is smaller than 161.", 1.0),       # the opposite comparative chooses the other option
    ("The larger number is 161.", 1.0),
    ("161 > 37", 1.0),
    ("Not 37 but 161.", 1.0),               # a negated option is not chosen
    ("161 or 37", 0.0),                     # names both without choosing
    ("Both 161 and 37 are numbers.", 0.0),
    ("37", 0.0),
])
def test_choice_question_scores_the_chosen_option(reply, expected):
    assert qa(LARGER, reply, "161") == expected


def test_choice_options_are_read_from_the_question():
    assert choice_options(LARGER) == ["161", "37"]
    assert choice_options("Answer yes or no: is 9 a prime number?") == ["yes", "no"]
    assert choice_options("Which is heavier, a kilogram of feathers or a kilogram of steel?") == [
        "a kilogram of feathers", "a kilogram of steel"]
    assert choice_options("Pick a colour: red, green or blue?") == ["red", "green", "blue"]
    assert choice_options("Is 17 bigger or smaller than 20?") == ["bigger", "smaller"]
    assert choice_options("What is the capital of France?") == []
    assert choice_options("Of 12 and 31, which number is greater?") == ["12", "31"]
    assert choice_options("Pick the larger number: 12, 31.") == ["12", "31"]
    assert choice_options("What is the sum of 12 and 31?") == []  # no comparison asked
    assert choice_options("anything", {"choices": ["A", "B"]}) == ["A", "B"]


@pytest.mark.parametrize("prompt", ["Of 31 and 12, which number is greater?", "Pick the larger number: 12, 31.",
                                    "Which is bigger, 12 or 31?"])
@pytest.mark.parametrize("reply, expected", [("31", 1.0), ("31 is greater than 12.", 1.0),
                                             ("12 is greater than 31.", 0.0), ("12", 0.0)])
def test_reworded_comparisons(prompt, reply, expected):
    assert qa(prompt, reply, "31") == expected


def test_yes_no_takes_the_reply_s_verdict():
    q = "Answer yes or no: is 9 a prime number?"
    assert qa(q, "No, 9 is divisible by 3.", "no") == 1.0
    assert qa(q, "Yes.", "no") == 0.0
    assert qa(q, "Yes or no: it depends.", "no") == 0.0


@pytest.mark.parametrize("prompt, reply, gold, expected", [
    ("What is the capital of France?", "Paris", "Paris", 1.0),
    ("What is the capital of France?", "The capital of France is Paris.", "Paris", 1.0),
    ("What is the capital of France?", "Paris is the capital of France.", "Paris", 1.0),
    ("What is the capital of France?", "The capital of France is Lyon.", "Paris", 0.0),
    ("What is the capital of India?", "New Delhi.", "New Delhi", 1.0),
    ("What is the capital of Colombia?", "The capital of Colombia is Bogotá.", "Bogota", 1.0),
    ("What is 21 - 13?", "21 - 13 = 8", "8", 1.0),
    ("What is 21 - 13?", "8", "8", 1.0),
    ("What is 21 - 13?", "21 - 13 = 7", "8", 0.0),
    ("What is 21 - 13?", "13", "8", 0.0),                        # an operand is not an answer
    ("How many letters are in the word 'jungle'?", "There are 6 letters in the word 'jungle'.", "6", 1.0),
    ("How many letters are in the word 'jungle'?", "The word 'jungle' has 6 letters.", "6", 1.0),
    ("How many letters are in the word 'jungle'?", "5 or 6", "6", 0.0),  # two new numbers: no answer
    ("What is the opposite of 'full'? Answer with one word.", "The opposite of 'full' is 'empty'.", "empty", 1.0),
    ("What is the opposite of 'full'? Answer with one word.", "Empty is the opposite of full.", "empty", 1.0),
    ("What is the first letter of the word 'apple'?", "The first letter of the word 'apple' is 'a'.", "a", 1.0),
    ("What is the first letter of the word 'apple'?", "A", "a", 1.0),
    ("What is the last letter of the word 'apple'?", "The last letter is e.", "e", 1.0),
    ("What is 5 times 7?", "The answer is 35.", "35", 1.0),
    ("What is 5 times 7?", "**35**", "35", 1.0),
    ("What is 5 times 7?", "Answer: 35\nBecause 5 x 7 = 35.", "35", 1.0),
])
def test_open_question_scores_the_asserted_value(prompt, reply, gold, expected):
    assert qa(prompt, reply, gold) == expected


def test_qa_against_the_teacher_s_reply_extracts_both_sides():
    rec = {"prompt": LARGER}
    s = metrics.score_example("qa", "161 is larger.", "The larger one is 161.", reference_is_reply=True,
                              record=rec)
    assert s["score"] == 1.0 and s["extracted"] == "161" and s["reference_answer"] == "161"


@pytest.mark.parametrize("reply, expected", [
    ("12 - 5 = 7, 7 + 8 = 15.\nAnswer: 15", "15"),
    ("He has 15 apples.\n#### 15", "15"),
    ("The total is \\boxed{18}.", "18"),
    ("4 x 3 = 12 and 3 x 2 = 6, so 18", "18"),
])
def test_math_final_answer(reply, expected):
    assert extract_answer("math", reply) == expected


@pytest.mark.parametrize("reply, expected", [
    ("Entailment", "entailment"),
    ("contradiction.", "contradiction"),
    ("This is not a contradiction; it is entailment.", "entailment"),   # a negated label does not count
    ("Neutral. The premise does not say whether he is famous.", "neutral"),
    ("Either entailment or neutral.", None),                            # two labels asserted at once
    ("Label: neutral\nIt is not entailment.", "neutral"),
    ("I cannot tell.", None),
])
def test_nli_label_asserted(reply, expected):
    assert extract_answer("nli", reply) == expected


def test_nli_scores_against_gold():
    assert metrics.score_example("nli", "It is not entailment, it is neutral.", "neutral")["score"] == 1.0
    assert metrics.score_example("nli", "It is not neutral, it is entailment.", "neutral")["score"] == 0.0


@pytest.mark.parametrize("task", ["summarization", "conversation"])
def test_free_text_scores_the_reply_without_its_preamble(task):
    ref = "Plants turn sunlight, water and carbon dioxide into sugar and release oxygen."
    plain = metrics.score_example(task, ref, ref)["score"]
    prefixed = metrics.score_example(task, "Summary: " + ref, ref)["score"]
    assert plain == pytest.approx(1.0) and prefixed == pytest.approx(plain)
    unrelated = metrics.score_example(task, "The weather was cold all week in the north.", ref)["score"]
    assert unrelated < 0.3
