"""The embedded demo and the QA profile, end to end on real models (`pytest -m slow`).

Each runs the README's command in a subprocess on a fresh run directory: a real teacher (the demo's
in-process and batched, the QA profile's served by llama.cpp on loopback), training, merge, every
export format, quantization, eval, bench on cpu-x86 and the report. The demo takes about 14 minutes
on 2 cores (models cached), the QA profile about 10; stage timings are printed (`-s` shows them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedistill.formats.parity import LOGIT_TOLERANCE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"onnx", "ortgenai", "gguf"}  # the QA profile's; the demo's are what phones and Pis run
DEMO_FORMATS = {"ortgenai", "gguf"}


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgedistill.cli", *args], cwd=cwd, text=True,
                          capture_output=True, check=False)
    return proc, time.perf_counter() - t0


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {name: s.get("seconds") or 0.0 for name, s in stages.items()}


def _check_report(run_dir: Path, formats: set[str] = FORMATS) -> dict:
    data = json.loads((run_dir / "report.json").read_text())
    teacher = data["teacher"]["score"]
    assert teacher and teacher > data["student_base"]["score"]
    assert {a["format"] for a in data["artifacts"]} == formats
    for a in data["artifacts"]:
        assert a["score"] is not None and a["retention"] == pytest.approx(a["score"] / teacher, abs=1e-4)
        lo, hi = a["retention_ci95"]  # the paired bootstrap over the eval examples
        assert a["eval_n"] == data["eval"]["n"] and lo <= a["retention"] <= (hi if hi is not None else 9e9)
        bench = a["bench"]["cpu-x86"]
        assert "error" not in bench, bench
        assert bench["decode_tokens_per_s"]["p50"] > 0 and bench["peak_rss_mb"] > 0
        assert (run_dir / a["path"]).exists() and (run_dir / a["eval_file"]).is_file()
    for fp in ("onnx-fp32", "ortgenai-fp32", "gguf-f16"):  # fp exports are the merged student
        if fp.split("-")[0] not in formats:
            continue
        p = next(a for a in data["artifacts"] if a["id"] == fp)["parity"]
        assert p["max_abs_logit_diff"] <= LOGIT_TOLERANCE[fp.split("-")[1]]
        # greedy tokens equal, but for near ties the logit differences explain
        assert all(m is None or m <= 2 * p["max_abs_logit_diff"] + 1e-6 for m in p["divergence_margins"])
    assert (run_dir / "report.md").is_file() and "<img" in (run_dir / "report.html").read_text()
    return data


def test_demo_runs_end_to_end_and_the_student_improves(tmp_path):
    run_dir = tmp_path / "demo"
    proc, wall = _run(["run", "--run-dir", str(run_dir)], cwd=tmp_path)
    seconds = _stage_seconds(run_dir)
    print(f"\ndemo: exit {proc.returncode}, {wall:.0f} s wall, {sum(seconds.values()):.0f} s in stages:",
          json.dumps(seconds, indent=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _check_report(run_dir, DEMO_FORMATS)
    base, merged = data["student_base"]["score"], data["student_merged"]["score"]
    print(f"teacher {data['teacher']['score']}, student before {base}, after {merged}; "
          + ", ".join(f"{a['id']} {a['score']}" for a in data["artifacts"]))
    assert merged >= base + 0.2  # distillation measurably helps on 60 held-out questions
    assert data["gates"]["passed"] and data["smallest_passing"]["cpu-x86"]

    # the seed's claims beside the report's headline (the teacher GGUF benched alike): nothing re-measured
    claims = subprocess.run([sys.executable, str(ROOT / "scripts" / "seed_claims.py"), str(run_dir)],
                            text=True, capture_output=True, check=False)
    assert claims.returncode == 0, claims.stderr[-2000:]
    print(claims.stdout)
    h, c = data["headline"]["cpu-x86"], json.loads(claims.stdout.strip().splitlines()[-1])["targets"]["cpu-x86"]
    assert c["artifact"] == h["artifact"] == data["smallest_passing"]["cpu-x86"] and c["teacher_measured"]
    assert c["measured"]["latency_reduction"] == h["answer_ms"]["reduction"]
    assert 0 < h["answer_ms"]["reduction"] < 1 and 0 < h["peak_rss_mb"]["reduction"] < 1  # 135M student vs 1.5B teacher
    assert "## Headline: the teacher against the shipped artifact" in (run_dir / "report.md").read_text()

    # fresh sums and differences no run trained on: the teacher answers them, and every artifact
    probe = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_arithmetic.py"), str(run_dir),
                            "--n", "20"], text=True, capture_output=True, check=False)
    assert probe.returncode == 0, probe.stderr[-2000:]
    print(probe.stdout)
    rows = json.loads(probe.stdout.strip().splitlines()[-1])["models"]
    assert rows["teacher"]["all"]["n"] == 60 and rows["teacher"]["all"]["score"] >= 0.8
    assert {name.split("/")[-1] for name in rows if name != "teacher"} == {a["id"] for a in data["artifacts"]}
    assert all(0 <= r["all"]["retention"] <= 1.5 for name, r in rows.items() if name != "teacher")


def test_qa_profile_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "qa"
    proc, wall = _run(["run", str(ROOT / "profiles" / "qa.yaml"), "--run-dir", str(run_dir)], cwd=tmp_path)
    seconds = _stage_seconds(run_dir)
    print(f"\nqa: exit {proc.returncode}, {wall:.0f} s wall, {sum(seconds.values()):.0f} s in stages:",
          json.dumps(seconds, indent=1))
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a gate failed, and says which
    data = _check_report(run_dir)
    assert data["gates"]["passed"] == (proc.returncode == 0)
    if proc.returncode == 1:  # a failed gate, or an indeterminate one (gates.on_indeterminate: fail)
        failed = (data["gates"]["failed"] or data["gates"]["indeterminate"])[0]
        assert f"{failed['artifact']}: {failed['gate']}" in proc.stderr
    # a second run skips every stage: nothing changed
    proc2, wall2 = _run(["run", str(ROOT / "profiles" / "qa.yaml"), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc2.returncode == proc.returncode
    assert wall2 < wall / 3, (wall2, wall)
