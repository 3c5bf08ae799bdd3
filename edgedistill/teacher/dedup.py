"""Exact and near-duplicate prompts, and the deterministic train/eval split.

Near duplicates: Jaccard similarity of the prompts' token sets (words, punctuation and adjacent
word pairs, so "21 - 13" and "13 - 21" differ) at or above ``data.near_duplicate_threshold``.
Candidates come from prefix filtering (Bayardo et al., "Scaling up all pairs similarity search"):
two sets with Jaccard >= t share a token among the rarest ``|x| - ceil(t*|x|) + 1`` of each, so
only prompts sharing a rare token are compared — exact, and far from quadratic in practice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")


def prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def exact_key(text: str) -> str:
    return " ".join(text.lower().split())


def features(text: str) -> frozenset[str]:
    toks = _TOKEN.findall(text.lower())
    return frozenset(toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])])


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def near_duplicates(texts: list[str], threshold: float) -> dict[int, int]:
    """``{i: j}`` for each text i that nearly duplicates an earlier kept text j."""
    sets = [features(t) for t in texts]
    freq = Counter(f for s in sets for f in s)
    index: dict[str, list[int]] = defaultdict(list)
    dup: dict[int, int] = {}
    for i, s in enumerate(sets):
        order = sorted(s, key=lambda f: (freq[f], f))
        prefix = order[:len(order) - math.ceil(threshold * len(order)) + 1]
        candidates = sorted({j for f in prefix for j in index[f]})
        for j in candidates:
            other = sets[j]
            if min(len(s), len(other)) >= threshold * max(len(s), len(other)) and jaccard(s, other) >= threshold:
                dup[i] = j
                break
        else:
            for f in prefix:
                index[f].append(i)
    return dup


def dedupe(prompts: list[dict[str, Any]], texts: list[str], threshold: float
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept prompts, removed ``{"id", "duplicate_of", "kind"}``), first occurrence kept."""
    removed: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    survivors: list[int] = []
    for i, t in enumerate(texts):
        k = exact_key(t)
        if k in first:
            removed.append({"id": prompts[i]["id"], "duplicate_of": prompts[first[k]]["id"], "kind": "exact"})
        else:
            first[k] = i
            survivors.append(i)
    near = near_duplicates([texts[i] for i in survivors], threshold)
    for a, b in near.items():
        removed.append({"id": prompts[survivors[a]]["id"], "duplicate_of": prompts[survivors[b]]["id"],
                        "kind": "near"})
    kept = [prompts[i] for n, i in enumerate(survivors) if n not in near]
    return kept, removed


def split_ids(ids: list[str], eval_fraction: float, seed: int = 0) -> set[str]:
    """The eval ids: the ``round(n * eval_fraction)`` ids (at least one when the fraction is
    positive and n > 1) that come first when ranked by sha256(seed:id). Deterministic, and
    independent of the file's order."""
    if eval_fraction <= 0 or len(ids) < 2:
        return set()
    n_eval = min(len(ids) - 1, max(1, round(len(ids) * eval_fraction)))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n_eval])
