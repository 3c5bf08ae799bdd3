"""Task metrics, per example and per corpus, through well-kept libraries where one exists.

| task                         | primary metric  | per-example fields                         |
|------------------------------|-----------------|--------------------------------------------|
| qa                           | exact_match     | exact_match, numeric_match                 |
| math                         | numeric_match   | numeric_match, exact_match                 |
| nli, classification          | accuracy        | accuracy (label of the reply == gold label) |
| summarization, conversation  | rouge_l         | rouge_l (rouge-score, F1), chrf (sacrebleu) |

A qa or math record that asks for a form (``"format": "value"`` or ``"sentence"``,
:func:`edgedistill.evaluate.tasks.in_form`) also gets ``in_form``, and its primary score counts only
an answer that is right *and* in that form; ``exact_match`` / ``numeric_match`` stay the value alone.

Answers are pulled out of replies with :func:`edgedistill.evaluate.tasks.extract_answer` and compared after
:func:`edgedistill.evaluate.tasks.normalize_answer`. A corpus score is the mean of the per-example primary
scores, so every number can be recomputed from RUN/eval/<artifact>.jsonl.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edgedistill.evaluate.tasks import (canonical_number, extract_answer, in_form, last_number, normalize_answer,
                                       requested_form)

PRIMARY = {
    "qa": "exact_match",
    "math": "numeric_match",
    "nli": "accuracy",
    "classification": "accuracy",
    "summarization": "rouge_l",
    "conversation": "rouge_l",
}


def primary_metric(task: str) -> str:
    return PRIMARY[task]


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, Porter stemming), in [0, 1]."""
    if not prediction.strip() or not reference.strip():
        return float(prediction.strip() == reference.strip())
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (sacrebleu, default character 6-grams, beta 2), scaled to [0, 1]."""
    return float(_chrf().sentence_score(prediction, [reference]).score) / 100.0


def _numeric(answer: str | None) -> str | None:
    """The canonical number an extracted QA answer is, when it is one (never a number picked out
    of a sentence: extraction has already decided what the reply asserts)."""
    return canonical_number(answer.strip()) if answer else None


def score_example(task: str, prediction: str | None, reference: str,
                  reference_is_reply: bool = False,
                  record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scores of one prediction against one reference.

    ``reference`` is a gold answer, or (``reference_is_reply``) the teacher's full reply, whose
    answer is then extracted the same way as the prediction's. Returns the per-example fields of
    the task (see the module table), ``score`` (the primary one) and the extracted answers.
    """
    prediction = prediction or ""
    ref_answer = extract_answer(task, reference, record) if reference_is_reply else reference
    pred_answer = extract_answer(task, prediction, record)
    out: dict[str, Any] = {"extracted": pred_answer, "reference_answer": ref_answer}
    if task in ("summarization", "conversation"):  # the reply without a "Summary:" preamble
        out["rouge_l"] = rouge_l(pred_answer or "", ref_answer or "")
        out["chrf"] = chrf(pred_answer or "", ref_answer or "")
    elif task in ("nli", "classification"):
        ok = pred_answer is not None and ref_answer is not None and \
            normalize_answer(pred_answer) == normalize_answer(ref_answer)
        out["accuracy"] = float(ok)
    else:  # qa, math
        exact = pred_answer is not None and ref_answer is not None and \
            normalize_answer(pred_answer) == normalize_answer(ref_answer)
        ref_num = _numeric(ref_answer) if task == "qa" else (
            last_number(ref_answer) if ref_answer is not None else None)
        numeric = None
        if ref_num is not None:
            pred_num = _numeric(pred_answer) if task == "qa" else pred_answer
            numeric = float(pred_num is not None and _same_number(pred_num, ref_num))
        out["exact_match"] = float(exact)
        out["numeric_match"] = numeric
        if task == "qa":  # an answer right as a string or as a number counts
            out["exact_match"] = max(float(exact), numeric or 0.0)
        elif numeric is None:  # math with a non-numeric gold answer: fall back to the string
            out["numeric_match"] = float(exact)
    out["score"] = float(out[PRIMARY[task]])
    form = requested_form(record) if task in ("qa", "math") else None
    if form:
        out["in_form"] = float(in_form(form, prediction, pred_answer))
        out["score"] *= out["in_form"]
    return out


def _same_number(a: str, b: str) -> bool:
    ca, cb = canonical_number(a), canonical_number(b)
    if ca is None or cb is None:
        return False
    return abs(float(ca) - float(cb)) <= 1e-6 * max(1.0, abs(float(cb)))


def aggregate(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Corpus scores: the mean of each per-example metric over the scored rows."""
    names = {"qa": ("exact_match", "numeric_match"), "math": ("numeric_match", "exact_match"),
             "nli": ("accuracy",), "classification": ("accuracy",),
             "summarization": ("rouge_l", "chrf"), "conversation": ("rouge_l", "chrf")}[task]
    out: dict[str, Any] = {"n": len(rows)}
    for name in names:
        values = [r[name] for r in rows if r.get(name) is not None]
        out[name] = round(sum(values) / len(values), 6) if values else None
    formed = [r for r in rows if r.get("in_form") is not None]
    if formed:  # records that ask for a form: the share in it, and the score (right and in form)
        out["in_form"] = round(sum(r["in_form"] for r in formed) / len(formed), 6)
    scored = [r["score"] for r in rows if r.get("score") is not None]
    out["score"] = round(sum(scored) / len(scored), 6) if formed and scored else \
        out[PRIMARY[task]] if out[PRIMARY[task]] is not None else 0.0
    return out
