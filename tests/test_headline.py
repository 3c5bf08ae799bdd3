"""The report's headline from hand-made records: which artifact it ships, the reductions and
multiples, and an endpoint teacher named as not measured on the target (tests/test_concurrency.py
recomputes it from a real bench); scripts/seed_claims.py and the README's sentence read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.bench.measure import whole_answer_ms
from edgedistill.report.headline import headline, markdown_lines
from test_bench import gguf_artifact, make_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_demo_table  # noqa: E402
import seed_claims  # noqa: E402


def rec(ttft: float, tok_s: float, rss: float, size: int, users: int | None) -> dict:
    return {"ttft_ms": {"p50": ttft}, "decode_tokens_per_s": {"p50": tok_s}, "peak_rss_mb": rss,
            "bytes": size, "generate_tokens": 32, "on_target": True, "users_supported": users,
            "users_supported_reason": "r", "service_level": {"max_ttft_ms_p95": 2000}}


ARTS = [{"id": "gguf-q4_k_m", "bytes": 100, "retention": 0.9, "retention_ci95": [0.85, 0.95], "eval_n": 100},
        {"id": "gguf-f16", "bytes": 300, "retention": 0.95, "retention_ci95": [0.9, 1.0], "eval_n": 100}]
BENCH = {"cpu": {"teacher": rec(400, 16, 1500, 1000, 2), "gguf-q4_k_m": rec(60, 80, 200, 100, 8),
                 "gguf-f16": rec(80, 50, 400, 300, 6)}}


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def test_teacher_against_the_smallest_passing(run):
    h = headline(run, ARTS, {"cpu": {"smallest_passing": "gguf-q4_k_m"}}, BENCH)["cpu"]
    t, s = BENCH["cpu"]["teacher"], BENCH["cpu"]["gguf-q4_k_m"]
    assert h["artifact"] == "gguf-q4_k_m" and h["teacher_measured"] and h["on_target"]
    ta, sa = whole_answer_ms(t, 32), whole_answer_ms(s, 32)
    assert h["answer_ms"]["reduction"] == pytest.approx(1 - sa / ta, abs=1e-4)
    assert h["answer_ms"]["multiple"] == pytest.approx(ta / sa, abs=1e-3)
    assert h["peak_rss_mb"]["reduction"] == pytest.approx(1 - 200 / 1500, abs=1e-4)
    assert h["weights_bytes"] == {"teacher": 1000, "artifact": 100, "reduction": 0.9, "multiple": 10.0}
    assert h["users_supported"]["multiple"] == h["users_supported_ratio"] == 4.0
    assert h["retention"] == 0.9 and h["retention_ci95"] == [0.85, 0.95]
    md = "\n".join(markdown_lines({"headline": {"cpu": h}}))
    assert "| users supported | 2 | 8 | 4.0x |" in md and "90.0% smaller (10.0x)" in md


def test_without_a_passing_artifact_the_best_retention_ships(run):
    h = headline(run, ARTS, {"cpu": {"smallest_passing": None}}, BENCH)["cpu"]
    assert h["artifact"] == "gguf-f16" and h["shipped_basis"].startswith("no artifact passes every gate")


def test_a_teacher_serving_nobody_has_no_ratio(run):
    bench = {"cpu": {**BENCH["cpu"], "teacher": rec(4000, 2, 1500, 1000, 0)}}
    h = headline(run, ARTS, {"cpu": {"smallest_passing": "gguf-q4_k_m"}}, bench)["cpu"]
    assert h["users_supported_ratio"] is None and "serves no user" in h["users_supported"]["note"]


def test_an_endpoint_teacher_is_not_on_the_target(run):
    bench = {"cpu": {k: v for k, v in BENCH["cpu"].items() if k != "teacher"}}
    h = headline(run, ARTS, {"cpu": {"smallest_passing": "gguf-q4_k_m"}}, bench)["cpu"]
    assert h["teacher_measured"] is False and "answer_ms" not in h and h["note"]


def _benched_run(tmp_path: Path):
    """A run with one registered GGUF artifact, its eval summary, and cpu-x86 bench records of
    the artifact and the teacher as the bench stage writes them; no report yet."""
    run = make_run(tmp_path)
    fake = tmp_path / "student.gguf"
    fake.write_bytes(b"GGUF" + bytes(96))
    gguf_artifact(run, fake, "q4_k_m")
    run.eval_dir.mkdir()
    rungs = {"teacher": {"score": 0.9, "retention": 1.0},
             "gguf-q4_k_m": {"score": 0.81, "retention": 0.9, "retention_ci95": [0.85, 0.95], "artifact": True}}
    (run.eval_dir / "summary.json").write_text(json.dumps(
        {"metric": "exact_match", "reference": "gold", "n": 100, "max_new_tokens": 32, "rungs": rungs}))
    bdir = run.bench_dir / "cpu-x86"
    bdir.mkdir(parents=True)
    for aid, r in (("teacher", BENCH["cpu"]["teacher"]), ("gguf-q4_k_m", BENCH["cpu"]["gguf-q4_k_m"])):
        (bdir / f"{aid}.json").write_text(json.dumps({**r, "id": aid}))
    return run


def _seed_claims(run) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "seed_claims.py"), str(run.root)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_seed_claims_reads_the_reports_headline(tmp_path):
    """The script measures nothing: it runs `edgedistill report` where report.json is missing or
    older than the bench, and every figure it prints is the headline's."""
    run = _benched_run(tmp_path)
    proc, out = _seed_claims(run)
    assert "running `edgedistill report" in proc.stderr and run.report_json.is_file()
    h = json.loads(run.report_json.read_text())["headline"]["cpu-x86"]
    c = out["targets"]["cpu-x86"]
    assert c["artifact"] == "gguf-q4_k_m" and c["teacher_measured"] is True
    assert c["measured"] == {"latency_reduction": h["answer_ms"]["reduction"],
                             "memory_reduction": h["peak_rss_mb"]["reduction"],
                             "retention": 0.9, "users_multiple": 4.0}
    assert c["verdicts"] == {"latency_reduction": "fail", "memory_reduction": "fail",  # 80.9% < 85%, 86.7% < 95%
                             "retention": "indeterminate", "users_multiple": "fail"}  # 0.92 in [0.85, 0.95]
    assert out["seed"] == seed_claims.SEED
    assert "86.7% ✗" in proc.stdout and "2 → 8" in proc.stdout

    proc, _ = _seed_claims(run)  # fresh: not rewritten
    assert "running `edgedistill report" not in proc.stderr
    teacher = run.bench_dir / "cpu-x86" / "teacher.json"
    rec = json.loads(teacher.read_text())
    teacher.write_text(json.dumps({**rec, "users_supported": 1}))
    later = run.report_json.stat().st_mtime + 5
    os.utime(teacher, (later, later))  # a bench newer than the report: it is rewritten first
    proc, out = _seed_claims(run)
    assert "running `edgedistill report" in proc.stderr
    assert out["targets"]["cpu-x86"]["users_supported"]["teacher"] == 1
    assert out["targets"]["cpu-x86"]["measured"]["users_multiple"] == 8.0


