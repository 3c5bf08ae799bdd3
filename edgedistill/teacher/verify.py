"""Which teacher answers become training data.

Every answer first passes the format checks (``check``: it arrived, it ended on its own, it is not
empty or a refusal, and it has what the task needs: a number for math, a label for NLI, JSON when
the prompt asks for it). Then a training label is verified:

- ``gold``: the prompt has a gold answer and the task's metric says the teacher's answer matches
  it (otherwise more answers are sampled, up to ``teacher.retries_on_wrong``);
- ``majority``: no gold answer; ``teacher.samples`` answers were asked and the kept one says what
  more than ``teacher.min_agreement`` of them say (self-consistency, for qa, math, nli and
  classification);
- ``mbr``: a free-text task (summarization, conversation) with several samples keeps the one that
  agrees most with the others (mean ROUGE-L: minimum Bayes risk);
- ``unverified``: one answer and no gold; only the format checks stand behind it.

Eval answers are never filtered here: the teacher is scored on exactly what it answered.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgedistill.config import TeacherConfig
from edgedistill.registry import FREE_TEXT_TASKS
from edgedistill.evaluate import metrics, tasks

_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,? (?:but )?i (?:can|am|won)|i (?:can ?not|can't|won't|am unable to|'m unable to)"
    r" (?:help|assist|comply|provide|answer|do that|fulfil)|as an ai(?: language model)?,? i (?:can|don|am))", re.I)
GOLD_MIN_ROUGE = 0.5  # a free-text answer "matches" a gold reference from this ROUGE-L F1 on


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.replace("\u2019", "'")[:200]))


def check(task: str, cfg: TeacherConfig, rec: dict[str, Any] | None, prompt: dict[str, Any],
          failure: str | None = None) -> str | None:
    """None when a teacher answer passes the format checks, else why not."""
    if rec is None:
        return failure or "no_response"
    text = rec.get("response")
    if text is None:
        return rec.get("error") or "no_response"
    if rec.get("finish_reason") not in cfg.accept_finish_reasons:
        return f"finish_reason:{rec.get('finish_reason')}"
    if not text.strip():
        return "empty"
    if not cfg.keep_refusals and is_refusal(text):
        return "refusal"
    return tasks.check_answer(task, text, prompt, rec.get("messages"))


def matches_gold(task: str, text: str, prompt: dict[str, Any]) -> bool:
    """The task's metric says ``text`` answers the prompt's gold answer."""
    score = metrics.score_example(task, text, str(prompt["answer"]), record=prompt)["score"]
    return score >= (GOLD_MIN_ROUGE if task in FREE_TEXT_TASKS else 1.0)


@dataclass
class Verdict:
    index: int | None  # which sample is kept (None: rejected)
    verified: str  # gold | majority | mbr | unverified
    agreement: float | None = None  # share of samples that say the kept answer (mbr: its mean ROUGE-L)
    answer: str | None = None  # the answer the kept sample asserts
    reason: str | None = None  # why it was rejected


def against_gold(task: str, texts: list[str | None], prompt: dict[str, Any], first_reason: str | None) -> Verdict:
    """The first sample that matches the gold answer (``texts``: the samples that passed the
    format checks, None where one did not)."""
    for i, text in enumerate(texts):
        if text is not None and matches_gold(task, text, prompt):
            return Verdict(i, "gold", answer=str(prompt["answer"]))
    valid = [t for t in texts if t is not None]
    return Verdict(None, "gold", reason="wrong_answer" if valid else first_reason or "no_response")


def by_vote(task: str, texts: list[str | None], prompt: dict[str, Any], min_agreement: float,
            first_reason: str | None) -> Verdict:
    """Self-consistency over the samples (all asked: a sample that failed its checks counts as a
    vote for nothing)."""
    valid = [(i, t) for i, t in enumerate(texts) if t is not None]
    if not valid:
        return Verdict(None, "majority", reason=first_reason or "no_response")
    if len(texts) == 1:
        return Verdict(valid[0][0], "unverified")
    if task in FREE_TEXT_TASKS:
        if len(valid) == 1:
            return Verdict(valid[0][0], "mbr", agreement=0.0)
        means = [sum(metrics.rouge_l(t, o) for j, o in valid if j != i) / (len(valid) - 1) for i, t in valid]
        best = max(range(len(valid)), key=lambda k: (means[k], -valid[k][0]))
        return Verdict(valid[best][0], "mbr", agreement=round(means[best], 4))
    answers = {i: tasks.normalize_answer(tasks.extract_answer(task, t, prompt) or "") for i, t in valid}
    counts = Counter(a for a in answers.values() if a)
    if not counts:
        return Verdict(None, "majority", reason="no_answer")
    top = max(counts.values())
    winner = next(a for i, a in answers.items() if a and counts[a] == top)  # ties: the earliest sample
    agreement = top / len(texts)
    if agreement <= min_agreement:
        return Verdict(None, "majority", agreement=round(agreement, 4), reason="no_majority")
    index = next(i for i, a in answers.items() if a == winner)
    return Verdict(index, "majority", agreement=round(agreement, 4), answer=winner)
