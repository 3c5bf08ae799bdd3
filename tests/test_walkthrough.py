"""The "Distil your own model" walkthrough (README.md), run as it is written: its
recipe, its JSONL records and its commands are read out of the page's fenced blocks (the ones
marked ``<!-- tested: ... -->``), so the guide cannot drift from what the tool does.

The user's endpoint is a real llama.cpp server on loopback (SmolLM2-135M) reached through the
official openai client with a key in the variable the recipe names; the student is the tiny
2-layer Llama. To run in about a minute on 2 cores, the test replaces the guide's models and trims
steps and formats in the recipe (``FAST``: every key it changes is listed there); the commands run
exactly as the page gives them, each in its own process, as a user's shell or CI job would."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from edgedistill.recipes import load_recipe
from edgedistill.data import load_prompts
from edgedistill.evaluate.metrics import primary_metric, score_example
from edgedistill.registry import TASKS
from servers import llama_server

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "README.md"
SECRET = "sk-walkthrough-not-a-real-key-0042"
CAPITALS = [("Germany", "Berlin"), ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Russia", "Moscow"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Peru", "Lima"),
            ("Norway", "Oslo"), ("Kenya", "Nairobi")]


def fenced(tag: str) -> tuple[str, str]:
    """(language, body) of the first fenced block after ``<!-- tested: tag -->``."""
    text = GUIDE.read_text()
    at = text.index(f"<!-- tested: {tag} -->")
    m = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S).search(text, at)
    assert m, f"no fenced block after the {tag} marker"
    return m.group(1), m.group(2)


def format_rows() -> dict[str, dict]:
    """task -> its example record, from the table after ``<!-- tested: formats -->``."""
    text = GUIDE.read_text()
    table = text[text.index("<!-- tested: formats -->"):].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[3].startswith("`{"):
            rows[cells[0].strip("`")] = {"metric": cells[1], "record": json.loads(cells[3].strip("`"))}
    return rows


def fast(url: str, student: Path) -> dict:
    """What the test changes in the guide's recipe: its endpoint and models, and sizes."""
    return {
        "teacher": {"model": "smollm2", "base_url": url, "max_tokens": 16, "concurrency": 2,
                    "retries_on_wrong": 0, "min_success_ratio": 0.0},
        "student": {"model": str(student)},
        "train": {"max_steps": 2, "batch_size": 2, "dev_fraction": 0.0, "precision": "fp32"},
        "export": {"formats": ["gguf"], "parity_prompts": 1, "parity_max_new_tokens": 4,
                   "quantize": {"gguf": ["q8_0"], "calibration": "none"}},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def test_every_task_family_has_a_record_that_loads_and_scores():
    rows = format_rows()
    assert set(rows) == set(TASKS), "one example record per task family"
    for task, row in rows.items():
        rec = row["record"]
        assert row["metric"] == primary_metric(task)
        if "answer" in rec:  # the gold answer, given back as a reply, scores full marks
            assert score_example(task, rec["answer"], rec["answer"], record=rec)["score"] == 1.0, task


def test_the_guides_data_lines_are_prompt_records(tmp_path):
    lang, body = fenced("data")
    assert lang == "jsonl"
    path = tmp_path / "faq.jsonl"
    path.write_text(body)
    records = load_prompts(path)
    assert len(records) == len(body.strip().splitlines()) >= 2
    for task, row in format_rows().items():
        one = tmp_path / f"{task}.jsonl"
        one.write_text(json.dumps(row["record"]) + "\n")
        assert load_prompts(one)[0]["id"] == row["record"]["id"]


def test_the_guides_recipe_validates_as_written(tmp_path):
    lang, body = fenced("recipe")
    assert lang == "yaml" and body.startswith("# edgedistill run ")
    (tmp_path / "faq.jsonl").write_text(fenced("data")[1])
    (tmp_path / "faq.yaml").write_text(body)
    recipe = load_recipe(tmp_path / "faq.yaml")
    assert recipe.data.prompts == str(tmp_path / "faq.jsonl")
    assert recipe.teacher.api_key_env and recipe.teacher.backend == "openai"


def test_the_walkthrough_runs_from_recipe_to_report(smollm2_gguf, tiny_model_dir, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    guide_recipe = yaml.safe_load(fenced("recipe")[1])
    data_lines = [json.loads(line) for line in fenced("data")[1].strip().splitlines()]
    # faq.jsonl: the guide's lines, then more of the same shapes
    rows = list(data_lines)
    for i, (country, city) in enumerate(CAPITALS):
        shape = data_lines[i % len(data_lines)]
        rec = {"id": f"q-{len(rows) + 1:04d}",
               "prompt": f"What is the capital of {country}? Reply with the answer only."}
        if "answer" in shape:
            rec["answer"] = city
        assert set(rec) == set(shape)
        rows.append(rec)
    (work / guide_recipe["data"]["prompts"]).write_text("".join(json.dumps(r) + "\n" for r in rows))

    commands = [shlex.split(line, comments=True) for line in fenced("commands")[1].splitlines()]
    commands = [c for c in commands if c]
    exports = [c for c in commands if c[0] == "export"]
    assert [e[1].split("=")[0] for e in exports] == [guide_recipe["teacher"]["api_key_env"]], \
        "the guide exports the variable its recipe names"
    steps = [c for c in commands if c[0] == "edgedistill"]
    assert [s[1] for s in steps] == ["generate", "run", "report"]
    assert len(steps) + len(exports) == len(commands), "every line of the block is run or checked"

    log = tmp_path / "server.log"
    with llama_server(smollm2_gguf, threads=1, log_path=log) as url:
        recipe = merged(guide_recipe, fast(url, tiny_model_dir))
        (work / steps[0][2]).write_text(yaml.safe_dump(recipe, sort_keys=False))

        summary = tmp_path / "step-summary.md"
        env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
        env.pop(guide_recipe["teacher"]["api_key_env"], None)
        key_name = guide_recipe["teacher"]["api_key_env"]
        unset = subprocess.run([sys.executable, "-m", "edgedistill.cli", *steps[0][1:]], cwd=work, env=env,
                               text=True, capture_output=True, check=False, timeout=300)
        assert unset.returncode == 2 and f"${key_name} is not set" in unset.stdout + unset.stderr
        outcomes = {}
        for step in steps:
            # the key only where the teacher is asked, as the guide's CI job gives it
            step_env = {**env, key_name: SECRET} if step[1] == "generate" else env
            proc = subprocess.run([sys.executable, "-m", "edgedistill.cli", *step[1:]], cwd=work, env=step_env,
                                  text=True, capture_output=True, check=False, timeout=900)
            last = json.loads(proc.stdout.strip().splitlines()[-1])
            assert last["exit_code"] == proc.returncode, proc.stdout[-2000:]
            outcomes[step[1]] = (proc.returncode, proc.stdout + proc.stderr)
            assert proc.returncode in (0, 1), f"{shlex.join(step)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
            if step[1] != "report":
                assert proc.returncode == 0, f"{shlex.join(step)}\n{proc.stderr[-3000:]}"

    run_dir = work / steps[1][steps[1].index("--run-dir") + 1]
    report = json.loads((run_dir / "report.json").read_text())
    assert {a["id"] for a in report["artifacts"]} == {"gguf-f16", "gguf-q8_0"}
    assert report["teacher"]["model"] == "smollm2" and report["eval"]["n"] >= 2
    for a in report["artifacts"]:
        assert "error" not in a["bench"]["cpu-x86"] and a["bench"]["cpu-x86"]["peak_rss_mb"] > 0
    # report --check: exit 1 exactly when a gate failed, and the message names it
    code, output = outcomes["report"]
    assert code == (0 if report["gates"]["passed"] else 1)
    if code == 1:
        failed = (report["gates"]["failed"] or report["gates"]["indeterminate"])[0]
        assert failed["gate"] in output
    junit = ET.parse(work / steps[2][steps[2].index("--junit") + 1]).getroot()
    cases = junit.findall(".//testcase")
    assert cases and any("min_retention" in c.get("name", "") for c in cases)
    # report.md on the job's summary page, once: `run --until bench` leaves the report to `report`
    assert summary.read_text().count("# edgedistill report") == 1 and "min_retention" in summary.read_text()
    for path in run_dir.rglob("*"):  # the key never lands in the run
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
