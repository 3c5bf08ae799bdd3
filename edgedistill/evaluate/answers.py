"""What a reply asserts as its answer, per task family, in the form the metric compares.

A reply is judged on what it says, not on where a string happens to stand in it:

- qa: the first line, without an answer prefix. A choice question ("Which is larger: 161 or 37?",
  "yes or no", a record's ``choices``) is answered by the option the reply chooses: the only option
  it names, the subject of a comparative that agrees with the question ("161 is larger"; "37 is
  smaller than 161" chooses 161), or "the larger is 161"; a reply that names several options
  without choosing answers nothing. An open question is answered by the side of "X is Y" that does
  not restate the question ("The capital of France is Paris", "Paris is the capital of France"), or
  by the one number the reply adds to the question's own ("21 - 13 = 8", "There are 6 letters").
- math: ``#### X``, ``\\boxed{X}``, "the answer is X", else the last number.
- nli / classification: the one label the reply asserts (a negated one, "not a contradiction", does
  not count; two labels asserted at once answer nothing), first line first.
- summarization / conversation: the whole reply, without a "Summary:" style preamble.

Pure Python, no heavy imports.
"""

from __future__ import annotations

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
NUMBER = re.compile(_PLAIN_NUMBER.pattern + r"(?:/\d+)?")  # math answers may be fractions
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = "".join(c for c in string.punctuation if c not in ".-/,")
_PREFIX = re.compile(r"^\s*(?:(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\s*:?|[:\-=])|a\s*:|"
                     r"(?:summary|response|reply|label)\s*:)\s*", re.I)
_COPULA = re.compile(r"\s+(?:is|are|was|were|equals|makes|gives)\s+|\s*=\s*")
_NEGATION = re.compile(r"\b(?:not|no|isn't|is not|never|neither|nor|rather than|instead of)\s+(?:an?\s+|the\s+)?$")
_STOP = frozenset("""a an the of in on at to for from by with and or is are was were be what which who
    whom whose how many much does do did please give answer reply only one word number value it this
    that there their its as than then so""".split())
_PRONOUN_SUBJECT = frozenset(("it", "that", "this", "there", "answer", "the answer", "result", "the result"))
_MORE = frozenset(("larger", "bigger", "greater", "higher", "more", "heavier", "older", "longer", "taller",
                   "faster", "largest", "biggest", "greatest", "highest", "most", "heaviest", "oldest",
                   "longest", "tallest", "fastest", "later", "latest"))
_LESS = frozenset(("smaller", "less", "lower", "fewer", "lighter", "younger", "shorter", "slower",
                   "smallest", "least", "lowest", "fewest", "lightest", "youngest", "shortest",
                   "slowest", "earlier", "earliest"))


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
    """Lowercase, accents folded ("Bogotá" is "bogota"), numbers canonical, no articles or
    punctuation, single spaces."""
    if not text:
        return ""
    s = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    s = "".join(c for c in s if not unicodedata.combining(c)).lower().strip()
    s = _PLAIN_NUMBER.sub(lambda m: canonical_number(m.group()) or m.group(), s)
    s = s.replace(",", " ").translate(str.maketrans("", "", _PUNCT))
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", "", s)  # . only inside numbers ("u.s.a." is "usa")
    s = re.sub(r"(?<!\d)/|/(?!\d)", " ", s)  # / only inside numbers
    s = re.sub(r"-(?!\d)|(?<=[^\W\d])-", " ", s)  # - only as a sign or between digits
    stripped = " ".join(_ARTICLES.sub(" ", s).split())
    return stripped or " ".join(s.split())  # the answer "a" (a letter) stays "a"


def numbers_in(text: str) -> list[str]:
    return [n for n in (canonical_number(m) for m in NUMBER.findall(text)) if n is not None]


