"""More prompts from the teacher (``data.synthesize``): each request shows the teacher
``per_request`` prompts drawn from the train split only and asks for one new prompt per example, of
the same kind but with other values and other words (so the kinds keep their shares, and the
student sees each task worded more than one way); the new prompts are deduplicated against
every prompt the run has, and a prompt too close to any eval prompt (main split or an eval set) is
dropped, by two measures recorded with their thresholds:

- word n-gram containment: the share of the candidate's n-grams found in one eval prompt
  (the usual decontamination measure, e.g. GPT-3's 13-gram overlap, at the length of a question);
- content-word similarity: Jaccard similarity of the words left after removing function words,
  which also catches a question reworded around the same content ("21 - 13" asked another way).

Synthesized prompts have no gold answer: their training labels are verified by majority vote.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from edgedistill.config import Recipe
from edgedistill.data import content_id, messages_of
from edgedistill.teacher import Request
from edgedistill.teacher.asking import make_request
from edgedistill.teacher.dedup import exact_key, features, jaccard

INSTRUCTION = ("Here are {n} example questions:\n{examples}\n\nFor each example, write one new question "
               "of the same kind: the same task, with other numbers, words or names, and in other "
               "words. Write the {n} new questions one per line, numbered 1 to {n}, without answers.")
_LINE = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*•])\s*(.+?)\s*$")
_WORD = re.compile(r"\w+|[^\w\s]")
_FUNCTION_WORDS = frozenset("""a an the of in on at to for from by with and or is are was were be what which
    who how many much does do did please give answer reply only one word is it this that there its as
    than then so can you your tell me name""".split())


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = _WORD.findall(text.lower())
    return {tuple(toks[i:i + n]) for i in range(max(len(toks) - n + 1, 1))} if toks else set()


def _content(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"\w+", text.lower()) if w not in _FUNCTION_WORDS)


@dataclass
class EvalIndex:
    """The eval prompts, ready to be compared with a candidate."""

    texts: list[str]
    n: int
    grams: list[set[tuple[str, ...]]] = field(init=False)
    content: list[frozenset[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.grams = [_ngrams(t, self.n) for t in self.texts]
        self.content = [_content(t) for t in self.texts]

    def closest(self, text: str) -> tuple[float, float]:
        """(highest n-gram containment, highest content-word Jaccard) against any eval prompt."""
        g, c = _ngrams(text, self.n), _content(text)
        overlap = max((len(g & e) / len(g) for e in self.grams if g), default=0.0)
        similar = max((len(c & e) / len(c | e) for e in self.content if c | e), default=0.0)
        return overlap, similar

    def too_close(self, text: str, syn: Any) -> tuple[str | None, float, float]:
        """(why ``text`` is too close to an eval prompt under ``data.synthesize``'s thresholds, or
        None; its n-gram containment; its content-word similarity)."""
        overlap, similar = self.closest(text)
        reason = ("eval_ngram_overlap" if overlap >= syn.max_eval_overlap else
                  "eval_content_similarity" if similar >= syn.max_eval_content_similarity else None)
        return reason, overlap, similar


def requests(recipe: Recipe, train_prompts: list[dict[str, Any]]) -> list[Request]:
    """The synthesis requests: each shows ``per_request`` train prompts (a seeded draw per request)."""
    syn = recipe.data.synthesize
    texts = [messages_of(p)[-1]["content"] for p in train_prompts]
    if not texts or syn.n == 0:
        return []
    count = math.ceil(1.25 * syn.n / syn.per_request)  # some come back as duplicates or too close
    out = []
    for i in range(count):
        rng = random.Random(f"{recipe.seed}:synthesize:{i}")
        shown = rng.sample(texts, min(syn.per_request, len(texts)))
        body = INSTRUCTION.format(examples="\n".join(f"{k + 1}. {t}" for k, t in enumerate(shown)),
                                  n=len(shown))
        out.append(make_request(recipe.teacher, {"id": f"synthesize-{i}", "prompt": body},
                                system_prompt=False, temperature=syn.temperature,
                                max_tokens=syn.max_tokens, logprobs=None, purpose="synthesize"))
    return out


def parse(reply: str | None) -> list[str]:
    """The numbered (or bulleted) lines of a reply, as prompts."""
    out = []
    for line in (reply or "").splitlines():
        m = _LINE.match(line)
        if m:
            text = m.group(1).strip().strip('"').strip("*").strip()
            if 8 <= len(text) <= 600:
                out.append(text)
    return out


@dataclass
class Synthesized:
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    parsed: int = 0

    def metrics(self, recipe: Recipe) -> dict[str, Any]:
        syn = recipe.data.synthesize
        reasons: dict[str, int] = {}
        for d in self.dropped:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        return {"asked_for": syn.n, "parsed": self.parsed, "kept": len(self.kept), "dropped": reasons,
                "decontamination": {"ngram": syn.ngram, "max_eval_overlap": syn.max_eval_overlap,
                                    "max_eval_content_similarity": syn.max_eval_content_similarity}}


def select(recipe: Recipe, replies: list[tuple[Request, dict[str, Any] | None]],
           existing: list[str], eval_texts: list[str]) -> Synthesized:
    """Parse every reply; keep new prompts that duplicate nothing and are far from every eval
    prompt, up to ``data.synthesize.n``, in request order."""
    syn = recipe.data.synthesize
    index = EvalIndex(eval_texts, syn.ngram)
    seen = {exact_key(t) for t in existing}
    kept_features = [features(t) for t in existing]
    out = Synthesized()
    for req, rec in replies:
        for line_no, text in enumerate(parse(rec.get("response") if rec else None), start=1):
            out.parsed += 1
            entry = {"id": "syn-" + content_id(text)[:12], "prompt": text, "source": "synthesized",
                     "synthesis": {"request": req.key, "line": line_no}}
            near_eval, overlap, similar = index.too_close(text, syn)
            reason = None
            if len(out.kept) >= syn.n:
                reason = "over_n"
            elif exact_key(text) in seen:
                reason = "duplicate"
            elif near_eval:
                reason = near_eval
            else:
                f = features(text)
                if any(jaccard(f, other) >= recipe.data.near_duplicate_threshold for other in kept_features):
                    reason = "near_duplicate"
            entry["eval_overlap"], entry["eval_content_similarity"] = round(overlap, 3), round(similar, 3)
            if reason:
                out.dropped.append({**entry, "reason": reason})
                continue
            seen.add(exact_key(text))
            kept_features.append(features(text))
            out.kept.append(entry)
    return out

