"""scripts/probe_arithmetic.py: fresh sums and differences no run trained on, asked of the teacher
GGUF and every GGUF artifact, each score with its interval."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_recipe
from edgedistill.recipes import load_recipe
from edgedistill.errors import DataError
from edgedistill.formats.export import export
from edgedistill.formats.quantize import quantize
from edgedistill.rundir import Run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_data as demo  # noqa: E402
import probe_arithmetic as probe  # noqa: E402

DATA = ROOT / "edgedistill" / "profiles" / "data"


def _operands(question: str) -> tuple[int, int]:
    a, b = (int(x) for x in re.findall(r"\d+", question))
    return a, b


def test_questions_are_new_pairs_with_right_answers_in_both_wordings():
    seen = set()
    for f in DATA.glob("demo*.jsonl"):
        seen |= {probe.numbers_of(q) for q in probe.prompts_in(f)}
    assert len(seen) > 600  # the pairs of the demo's sums, differences, products and comparisons
    recs = probe.questions(40, 3, seen, "Reply with the answer only.")
    kinds = [r["kind"] for r in recs]
    assert {k: kinds.count(k) for k in probe.COLUMNS} == {"add": 40, "sub": 40, "add-reworded": 20,
                                                          "sub-reworded": 20}
    pairs = [probe.numbers_of(r["messages"][-1]["content"]) for r in recs]
    assert len(set(pairs)) == len(recs) and not set(pairs) & seen
    assert all(r["messages"][0] == {"role": "system", "content": "Reply with the answer only."} for r in recs)
    templates = {"add": demo.REPHRASED["add"], "sub": demo.REPHRASED["sub"]}
    for r in recs:
        q, kind = r["messages"][-1]["content"], r["kind"].split("-")[0]
        words = templates[kind] if r["kind"].endswith("reworded") else (probe.WORDINGS[kind],)
        hit = next(re.fullmatch(re.escape(w).replace(re.escape("{a}"), r"(?P<a>\d+)")
                                .replace(re.escape("{b}"), r"(?P<b>\d+)"), q) for w in words
                   if re.fullmatch(re.escape(w).replace(re.escape("{a}"), r"\d+").replace(re.escape("{b}"), r"\d+"), q))
        a, b = int(hit["a"]), int(hit["b"])
        assert r["answer"] == str(a + b if kind == "add" else a - b)
        # the generator's operand ranges: a fair probe of the demo's questions
        assert (2 <= a <= 60 and 2 <= b <= 60) if kind == "add" else (20 <= a <= 99 and 1 <= b <= 19)
    # the same seed asks the same questions; no system prompt, no system turn
    assert probe.questions(40, 3, seen, "Reply with the answer only.") == recs
    assert all(len(r["messages"]) == 1 for r in probe.questions(5, 3, seen, None))


def test_a_pair_asked_in_either_order_or_wording_counts_as_seen(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"prompt": "Find the total of 12 and 30."}) + "\n\n"
                 + json.dumps({"messages": [{"role": "system", "content": "Reply."},
                                            {"role": "user", "content": "What is 45 - 7?"}]}) + "\n")
    assert probe.prompts_in(f) == ["Find the total of 12 and 30.", "What is 45 - 7?"]
    seen = {probe.numbers_of(q) for q in probe.prompts_in(f)}
    assert seen == {(12, 30), (7, 45)}
    f.write_text(f.read_text() + '{"prompt": "What is 1 + 2?"\n')
    with pytest.raises(DataError, match="line 4: not valid JSON"):
        probe.prompts_in(f)
    # every sum pair but one taken: the probe must ask exactly the one left, and then give up
    every = {tuple(sorted((a, b))) for a in range(2, 61) for b in range(2, 61)}
    left = (17, 33)
    recs = probe.questions(1, 0, (every - {left}) | {probe.numbers_of("1 20")}, None)
    assert probe.numbers_of(recs[0]["messages"][0]["content"]) == left
    with pytest.raises(DataError, match="fewer than 2 new pairs of numbers for add: lower --n"):
        probe.questions(2, 0, every - {left}, None)


def test_summary_gives_intervals_and_the_share_of_the_teacher_kept():
    kinds = ["add"] * 4 + ["sub"] * 4
    teacher = [1.0] * 8
    student = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    s = probe.summarize(student, kinds, teacher)
    assert s["add"]["score"] == 0.75 and s["sub"]["score"] == 0.25 and "add-reworded" not in s
    lo, hi = s["all"]["ci95"]
    assert lo < 0.5 < hi and s["all"]["n"] == 8
    assert s["all"]["retention"] == 0.5 and s["all"]["retention_ci95"][0] < 0.5 < s["all"]["retention_ci95"][1]
    assert "retention" not in probe.summarize(teacher, kinds, None)["all"]


def test_the_script_asks_the_teacher_and_every_artifact_of_a_run(tmp_path, tiny_model_dir, tiny_gguf):
    recipe = load_recipe(write_recipe(
        tmp_path / "recipe", teacher={"model": str(tiny_gguf)}, eval={"max_new_tokens": 4},
        export={"formats": ["ortgenai", "gguf"], "parity_prompts": 1, "parity_max_new_tokens": 4,
                "quantize": {"onnx": [], "gguf": ["q8_0"], "ortgenai": []}}))
    run = Run.create(tmp_path / "run", recipe)
    with run.begin("merge") as stage:
        shutil.copytree(tiny_model_dir, stage.output(run.merged_dir))
    export(run)
    quantize(run)
    script = [sys.executable, str(ROOT / "scripts" / "probe_arithmetic.py"), str(run.root), "--n", "4"]
    proc = subprocess.run(script, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["teacher"] == str(tiny_gguf) and out["n"] == 4
    assert sorted(out["models"]) == ["run/gguf-f16", "run/gguf-q8_0", "run/ortgenai-fp32", "teacher"]
    for row in out["models"].values():
        assert {c: row[c]["n"] for c in probe.COLUMNS} == {"add": 4, "sub": 4, "add-reworded": 2, "sub-reworded": 2}
        assert row["all"]["n"] == 12 and 0.0 <= row["all"]["score"] <= 1.0
    assert "run/gguf-q8_0" in proc.stdout and "sub-reworded" in proc.stdout
    # every model asked the same questions: the merged student's exports answer alike
    assert out["models"]["run/ortgenai-fp32"]["all"]["score"] == out["models"]["run/gguf-f16"]["all"]["score"]
    only = subprocess.run([*script, "--formats", "gguf"], capture_output=True, text=True, check=False)
    assert only.returncode == 0 and "ortgenai" not in only.stdout.splitlines()[-1]
    # two runs of the same name are told apart by their paths, not merged into one row
    twin = tmp_path / "other" / "run"
    shutil.copytree(run.root, twin)
    both = subprocess.run([*script[:3], str(twin), "--n", "2", "--formats", "gguf"],
                          capture_output=True, text=True, check=False)
    assert both.returncode == 0, both.stderr[-2000:]
    assert sorted(json.loads(both.stdout.strip().splitlines()[-1])["models"]) == sorted(
        ["teacher", *(f"{root}/gguf-{p}" for root in (run.root, twin) for p in ("f16", "q8_0"))])
    # not a run: a one-line error, exit 2, no traceback
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_arithmetic.py"), str(tmp_path / "nope")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