def last_number(text: str) -> str | None:
    """The answer number of a math reply: ``#### X``, ``\\boxed{X}``, ``answer is X``, else the last."""
    for pattern in (r"####\s*(" + NUMBER.pattern + ")", r"\\boxed\{\s*(" + NUMBER.pattern + r")\s*\}",
                    r"answer\s*(?:is|:|=)\s*\$?(" + NUMBER.pattern + ")"):
        found = re.findall(pattern, text, re.I)
        if found:
            return canonical_number(found[-1])
    found = numbers_in(text)
    return found[-1] if found else None


def question_of(record: dict[str, Any] | None) -> str:
    """The last user turn of a record (its ``prompt`` when it has no messages)."""
    record = record or {}
    msgs = record.get("messages") or [{"role": "user", "content": record.get("prompt") or ""}]
    user = [m.get("content") or "" for m in msgs if m.get("role") == "user"]
    return user[-1] if user else ""


# ---------------------------------------------------------------------------------------------
# labels (nli, classification)


def labels_of(task: str, record: dict[str, Any] | None) -> list[str]:
    """The label set of a record (``labels`` or ``choices``), NLI's three by default."""
    record = record or {}
    labels = record.get("labels") or record.get("choices")
    if isinstance(labels, list) and labels:
        return [str(x) for x in labels]
    return list(NLI_LABELS) if task == "nli" else []


def _asserted(norm: str, candidates: dict[str, str]) -> list[tuple[int, str]]:
    """(position, value) of each candidate named in ``norm`` and not negated there."""
    out = []
    for cand, value in candidates.items():
        for m in re.finditer(r"(?<!\w)" + re.escape(cand) + r"(?!\w)", norm) if cand else ():
            if not _NEGATION.search(norm[:m.start()]):
                out.append((m.start(), value))
    return sorted(out)


