"""Task families: what an answer looks like, how to pull it out of a model's text, and the check a
teacher answer must pass to become training data. Pure Python, no heavy imports.

- ``normalize_answer(text)``: a comparable form (lowercase, no articles/punctuation, numbers
  canonical), the base of exact-match metrics.
- ``extract_answer(task, text, record=None)``: the answer inside a model's reply (the final number
  for math, the label for NLI/classification, the first line for QA, the whole text otherwise).
- ``check_answer(task, text, record)``: None when the reply is usable training data for the task,
  else a short reason (``no_number``, ``no_label``, ``invalid_json``).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from typing import Any

NLI_LABELS = ("entailment", "neutral", "contradiction")
_NLI_ALIASES = {
    "entailment": "entailment", "entails": "entailment", "entailed": "entailment",
    "neutral": "neutral", "undetermined": "neutral",
    "contradiction": "contradiction", "contradicts": "contradiction", "contradictory": "contradiction",
}
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")  # 1,000.5 but not 1,2,3
_NUMBER = re.compile(_PLAIN_NUMBER.pattern + r"(?:/\d+)?")  # math answers may be fractions
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = "".join(c for c in string.punctuation if c not in ".-/,")
_ANSWER_PREFIX = re.compile(r"^\s*(?:final\s+)?answer\s*[:\-]\s*", re.I)
_JSON_ASK = re.compile(r"\b(?:in|as|valid|a|return|output|respond with)\s+(?:a\s+)?json\b|\bjson\s+(?:object|format)\b", re.I)


def canonical_number(raw: str) -> str | None:
    """``"1,000.50"`` → ``"1000.5"``, ``"3/4"`` → ``"0.75"``, ``"7.0"`` → ``"7"``; None if not a number."""
    s = raw.replace(",", "").strip().rstrip(".")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def normalize_answer(text: str | None) -> str:
    """Lowercase, NFKC, numbers canonical, no articles or punctuation, single spaces."""
    if not text:
        return ""
    s = unicodedata.normalize("NFKC", text).lower().strip()
    s = _PLAIN_NUMBER.sub(lambda m: canonical_number(m.group()) or m.group(), s)
    s = s.replace(",", " ").translate(str.maketrans("", "", _PUNCT))
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", "", s)  # . only inside numbers ("u.s.a." is "usa")
    s = re.sub(r"(?<!\d)/|/(?!\d)", " ", s)  # / only inside numbers
    s = re.sub(r"-(?!\d)|(?<=[^\W\d])-", " ", s)  # - only as a sign or between digits
    stripped = " ".join(_ARTICLES.sub(" ", s).split())
    return stripped or " ".join(s.split())  # the answer "a" (a letter) stays "a"


def last_number(text: str) -> str | None:
    """The answer number of a math reply: ``#### X``, ``\\boxed{X}``, ``answer is X``, else the last."""
    for pattern in (r"####\s*(" + _NUMBER.pattern + ")", r"\\boxed\{\s*(" + _NUMBER.pattern + r")\s*\}",
                    r"answer\s*(?:is|:|=)\s*\$?(" + _NUMBER.pattern + ")"):
        found = re.findall(pattern, text, re.I)
        if found:
            return canonical_number(found[-1])
    numbers = _NUMBER.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


def labels_of(task: str, record: dict[str, Any] | None) -> list[str]:
    """The label set of a record (``labels`` or ``choices``), NLI's three by default."""
    record = record or {}
    labels = record.get("labels") or record.get("choices")
    if isinstance(labels, list) and labels:
        return [str(x) for x in labels]
    return list(NLI_LABELS) if task == "nli" else []


def find_label(text: str, labels: list[str]) -> str | None:
    """The label the reply names first (whole words, case-insensitive; NLI aliases accepted)."""
    norm = normalize_answer(text)
    best: tuple[int, str] | None = None
    candidates = {normalize_answer(lab): lab for lab in labels}
    if set(candidates.values()) >= set(NLI_LABELS):
        candidates.update({alias: label for alias, label in _NLI_ALIASES.items()})
    for cand, label in candidates.items():
        m = re.search(r"(?<!\w)" + re.escape(cand) + r"(?!\w)", norm) if cand else None
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    return best[1] if best else None


def parse_json_reply(text: str) -> Any:
    """The JSON value in a reply, with or without a ```json fence; raises ValueError."""
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = (m.group(1) if m else text).strip()
    return json.loads(body)


def wants_json(record: dict[str, Any] | None, messages: list[dict[str, str]] | None = None) -> bool:
    """The prompt asks for JSON: ``"format": "json"`` on the record, or the last user turn says so."""
    record = record or {}
    if str(record.get("format", "")).lower() == "json":
        return True
    msgs = messages or record.get("messages") or [{"role": "user", "content": record.get("prompt", "")}]
    user = [m["content"] for m in msgs if m.get("role") == "user"]
    return bool(user) and bool(_JSON_ASK.search(user[-1]))


def extract_answer(task: str, text: str | None, record: dict[str, Any] | None = None) -> str | None:
    """The answer inside a reply, in the form the task's metric compares (None: none found)."""
    if text is None:
        return None
    text = text.strip()
    if task == "math":
        return last_number(text)
    if task in ("nli", "classification"):
        labels = labels_of(task, record)
        if labels:
            return find_label(text, labels)
    if task in ("qa", "classification"):
        first = next((line for line in text.splitlines() if line.strip()), "")
        first = _ANSWER_PREFIX.sub("", first).strip().strip("*").strip()
        return first.rstrip(".") if first else None
    return text or None


def check_answer(task: str, text: str, record: dict[str, Any] | None = None,
                 messages: list[dict[str, str]] | None = None) -> str | None:
    """None when ``text`` is usable data for ``task``; else the reason it is not."""
    if wants_json(record, messages):
        try:
            parse_json_reply(text)
        except ValueError:
            return "invalid_json"
    if task == "math" and last_number(text) is None:
        return "no_number"
    if task in ("nli", "classification") and labels_of(task, record) and extract_answer(task, text, record) is None:
        return "no_label"
    return None
