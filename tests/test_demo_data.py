"""The demo's question files are what scripts/make_demo_data.py writes (a stranger can remake them),
and the train-only file shares no question with the file the eval split is drawn from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "edgedistill" / "profiles" / "data"


@pytest.mark.parametrize("name, flags", [("demo.jsonl", []), ("demo-rephrased.jsonl", ["--rephrased"]),
                                         ("demo-train.jsonl", ["--train"]), ("demo-forms.jsonl", ["--forms"])])
def test_the_demo_files_are_what_the_generator_writes(tmp_path, name, flags):
    out = tmp_path / name
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), *flags, "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (DATA / name).read_bytes()


def test_train_only_questions_are_new_arithmetic_ones():
    def rows(name):
        return [json.loads(line) for line in (DATA / name).read_text().splitlines()]

    demo, extra = {r["prompt"] for r in rows("demo.jsonl")}, [r["prompt"] for r in rows("demo-train.jsonl")]
    assert len(extra) == len(set(extra)) == 600 and not set(extra) & demo
    kinds = [r["kind"] for r in rows("demo-train.jsonl")]
    assert set(kinds) == {"add", "sub", "mul", "larger"} and kinds.count("larger") == 70


def test_train_wordings_are_not_the_rephrased_sets():
    """The reworded train questions teach the operation; the rephrased eval set must still ask in
    words the student never trained on, and each train question must still mean its answer."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_demo_data as m

    for kind, wordings in m.TRAIN_WORDINGS.items():
        assert not set(wordings) & set(m.REPHRASED[kind])
    rows = [json.loads(line) for line in (DATA / "demo-train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] in m.TRAIN_WORDINGS]
    ops = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}
    used = set()
    for r in rows:
        if r.get("format"):  # the question, then the form it asks for
            asks = [a.format(noun=m.NOUN[r["kind"]]) for a in m.TRAIN_FORM_ASKS[r["format"]]]
            r = {**r, "prompt": next(r["prompt"].removesuffix(" " + a) for a in asks if r["prompt"].endswith(a))}
        for w in m.TRAIN_WORDINGS[r["kind"]]:
            pattern = re.escape(w).replace(re.escape("{a}"), r"(?P<a>\d+)").replace(re.escape("{b}"), r"(?P<b>\d+)")
            hit = re.fullmatch(pattern, r["prompt"])
            if hit:
                used.add(w)
                assert str(ops[r["kind"]](int(hit["a"]), int(hit["b"]))) == r["answer"], r
                break
        else:
            raise AssertionError(f"not in TRAIN_WORDINGS: {r}")
    assert used == {w for ws in m.TRAIN_WORDINGS.values() for w in ws}


def test_every_fourth_train_question_asks_for_a_form_the_forms_set_asks_in_other_words():
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_demo_data as m

    train = [json.loads(line) for line in (DATA / "demo-train.jsonl").read_text().splitlines()]
    forms = [json.loads(line) for line in (DATA / "demo-forms.jsonl").read_text().splitlines()]
    asked = [r for r in train if r.get("format")]
    assert [r["id"] for r in asked] == [f"train-{i:04d}" for i in range(3, 600, 4)]
    assert sum(r["format"] == "sentence" for r in asked) == len(asked) // 2
    assert len(forms) == 72 and {r["kind"] for r in forms} == set(m.KINDS)
    assert sorted(r["format"] for r in forms) == ["sentence"] * 36 + ["value"] * 36
    train_asks = {a.format(noun=n) for asks in m.TRAIN_FORM_ASKS.values() for a in asks for n in m.NOUN.values()}
    for r in forms:  # asked in words no train question uses, and never "in one word" and a sentence
        assert not any(r["prompt"].endswith(a) for a in train_asks) and "Answer with one word" not in r["prompt"]


def test_train_kinds_are_checked(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--train",
                           "--kinds", "add,sums", "--out", str(tmp_path / "t.jsonl")], check=False, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown ['sums']" in done.stderr and not (tmp_path / "t.jsonl").exists()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--train",
                           "--kinds", "add,larger:many", "--out", str(tmp_path / "t.jsonl")], check=False, capture_output=True, text=True)
    assert done.returncode == 2 and "kind:most" in done.stderr and not (tmp_path / "t.jsonl").exists()
