"""The support profile's conversations are what scripts/make_support_data.py writes, and hold what
issue-level promises say: 400+ conversations of 1-4 customer turns over nine intents, the facts a
right reply states, and no conversation's request inside another (no eval prompt in a train one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "edgedistill" / "profiles" / "data" / "support.jsonl"


def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


def test_the_support_file_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "support.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_support_data.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == DATA.read_bytes()


def test_conversations_intents_and_facts():
    rs = rows()
    assert len(rs) >= 400
    intents = Counter(r["intent"] for r in rs)
    assert len(intents) >= 9 and min(intents.values()) >= 40
    for r in rs:
        users = [m for m in r["messages"] if m["role"] == "user"]
        assert 1 <= len(users) <= 4 and r["messages"][-1]["role"] == "user"
        assert isinstance(r["facts"], list)
    # every intent of the policy but the declines names what a right reply must state
    assert all(r["facts"] for r in rs if r["intent"] != "off_policy")


def test_no_request_is_inside_another_conversation():
    def norm(s: str) -> str:
        return " " + " ".join(re.findall(r"[a-z0-9]+", s.lower())) + " "

    requests = [norm(m["content"]) for r in rs_users() for m in r]
    assert len(requests) == len(set(requests))
    finals = [norm(r["messages"][-1]["content"]) for r in rows()]
    whole = [norm(" ".join(m["content"] for m in r["messages"] if m["role"] == "user")) for r in rows()]
    inside = [(i, j) for i, f in enumerate(finals) for j, w in enumerate(whole) if i != j and f in w]
    assert inside == []


def rs_users() -> list[list[dict]]:
    """Each conversation's customer requests (its opener and follow-up turns left out)."""
    out = []
    for r in rows():
        users = [m for m in r["messages"] if m["role"] == "user"]
        n = len(users)
        out.append([users[-1]] + ([users[1]] if n >= 3 else []))
    return out
