"""Regenerate the demo's data: short questions with one gold answer each (arithmetic, capitals, word
puzzles, comparisons), the demo's QA task.

    python scripts/make_demo_data.py [--seed 20261128] [--n 300]          # data/demo.jsonl
    python scripts/make_demo_data.py --rephrased [--seed 7] [--n 90]       # data/demo-rephrased.jsonl
    python scripts/make_demo_data.py --train [--n 600] [--kinds add,sub,mul,larger:70]
                                                                           # data/demo-train.jsonl
    python scripts/make_demo_data.py --forms [--seed 11] [--n 72]          # data/demo-forms.jsonl

demo-train.jsonl holds more questions for training only (data.train_sets): the generator's next
questions after demo.jsonl's (same seed), so none repeats a demo.jsonl question, of the kinds
--kinds names (each at most as many times as it says). By default those are the sums, differences
and products, where a 135M student stays furthest behind its teacher after the demo's own train
split, and 70 comparisons (without them it answers comparisons worded differently worse); the
kinds it already answers about as well as the teacher get no more. Each sum, difference or
product is asked in one of five wordings in turn (TRAIN_WORDINGS: the generator's and four more,
none of the rephrased set's), so the student learns the operation, not one sentence.

Every fourth train-only question also states the form its answer must take, in turn only the
value or a whole sentence (TRAIN_FORM_ASKS), with ``"format": "value"`` or ``"sentence"`` on the
record: the teacher's answer becomes a label only in that form (evaluate.tasks.in_form), so the
student learns to do what a prompt asks about form, not one answer style for every prompt.
demo-forms.jsonl asks the nine kinds for one form or the other in words none of the train
questions use (EVAL_FORM_ASKS), half each, scored right only when the answer is also in the form
asked (docs/forms.md).

demo.jsonl uses one wording per kind of question. demo-rephrased.jsonl asks the same nine kinds
in other words (three wordings per kind, none of them the generator's), so a student that learnt
the task, not the generator's phrasing, keeps its score there; the demo scores it as an eval set
(data.eval_sets), never trained on. The same seed writes the same file. The instruction to
answer briefly is not repeated in every prompt: profiles/demo.yaml gives it once, as
teacher.system_prompt, which every teacher record (and so the student's training and eval
prompts) carries.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgedistill" / "profiles" / "data" / "demo.jsonl"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Norway": "Oslo", "Sweden": "Stockholm", "Portugal": "Lisbon", "Greece": "Athens",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Russia": "Moscow",
    "China": "Beijing", "India": "New Delhi", "Mexico": "Mexico City", "Peru": "Lima",
    "Argentina": "Buenos Aires", "Chile": "Santiago", "Turkey": "Ankara", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Finland": "Helsinki", "Denmark": "Copenhagen", "Hungary": "Budapest",
    "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern", "Cuba": "Havana",
    "South Korea": "Seoul", "Indonesia": "Jakarta", "Nigeria": "Abuja", "Morocco": "Rabat",
    "Brazil": "Brasilia", "Colombia": "Bogota", "Iran": "Tehran",
}
WORDS = ["apple", "banana", "cherry", "garden", "planet", "river", "window", "yellow", "silver",
         "forest", "orange", "pencil", "rocket", "castle", "dragon", "summer", "winter", "butter",
         "candle", "marble", "violet", "button", "island", "jungle", "kitten", "lemon", "mirror",
         "number", "pepper", "rabbit", "saddle", "ticket", "turtle", "valley", "wizard", "zebra"]
OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "early": "late",
             "happy": "sad", "open": "closed", "light": "dark", "wet": "dry", "full": "empty",
             "hard": "soft", "high": "low", "old": "new", "rich": "poor", "strong": "weak",
             "loud": "quiet", "thick": "thin", "long": "short", "left": "right", "true": "false"}


KINDS = ("add", "sub", "mul", "capital", "first", "last", "length", "opposite", "larger")
TRAIN_KINDS = ("add", "sub", "mul", "larger:70")  # kind[:most]
# the operands of each arithmetic question (scripts/probe_arithmetic.py draws fresh ones from them)
OPERANDS = {
    "add": lambda rng: (rng.randint(2, 60), rng.randint(2, 60)),
    "sub": lambda rng: (rng.randint(20, 99), rng.randint(1, 19)),
    "mul": lambda rng: (rng.randint(2, 12), rng.randint(2, 12)),
}


def make(rng: random.Random, n: int) -> list[dict]:
    makers = []

    def add():
        a, b = OPERANDS["add"](rng)
        return f"What is {a} + {b}?", str(a + b)

    def sub():
        a, b = OPERANDS["sub"](rng)
        return f"What is {a} - {b}?", str(a - b)

    def mul():
        a, b = OPERANDS["mul"](rng)
        return f"What is {a} times {b}?", str(a * b)

    def capital():
        country = rng.choice(sorted(CAPITALS))
        return f"What is the capital of {country}?", CAPITALS[country]

    def first_letter():
        w = rng.choice(WORDS)
        return f"What is the first letter of the word '{w}'?", w[0]

    def last_letter():
        w = rng.choice(WORDS)
        return f"What is the last letter of the word '{w}'?", w[-1]

    def length():
        w = rng.choice(WORDS)
        return f"How many letters are in the word '{w}'?", str(len(w))

    def opposite():
        w = rng.choice(sorted(OPPOSITES))
        return f"What is the opposite of '{w}'? Answer with one word.", OPPOSITES[w]

    def larger():
        a, b = rng.sample(range(1, 500), 2)
        return f"Which number is larger: {a} or {b}?", str(max(a, b))

    makers = dict(zip(KINDS, (add, sub, mul, capital, first_letter, last_letter, length, opposite, larger)))
    seen, rows = set(), []
    while len(rows) < n:
        kind = rng.choice(list(makers))
        q, a = makers[kind]()
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"demo-{len(rows):04d}", "prompt": q, "answer": a, "kind": kind})
    return rows


REPHRASED = {
    "add": ("Add {a} and {b}.", "What do you get when you add {a} to {b}?", "Compute the sum of {a} and {b}."),
    "sub": ("Subtract {b} from {a}.", "What is {a} minus {b}?", "If you take {b} away from {a}, what is left?"),
    "mul": ("Multiply {a} by {b}.", "What is the product of {a} and {b}?", "How much is {a} multiplied by {b}?"),
    "capital": ("Name the capital city of {c}.", "Which city is the capital of {c}?",
                "In which city is the government of {c} seated?"),
    "first": ("Which letter does the word '{w}' start with?", "Give the first letter of '{w}'.",
              "'{w}' begins with which letter?"),
    "last": ("Which letter does the word '{w}' end with?", "Give the final letter of '{w}'.",
             "What letter is at the end of '{w}'?"),
    "length": ("How long is the word '{w}', in letters?", "Count the letters in '{w}'.",
               "What is the number of letters in the word '{w}'?"),
    "opposite": ("Give the antonym of '{w}' in one word.", "What word means the opposite of '{w}'?",
                 "Name the opposite of '{w}'."),
    "larger": ("Which is bigger, {a} or {b}?", "Of {a} and {b}, which number is greater?",
               "Pick the larger number: {a}, {b}."),
}


# The train-only questions ask each sum, difference and product in one of five wordings in turn
# (the generator's own and four more, none of them REPHRASED's), so the student learns the
# operation, not one sentence; the rephrased eval set stays worded as nothing it trained on.
TRAIN_WORDINGS = {
    "add": ("What is {a} + {b}?", "What is {a} plus {b}?", "{a} + {b} = ?", "Find the total of {a} and {b}.",
            "How much is {a} plus {b}?"),
    "sub": ("What is {a} - {b}?", "{a} - {b} = ?", "What is {a} take away {b}?",
            "Find the difference between {a} and {b}.", "What is {b} less than {a}?"),
    "mul": ("What is {a} times {b}?", "{a} x {b} = ?", "What is {a} * {b}?", "Find {a} times {b}.",
            "How much is {a} times {b}?"),
}


# How a question asks for the form of its answer: only the value (named per kind) or a sentence.
NOUN = {"add": "number", "sub": "number", "mul": "number", "length": "number", "larger": "number",
        "capital": "city name", "first": "letter", "last": "letter", "opposite": "word"}
TRAIN_FORM_ASKS = {"value": ("Answer with the {noun} only.", "Give only the {noun}."),
                   "sentence": ("Answer in a full sentence.", "Please answer with a complete sentence.")}
EVAL_FORM_ASKS = {"value": ("Reply with just the {noun}, nothing else.", "Only the {noun}, please."),
                  "sentence": ("Reply in one whole sentence.", "Write your answer as a sentence.")}


def form_asked(row: dict, form: str, ask: str) -> dict:
    """``row`` whose question asks for ``form`` in the words ``ask`` (instead of the generator's own
    "Answer with one word.", where it has one)."""
    question = row["prompt"].removesuffix(" Answer with one word.")
    return {**row, "prompt": f"{question} {ask.format(noun=NOUN[row['kind']])}", "format": form}


def with_forms(rows: list[dict], every: int = 4) -> list[dict]:
    """Every ``every``-th row asks for a form: value and sentence in turn, each in its asks in turn."""
    out = []
    for i, r in enumerate(rows):
        if i % every == every - 1:
            k = i // every
            form = ("value", "sentence")[k % 2]
            asks = TRAIN_FORM_ASKS[form]
            r = form_asked(r, form, asks[(k // 2) % len(asks)])
        out.append(r)
    return out


def forms(rng: random.Random, n: int) -> list[dict]:
    """The nine kinds in the generator's wording, each asking for a form in EVAL_FORM_ASKS' words:
    an equal share of each kind, value and sentence in turn within a kind."""
    pool = make(rng, 40 * n)
    rows, taken = [], {}
    for r in pool:
        k = taken.get(r["kind"], 0)
        if k >= -(-n // len(KINDS)) or len(rows) >= n:
            continue
        taken[r["kind"]] = k + 1
        form = ("value", "sentence")[k % 2]
        asks = EVAL_FORM_ASKS[form]
        rows.append({**form_asked(r, form, asks[(k // 2) % len(asks)]), "id": f"forms-{len(rows):04d}"})
    return rows


def reworded(rows: list[dict]) -> list[dict]:
    """``rows`` with each arithmetic question in the next of its kind's TRAIN_WORDINGS."""
    out, turn = [], {}
    for r in rows:
        if r["kind"] in TRAIN_WORDINGS:
            a, b = re.findall(r"\d+", r["prompt"])
            i = turn[r["kind"]] = turn.get(r["kind"], -1) + 1
            wordings = TRAIN_WORDINGS[r["kind"]]
            r = {**r, "prompt": wordings[i % len(wordings)].format(a=a, b=b)}
        out.append(r)
    return out


