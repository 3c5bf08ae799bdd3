"""The report's headline from hand-made records: which artifact it ships, the reductions and
multiples, and an endpoint teacher named as not measured on the target (tests/test_concurrency.py
recomputes it from a real bench)."""

from __future__ import annotations

import pytest

from edgedistill.bench.measure import whole_answer_ms
from edgedistill.report.headline import headline, markdown_lines
from test_bench import make_run


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
