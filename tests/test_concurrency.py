"""``bench --concurrency``: the sweep of a tiny GGUF artifact (and of a local GGUF teacher, by the
same harness) through the real serve engine on a loopback port, its per-level figures,
``users_supported`` under a target's service level, the ``min_users_supported`` gate, and the
report's headline recomputed from the per-artifact records."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgedistill.bench.concurrency import users_supported
from edgedistill.bench.measure import whole_answer_ms
from edgedistill.bench.run import parse_levels
from edgedistill.cli import cli
from edgedistill.errors import ConfigError
from test_bench import gguf_artifact, make_run

SETTINGS = {"threads": 1, "context": 128, "prompt_tokens": 8, "generate_tokens": 8, "repetitions": 1,
            "warmup": 1, "concurrency_requests": 2}
EVAL = [{"id": f"e{i}", "messages": [{"role": "user", "content": q}], "response": "x", "answer": "x"}
        for i, q in enumerate(["2+2?", "Capital of France?", "Name a colour.", "Say hi."])]


def target(folder: Path, name: str, **service_level) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "arch": platform.machine(), "cores": None,
        "runs": [{"runtime": "llama.cpp", "format": "gguf", "precisions": ["f32"]}],
        "settings": SETTINGS, "service_level": service_level}))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_gguf):
    """One run (teacher: the tiny GGUF, a local model) benched on a lenient target at 1 and 4
    users and on a strict one (no level can meet it) at 1 user."""
    tmp = tmp_path_factory.mktemp("conc")
    easy = target(tmp, "easy-x86", max_ttft_ms_p95=600000, min_tokens_per_s_per_user=0.5)
    strict = target(tmp, "strict-x86", max_ttft_ms_p95=0.001)
    run = make_run(tmp, EVAL, targets=[str(easy), str(strict)],
                   teacher={"backend": "gguf", "model": str(tiny_gguf), "base_url": None})
    gguf_artifact(run, tiny_gguf, "f32")
    results = [CliRunner().invoke(cli, ["bench", str(run.root), "--target", str(t), "--concurrency", levels])
               for t, levels in ((easy, "4,1"), (strict, "1"))]
    return run, results


def _rec(run, target: str, aid: str) -> dict:
    return json.loads((run.bench_dir / target / f"{aid}.json").read_text())


def test_sweep_levels_measured(swept):
    run, results = swept
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    for aid in ("gguf-f32", "teacher"):  # the teacher by the same harness
        rec = _rec(run, "easy-x86", aid)
        sweep = rec["concurrency"]
        assert sweep["engine"] == "continuous batching" and sweep["prompts"] == len(EVAL)
        assert sweep["torch_imported"] is False and sweep["prompt_source"] == "the run's eval prompts"
        assert [lv["users"] for lv in sweep["levels"]] == [1, 4]
        for lv in sweep["levels"]:
            assert lv["errors"] == 0 and lv["requests"] == 2 * lv["users"]
            assert lv["output_tokens"] > 0 and lv["peak_rss_mb"] > 0
            assert lv["tokens_per_s"] == pytest.approx(lv["output_tokens"] / lv["seconds"], rel=0.01)
            assert lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p95"] <= lv["e2e_ms"]["p95"]
            assert sum(lv["finish_reasons"].values()) == lv["requests"]
        assert rec["users_supported"] == 4 and "more users may fit" in rec["users_supported_reason"]
        assert all(lv["meets_service_level"] for lv in sweep["levels"])


def test_no_level_meets_a_strict_service_level(swept):
    run, _ = swept
    rec = _rec(run, "strict-x86", "gguf-f32")
    assert rec["users_supported"] == 0
    assert rec["users_supported_reason"].startswith("no level meets the service level: 1 users: p95 TTFT")


def test_min_users_supported_gate(swept):
    run, _ = swept
    result = CliRunner().invoke(cli, ["report", str(run.root), "--check", "--set", "gates.min_retention=null",
                                      "--set", "gates.min_users_supported=2"])
    assert result.exit_code == 1, result.output
    data = json.loads(run.report_json.read_text())
    failed = data["gates"]["failed"]
    assert [(f["gate"], f["target"], f["value"]) for f in failed] == [("min_users_supported", "strict-x86", 0)]
    art = data["artifacts"][0]
    assert art["bench"]["easy-x86"]["users_supported"] == 4
    assert any(c["gate"] == "min_users_supported" and c["verdict"] == "pass" and c["target"] == "easy-x86"
               for c in art["gates"]["checks"])


def test_headline_recomputed_from_the_records(swept):
    run, _ = swept
    CliRunner().invoke(cli, ["report", str(run.root), "--set", "gates.min_retention=null"])
    data = json.loads(run.report_json.read_text())
    h = data["headline"]["easy-x86"]
    t, s = _rec(run, "easy-x86", "teacher"), _rec(run, "easy-x86", "gguf-f32")
    assert h["artifact"] == "gguf-f32" and h["teacher_measured"] is True
    ta, sa = whole_answer_ms(t, t["generate_tokens"]), whole_answer_ms(s, s["generate_tokens"])
    assert h["answer_ms"]["reduction"] == pytest.approx(1 - sa / ta, abs=1e-3)
    assert h["peak_rss_mb"]["reduction"] == pytest.approx(1 - s["peak_rss_mb"] / t["peak_rss_mb"], abs=1e-3)
    assert h["weights_bytes"]["teacher"] == t["bytes"] and h["weights_bytes"]["reduction"] == 0.0
    assert h["users_supported_ratio"] == s["users_supported"] / t["users_supported"] == 1.0
    md = run.report_md.read_text()
    assert "## Headline: the teacher against the shipped artifact" in md and "users supported" in md
    assert "Headline" in run.report_html.read_text()


def test_users_supported_is_the_largest_level_meeting_it():
    def level(n, ttft, rate, errors=0):
        return {"users": n, "errors": errors, "ttft_ms": {"p95": ttft}, "tokens_per_s_per_user": {"p50": rate}}

    sweep = {"levels": [level(1, 100, 40), level(2, 300, 20), level(4, 900, 9), level(8, 2500, 4)]}
    got = users_supported(sweep, {"max_ttft_ms_p95": 2000, "min_tokens_per_s_per_user": 5})
    assert got["users_supported"] == 4
    assert "8 users: p95 TTFT 2500 ms > 2000 ms, median 4 tokens/s per user < 5" in got["users_supported_reason"]
    assert [lv["meets_service_level"] for lv in sweep["levels"]] == [True, True, True, False]
    failed = {"levels": [level(1, 100, 40, errors=1)]}
    assert users_supported(failed, {"max_ttft_ms_p95": 2000})["users_supported"] == 0
    assert users_supported(sweep, {})["users_supported"] is None
    assert users_supported({"error": "boom"}, {"max_ttft_ms_p95": 1})["users_supported_reason"] == "boom"


def test_bad_levels_exit_2(tmp_path):
    with pytest.raises(ConfigError):
        parse_levels("1,two")
    assert parse_levels("8, 1,2,2") == [1, 2, 8]
    run = make_run(tmp_path)
    result = CliRunner().invoke(cli, ["bench", str(run.root), "--concurrency", "0,4"])
    assert result.exit_code == 2 and "--concurrency" in result.output


def test_the_recipe_names_the_levels_every_target_sweeps(tmp_path, tiny_gguf):
    """bench.concurrency in the recipe: `edgedistill bench` (and so `run`) sweeps it with no flag."""
    easy = target(tmp_path, "easy-x86", max_ttft_ms_p95=600000, min_tokens_per_s_per_user=0.5)
    run = make_run(tmp_path, EVAL, targets=[str(easy)], bench={"concurrency": [2]})
    gguf_artifact(run, tiny_gguf, "f32")
    result = CliRunner().invoke(cli, ["bench", str(run.root), "--target", str(easy)])
    assert result.exit_code == 0, result.output
    rec = _rec(run, "easy-x86", "gguf-f32")
    assert [lv["users"] for lv in rec["concurrency"]["levels"]] == [2] and rec["users_supported"] == 2