def rephrased(rng: random.Random, n: int) -> list[dict]:
    """The nine kinds in other words: an equal share of each kind, each wording in turn."""
    values = {
        "add": lambda: (lambda a, b: ({"a": a, "b": b}, a + b))(rng.randint(2, 60), rng.randint(2, 60)),
        "sub": lambda: (lambda a, b: ({"a": a, "b": b}, a - b))(rng.randint(20, 99), rng.randint(1, 19)),
        "mul": lambda: (lambda a, b: ({"a": a, "b": b}, a * b))(rng.randint(2, 12), rng.randint(2, 12)),
        "capital": lambda: (lambda c: ({"c": c}, CAPITALS[c]))(rng.choice(sorted(CAPITALS))),
        "first": lambda: (lambda w: ({"w": w}, w[0]))(rng.choice(WORDS)),
        "last": lambda: (lambda w: ({"w": w}, w[-1]))(rng.choice(WORDS)),
        "length": lambda: (lambda w: ({"w": w}, len(w)))(rng.choice(WORDS)),
        "opposite": lambda: (lambda w: ({"w": w}, OPPOSITES[w]))(rng.choice(sorted(OPPOSITES))),
        "larger": lambda: (lambda a, b: ({"a": a, "b": b}, max(a, b)))(*rng.sample(range(1, 500), 2)),
    }
    kinds = list(REPHRASED)
    seen, rows = set(), []
    i = 0
    while len(rows) < n:
        kind = kinds[i % len(kinds)]
        fields, answer = values[kind]()
        q = REPHRASED[kind][(i // len(kinds)) % 3].format(**fields)
        i += 1
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"rephrased-{len(rows):04d}", "prompt": q, "answer": str(answer), "kind": kind})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rephrased", action="store_true", help="write the reworded eval set instead")
    ap.add_argument("--train", action="store_true", help="write the train-only questions instead")
    ap.add_argument("--forms", action="store_true", help="write the eval set that asks for forms instead")
    ap.add_argument("--seed", type=int, default=None, help="default: 20261128 (demo), 7 (rephrased), 11 (forms)")
    ap.add_argument("--n", type=int, default=None, help="default: 300 (demo), 90 (rephrased), 600 (train), 72 (forms)")
    ap.add_argument("--kinds", default=",".join(TRAIN_KINDS),
                    help="--train: the kinds kept, comma-separated, each optionally with the most kept (larger:70)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.train:
        demo_n, n = 300, args.n or 600
        try:
            most = {k: int(m) if m else n for k, _, m in (item.partition(":") for item in args.kinds.split(","))}
        except ValueError:
            ap.error(f"--kinds {args.kinds}: each item is a kind, or kind:most (a whole number)")
        unknown = set(most) - set(KINDS)
        if unknown:
            ap.error(f"--kinds: unknown {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
        stream = make(random.Random(20261128 if args.seed is None else args.seed), demo_n + 20 * n)[demo_n:]
        rows, taken = [], dict.fromkeys(most, 0)
        for r in stream:
            if len(rows) < n and taken.get(r["kind"], n) < most.get(r["kind"], 0):
                taken[r["kind"]] += 1
                rows.append(r)
        if len(rows) < n:
            ap.error(f"--train: the generator has only {len(rows)} more questions of {args.kinds}")
        rows = [{**r, "id": f"train-{i:04d}"} for i, r in enumerate(with_forms(reworded(rows)))]
        args.out = args.out or OUT.with_name("demo-train.jsonl")
    elif args.forms:
        rows = forms(random.Random(11 if args.seed is None else args.seed), args.n or 72)
        args.out = args.out or OUT.with_name("demo-forms.jsonl")
    elif args.rephrased:
        rows = rephrased(random.Random(7 if args.seed is None else args.seed), args.n or 90)
        args.out = args.out or OUT.with_name("demo-rephrased.jsonl")
    else:
        rows = make(random.Random(20261128 if args.seed is None else args.seed), args.n or 300)
        args.out = args.out or OUT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {args.out}")


if __name__ == "__main__":
    main()
