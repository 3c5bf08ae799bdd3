"""The demo's question files are what scripts/make_demo_data.py writes (a stranger can remake them),
and the train-only file shares no question with the file the eval split is drawn from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "edgedistill" / "profiles" / "data"


@pytest.mark.parametrize("name, flags", [("demo.jsonl", []), ("demo-rephrased.jsonl", ["--rephrased"]),
                                         ("demo-train.jsonl", ["--train"])])
def test_the_demo_files_are_what_the_generator_writes(tmp_path, name, flags):
    out = tmp_path / name
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), *flags, "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (DATA / name).read_bytes()


def test_train_only_questions_never_repeat_a_demo_question():
    def questions(name):
        return [json.loads(line)["prompt"] for line in (DATA / name).read_text().splitlines()]

    demo, extra = questions("demo.jsonl"), questions("demo-train.jsonl")
    assert len(extra) == len(set(extra)) == 450 and not set(extra) & set(demo)
