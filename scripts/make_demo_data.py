"""Regenerate edgedistill/profiles/data/demo.jsonl: short questions with one gold answer each
(arithmetic, capitals, word puzzles, comparisons), the demo's QA task.

    python scripts/make_demo_data.py [--seed 20261128] [--n 300]

The same seed writes the same file. The instruction to answer briefly is not repeated in every
prompt: profiles/demo.yaml gives it once, as teacher.system_prompt, which every teacher record
(and so the student's training and eval prompts) carries.
"""

from __future__ import annotations

import argparse
import json
import random
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


def make(rng: random.Random, n: int) -> list[dict]:
    makers = []

    def add():
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"What is {a} + {b}?", str(a + b)

    def sub():
        a, b = rng.randint(20, 99), rng.randint(1, 19)
        return f"What is {a} - {b}?", str(a - b)

    def mul():
        a, b = rng.randint(2, 12), rng.randint(2, 12)
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

    makers = [add, sub, mul, capital, first_letter, last_letter, length, opposite, larger]
    seen, rows = set(), []
    while len(rows) < n:
        q, a = rng.choice(makers)()
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"demo-{len(rows):04d}", "prompt": q, "answer": a})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = make(random.Random(args.seed), args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {args.out}")


if __name__ == "__main__":
    main()
