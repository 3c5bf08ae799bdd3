"""What the judge is asked, and how its answer is read.

Three kinds of question, each answered with one label so that a verdict can be read from the
judge's next-token probabilities over the labels (one forward pass, nothing to parse):

- ``pair``: two replies to one conversation, A and B; the labels A, B, or C for a tie. Asked in
  both orders (MT-Bench's swap): a verdict that flips with the order is a tie;
- ``rubric``: one reply scored 1-5 against the recipe's rubric (``eval.judge.rubric``), given
  the facts a right reply must carry where the record has them (``facts``);
- ``gold``: one reply against the gold answer: Yes if it is right *and* in the form the prompt
  asks for (only the value, a number, one sentence), No otherwise.

Every prompt opens with the same system message and then the task's own instructions and the
conversation, so a judge that caches prefixes (llama.cpp here, vLLM's prefix cache elsewhere)
reads those once for all the replies of one conversation, in both orders.
"""

from __future__ import annotations

import math
import re
from typing import Any

PROMPT_VERSION = 1  # in every question key beside its text: bump when a verdict is read differently

PAIR_LABELS = ("A", "B", "C")
RUBRIC_LABELS = ("1", "2", "3", "4", "5")
GOLD_LABELS = ("Yes", "No")
LABELS = {"pair": PAIR_LABELS, "rubric": RUBRIC_LABELS, "gold": GOLD_LABELS}

DEFAULT_RUBRIC = """\
5: answers what the customer asked, follows the stated policy, invents nothing (no order details, \
prices, dates or policies that were not given), asks for what it needs to go on (an order number, \
an email), and is concise and polite; it carries every required fact.
4: right and within policy, but misses a required fact, a needed question, or is wordy.
3: partly helpful: answers only part of the request, or is vague where the policy is precise.
2: mostly unhelpful: off the point, or asks for nothing it needs, or a small policy slip.
1: wrong or harmful: breaks the policy, invents facts, promises what the policy forbids, or \
does not answer at all."""

SYSTEM = """\
You are a strict, impartial judge of replies written by an assistant. You read the \
assistant's instructions, the conversation so far, and then either two replies to compare or one \
reply to grade.

A good reply answers what was asked; follows the instructions and any stated policy; invents \
nothing; asks for what it needs to go on; does what the conversation asks about form (only the \
value, a number, one sentence, a list); and says it concisely. Length alone is no merit, and the \
order in which replies are shown means nothing.

When asked to compare, answer with one letter: A if reply A is better, B if reply B is better, \
C if they are equally good. When asked to grade, answer with one digit from 1 to 5 by the rubric \
below. When asked whether a reply is right, answer Yes or No. Answer with the label alone."""

ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


def clip(text: str | None, max_words: int) -> str:
    """A reply as the judge sees it: at most ``max_words`` words (marked when cut)."""
    words = (text or "").split()
    if len(words) <= max_words:
        return (text or "").strip() or "(empty reply)"
    return " ".join(words[:max_words]) + " [... cut]"


def _context(messages: list[dict[str, str]]) -> str:
    """The task's instructions (its system turn) and the conversation up to the reply."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    parts = []
    if system:
        parts.append("[The assistant's instructions]\n" + "\n".join(system).strip())
    parts.append("[The conversation]\n" + "\n".join(
        f"{ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in turns))
    return "\n\n".join(parts)


def _facts(facts: list[str] | None) -> str:
    if not facts:
        return ""
    return "\n\n[A right reply must state]\n" + "\n".join(f"- {f}" for f in facts)


def system(rubric_text: str | None) -> dict[str, str]:
    """The judge's system message: the same for every question of a run (the rubric in it), so
    that it is read once for all of them."""
    text = SYSTEM + (f"\n\n[The rubric for grading]\n{rubric_text.strip()}" if rubric_text else "")
    return {"role": "system", "content": text}


def pair(messages: list[dict[str, str]], a: str, b: str, facts: list[str] | None,
         max_words: int, rubric_text: str | None = None) -> list[dict[str, str]]:
    user = (f"{_context(messages)}{_facts(facts)}\n\n[Reply A]\n{clip(a, max_words)}\n\n"
            f"[Reply B]\n{clip(b, max_words)}\n\nWhich reply is better? Answer A, B or C (equally good).")
    return [system(rubric_text), {"role": "user", "content": user}]


def rubric(messages: list[dict[str, str]], reply: str, facts: list[str] | None, rubric_text: str,
           max_words: int) -> list[dict[str, str]]:
    user = (f"{_context(messages)}{_facts(facts)}\n\n[Reply]\n{clip(reply, max_words)}\n\n"
            "Grade the reply by the rubric: answer 1, 2, 3, 4 or 5.")
    return [system(rubric_text), {"role": "user", "content": user}]


def gold(messages: list[dict[str, str]], reply: str, answer: str, max_words: int) -> list[dict[str, str]]:
    # the question before the reply, the right answer named in it: on a demo run the 1.5B teacher
    # as judge agreed with 0.951 of 226 known verdicts so, 0.646 asked after the reply (docs/judge.md)
    user = (f"{_context(messages)}\n\n[The right answer]\n{answer}\n\nDoes the reply below give the right "
            f"answer, {answer}, in the form the conversation asks for? A reply that gives another answer, "
            f"none, or stops before it is No. Answer Yes or No.\n\n[Reply]\n{clip(reply, max_words)}")
    return [system(None), {"role": "user", "content": user}]


# --- reading a verdict --------------------------------------------------------------------------

MIN_LABEL_MASS = 0.05  # less of the judge's next-token probability than this on the labels: unscored


def from_logprobs(kind: str, logprobs: dict[str, float]) -> dict[str, Any]:
    """A verdict from the log-probabilities of each label as the judge's next token (a label
    absent from the judge's top tokens has probability 0). ``label`` is None (unscored) when the
    labels together hold less than MIN_LABEL_MASS of the probability: the judge meant to say
    something else."""
    probs = {lab: math.exp(lp) if lp is not None else 0.0 for lab, lp in logprobs.items()}
    mass = sum(probs.values())
    if mass < MIN_LABEL_MASS:
        return {"label": None, "probs": None, "mass": round(mass, 6), "reason": "no label in the judge's top tokens"}
    norm = {lab: p / mass for lab, p in probs.items()}
    out: dict[str, Any] = {"label": max(norm, key=norm.get), "probs": {k: round(v, 6) for k, v in norm.items()},
                           "mass": round(mass, 6)}
    if kind == "rubric":
        out["expected"] = round(sum(int(k) * v for k, v in norm.items()), 6)
    return out


def from_text(kind: str, text: str | None) -> dict[str, Any]:
    """A verdict from a short reply: the first label it names; unscored when it names none or
    several different ones."""
    labels = LABELS[kind]
    words = re.findall(r"[A-Za-z]+|\d", text or "")
    found = [w for w in words if w in labels or (kind == "gold" and w.title() in labels)]
    found = [w.title() if kind == "gold" else w for w in found]
    if not found:
        return {"label": None, "probs": None, "reason": f"no label in the reply {(text or '')[:60]!r}"}
    out: dict[str, Any] = {"label": found[0], "probs": None}
    if kind == "rubric":
        out["expected"] = float(found[0])
    return out


def fact_missing(reply: str | None, facts: list[str] | None) -> list[str]:
    """The required facts a reply does not state (case, punctuation and spacing aside)."""
    def norm(s: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", s.lower()))

    text = f" {norm(reply or '')} "
    return [f for f in facts or [] if f" {norm(f)}" not in text]  # "2 year" finds "2 years" too
