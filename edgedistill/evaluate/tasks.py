"""Task families: what an answer looks like, how to pull it out of a model's text, and the check a
teacher answer must pass to become training data. Pure Python, no heavy imports.

- ``normalize_answer(text)``: a comparable form (lowercase, no articles/punctuation, numbers
  canonical), the base of exact-match metrics.
- ``extract_answer(task, text, record=None)``: the answer a reply asserts (edgedistill.evaluate.answers:
  the chosen option or the asserted value for QA, the final number for math, the one label asserted
  for NLI/classification, the whole text otherwise).
- ``check_answer(task, text, record)``: None when the reply is usable training data for the task,
  else a short reason (``no_number``, ``no_label``, ``invalid_json``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from edgedistill.evaluate.answers import (  # noqa: F401  (the task API: callers import it from here)
    NLI_LABELS, canonical_number, extract_answer, labels_of, last_number, normalize_answer, question_of,
)

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