def find_label(text: str, labels: list[str]) -> str | None:
    """The one label the reply asserts: an answer prefix's label, else the only label asserted on
    the first line, else in the whole reply; None when none is, or several are at once."""
    candidates = {normalize_answer(lab): lab for lab in labels}
    if set(candidates.values()) >= set(NLI_LABELS):
        candidates.update(_NLI_ALIASES)
    lines = [line for line in text.splitlines() if line.strip()]
    for part in ([_PREFIX.sub("", lines[0])] if lines else []) + [text]:
        found = {value for _, value in _asserted(normalize_answer(part), candidates)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return None


# ---------------------------------------------------------------------------------------------
# qa


def choice_options(question: str, record: dict[str, Any] | None = None) -> list[str]:
    """The options a choice question offers: the record's ``choices``, "yes or no", or the
    alternatives around "or" in its last question ("...: 161 or 37?", "red, green or blue?")."""
    choices = (record or {}).get("choices")
    if isinstance(choices, list) and choices:
        return [str(c) for c in choices]
    if re.search(r"\byes\b\s*(?:,|/|or)\s*\bno\b", question, re.I):
        return ["yes", "no"]
    if _polarity(question):  # "Of 12 and 31, which is larger?", "Pick the larger: 12, 31."
        m = re.search(r"\b(?:between|of)\s+([\w.-]+)\s+and\s+([\w.-]+)\b", question, re.I)
        if m and not re.search(r"\bor\b", question, re.I):
            return [m.group(1), m.group(2)]
        m = re.search(r":\s*([^:?!]+?)[.?!]?\s*$", question)
        items = [p.strip(" '\"") for p in re.split(r",\s*(?:and\s+|or\s+)?|\s+(?:or|and)\s+", m.group(1))] if m else []
        if 2 <= len(items) <= 5 and all(0 < len(p.split()) <= 3 for p in items):
            return items
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", question.strip()) if re.search(r"\bor\b", s, re.I)]
    if not sentences:
        return []
    s = sentences[-1].rstrip("?.! ")
    first_or = re.search(r"\s+or\s+", s, re.I)
    head = s[:first_or.start()]
    cut = head.rfind(":") if ":" in head else head.find(",")
    if cut >= 0:
        segment = s[cut + 1:]
    else:  # "Is 17 bigger or smaller than 20": one word on each side of "or"
        segment = head.split()[-1] + " or " + s[first_or.end():].split()[0]
    parts = [p.strip(" '\"") for p in re.split(r",\s*(?:or\s+)?|\s+or\s+", segment, flags=re.I)]
    parts = [p for p in parts if p]
    if len(parts) < 2 or any(len(p.split()) > 4 for p in parts):
        return []
    return parts


def _polarity(text: str) -> int:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return (1 if words & _MORE else 0) - (1 if words & _LESS else 0)


def _choose(span: str, options: list[str], question: str) -> str | None:
    asked = _polarity(question)
    sym = re.match(r"\s*(\S+)\s*([<>])\s*(\S+)", span)  # "161 > 37"
    if sym and asked and len(options) == 2:
        bigger, smaller = (sym.group(1), sym.group(3)) if sym.group(2) == ">" else (sym.group(3), sym.group(1))
        pick = normalize_answer(bigger if asked > 0 else smaller)
        for o in options:
            if normalize_answer(o) == pick:
                return o
    norm = normalize_answer(span)
    cands = {normalize_answer(o): o for o in options if normalize_answer(o)}
    named = _asserted(norm, cands)
    chosen = {v for _, v in named}
    if len(chosen) == 1:
        return chosen.pop()
    if not chosen:
        return None
    others = lambda o: [x for x in options if x != o]  # noqa: E731
    for pos, opt in named:  # "161 is larger (than 37)", "37 is smaller than 161", "161 > 37"
        after = norm[pos + len(normalize_answer(opt)):]
        m = re.match(r"\s*(?:is|are|was)\s+(?:(?:much|a lot|far|slightly|the)\s+)*(\w+)", after)
        if not m:
            continue
        said = _polarity(m.group(1))
        if said and asked:
            if said == asked:
                return opt
            if len(options) == 2:
                return others(opt)[0]
    m = re.search(r"(\w+)\s+(?:number|one|value|option)?\s*is\s+(.+)$", norm)  # "the larger is 161"
    if m and asked and _polarity(m.group(1)) == asked:
        tail = {v for _, v in _asserted(m.group(2), cands)}
        if len(tail) == 1:
            return tail.pop()
    return None


def _content(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", normalize_answer(text)) if w not in _STOP}


def _open_answer(span: str, question: str) -> str:
    """The asserted side of "X is Y", then the one number the reply adds to the question's."""
    asked = _content(question)
    parts = _COPULA.split(span)
    answer = span
    if len(parts) >= 2:
        left, right = parts[0], _COPULA.split(span, maxsplit=1)[1]
        last_right = parts[-1]
        l_over, r_over = bool(_content(left) & asked), bool(_content(right) & asked)
        if normalize_answer(left) in _PRONOUN_SUBJECT or (l_over and not _content(last_right) & asked):
            answer = last_right
        elif r_over and not l_over:
            answer = left
        elif l_over:
            answer = right
    new = [n for n in dict.fromkeys(numbers_in(answer)) if n not in set(numbers_in(question))]
    if len(new) == 1 and normalize_answer(answer) != new[0]:
        return new[0]
    return answer.strip().strip("'\"`").strip()


def qa_answer(text: str, record: dict[str, Any] | None = None) -> str | None:
    first = next((line for line in text.splitlines() if line.strip()), "")
    span = _PREFIX.sub("", first.replace("**", "")).strip().rstrip(".!").strip()
    if not span:
        return None
    question = question_of(record)
    options = choice_options(question, record) if question else []
    if options:
        return _choose(span, options, question)
    answer = _open_answer(span, question)
    return answer.rstrip(".!").strip() or None


def extract_answer(task: str, text: str | None, record: dict[str, Any] | None = None) -> str | None:
    """The answer a reply asserts, in the form the task's metric compares (None: it asserts none)."""
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
        return qa_answer(text, record)
    return _PREFIX.sub("", text).strip() or None