def test_the_readme_sentence_comes_from_the_headline(run):
    h = headline(run, ARTS, {"cpu-x86": {"smallest_passing": "gguf-q4_k_m"}}, {"cpu-x86": BENCH["cpu"]})
    text = gen_demo_table.headline_sentence(h)
    t, s = BENCH["cpu"]["teacher"], BENCH["cpu"]["gguf-q4_k_m"]
    less = round(100 * (1 - whole_answer_ms(s, 32) / whole_answer_ms(t, 32)))
    assert f"{less}% less time to a whole 32-token answer" in text
    assert "87% lower peak RSS, 90% smaller weights" in text
    assert "90% retention [85%, 95%]; users at once under the service level (p95 TTFT ≤ 2000 ms): 8 against " \
        "the teacher's 2, 4.0x." in text
    assert "the seed's 85% lower latency, 95% lower memory, 92% retention and 10x users" in text

    no_sweep = {"cpu-x86": {k: {**v, "users_supported": None, "users_supported_reason": None}
                            for k, v in BENCH["cpu"].items()}}
    text = gen_demo_table.headline_sentence(headline(run, ARTS, {"cpu-x86": {"smallest_passing": "gguf-q4_k_m"}},
                                                     no_sweep))
    assert text.endswith("; users at once: not measured, no concurrency sweep (bench --concurrency 1,2,4,8,16).")

    no_teacher = {"cpu-x86": {k: v for k, v in BENCH["cpu"].items() if k != "teacher"}}
    h = headline(run, ARTS, {"cpu-x86": {"smallest_passing": "gguf-q4_k_m"}}, no_teacher)
    text = gen_demo_table.headline_sentence(h)
    assert "keeps 90% retention [85%, 95%] of the teacher's score; the teacher was not measured" in text
    assert "less time" not in text
