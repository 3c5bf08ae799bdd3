"""Task families: what an answer looks like, how to pull it out of a model's text, and the check a
teacher answer must pass to become training data. Pure Python, no heavy imports.

- ``normalize_answer(text)``: a comparable form (lowercase, no articles/punctuation, numbers
  canonical), the base of exact-match metrics.
- ``extract_answer(task, text, record=None)``: the answer a reply asserts (edgedistill.evaluate.answers:
  the chosen option or the asserted value for QA, the final number for math, the one label asserted
  for NLI/classification, the whole text otherwise).
- ``check_answer(task, text, record)``: None when the reply is usable training data for the task,
  else a short reason (``no_number``, ``no_label``, ``invalid_json``, ``not_in_form``).
- ``requested_form(record)`` / ``in_form(form, text, answer)``: the form a record's prompt asks the
  answer in (its ``"format"``: ``value``, only the value; ``sentence``, a whole sentence) and
  whether a reply is in it. On qa and math an answer in another form scores 0: an app that parses
  the reply breaks on it (edgedistill.evaluate.metrics).
"""

from __future__ import annotations

import json
import re
from typing import Any

from edgedistill.evaluate.answers import (  # noqa: F401  (the task API: callers import it from here)
    NLI_LABELS, canonical_number, extract_answer, labels_of, last_number, normalize_answer, question_of,
)

FORMS = ("value", "sentence")  # the forms a record can ask for besides "json"
_JSON_ASK = re.compile(r"\b(?:in|as|valid|a|return|output|respond with)\s+(?:a\s+)?json\b|\bjson\s+(?:object|format)\b", re.I)


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


def requested_form(record: dict[str, Any] | None) -> str | None:
    """``value`` or ``sentence`` when the record's ``"format"`` asks for it, else None."""
    form = str((record or {}).get("format", "")).lower()
    return form if form in FORMS else None


def in_form(form: str, text: str, answer: str | None) -> bool:
    """``text`` is in ``form``: ``value``, nothing but the answer it asserts (``answer``, as
    extract_answer reads it: "42.", "**Paris**"; not "The answer is 42."); ``sentence``, a whole
    sentence (four words or more, ending in . ! or ?) that is more than the bare value."""
    bare = normalize_answer(text)
    if form == "value":
        return answer is not None and bare == normalize_answer(answer)
    if form == "sentence":
        return len(text.split()) >= 4 and text.rstrip().rstrip("*_\"')").endswith((".", "!", "?")) and \
            (answer is None or bare != normalize_answer(answer))
    raise ValueError(f"unknown form {form!r}; the forms are {', '.join(FORMS)}")


def check_answer(task: str, text: str, record: dict[str, Any] | None = None,
                 messages: list[dict[str, str]] | None = None) -> str | None:
    """None when ``text`` is usable data for ``task``; else the reason it is not."""
    if wants_json(record, messages):
        try:
            parse_json_reply(text)
        except ValueError:
            return "invalid_json"
    form = requested_form(record)
    if form and task in ("qa", "math") and not in_form(form, text, extract_answer(task, text, record)):
        return "not_in_form"
    if task == "math" and last_number(text) is None:
        return "no_number"
    if task in ("nli", "classification") and labels_of(task, record) and extract_answer(task, text, record) is None:
        return "no_label"
    return None
