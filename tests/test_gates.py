"""Gates that know their noise: the paired bootstrap (real scipy), the ladder giving every rung its
intervals (the tiny model and the real SmolLM2 GGUF, evaluated), and the report's pass / fail /
indeterminate verdicts, ``gates.on_indeterminate``, ``gates.min_eval_n`` and ``gates.max_kld``
through the real CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgedistill.cli import cli
from edgedistill.data import read_jsonl
from edgedistill.evaluate import bootstrap
from edgedistill.report import build as rep

from test_bench import gguf_artifact, make_run
from test_report import run_with_results  # noqa: F401 -- the fixture: a run with eval and bench results


def width(ci):
    return ci[1] - ci[0]


# --- the bootstrap ----------------------------------------------------------------------------


def correlated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Teacher right on ~80% of examples; the student agrees with it on ~90% of them."""
    rng = np.random.default_rng(seed)
    teacher = (rng.random(n) < 0.8).astype(float)
    student = np.where(rng.random(n) < 0.9, teacher, 1 - teacher)
    return student, teacher


def test_retention_interval_is_paired_and_reproducible():
    from scipy.stats import bootstrap as scipy_bootstrap

    s, t = correlated(200)
    ci = bootstrap.retention_ci(s, t)
    assert ci == bootstrap.retention_ci(s, t)  # a fixed seed
    assert ci[0] < s.mean() / t.mean() < ci[1]
    # resampled as if the two rungs had answered different examples, the interval is wider:
    # pairing is what cancels the examples both find easy or hard
    unpaired = scipy_bootstrap((s, t), lambda a, b, axis=-1: a.mean(axis) / b.mean(axis), paired=False,
                               vectorized=True, method="percentile", rng=np.random.default_rng(0))
    assert width(ci) < 0.8 * (unpaired.confidence_interval.high - unpaired.confidence_interval.low)


def test_more_examples_narrow_the_interval():
    small, large = bootstrap.retention_ci(*correlated(60)), bootstrap.retention_ci(*correlated(600))
    assert width(large) < 0.6 * width(small)
    assert width(bootstrap.mean_ci(correlated(600)[0])) < 0.6 * width(bootstrap.mean_ci(correlated(60)[0]))


def test_degenerate_cases_are_answered_without_resampling():
    assert bootstrap.mean_ci([1.0, 1.0, 1.0]) == [1.0, 1.0]
    assert bootstrap.retention_ci([0.5, 0.5], [1.0, 1.0]) == [0.5, 0.5]
    assert bootstrap.retention_ci([1, 0, 1], [0, 0, 0]) is None  # the teacher scored 0
    assert bootstrap.mean_ci([0.3]) is None and bootstrap.retention_ci([1], [1]) is None
    s = [1, 0, 1, 1, 0, 0, 1, 0]
    assert bootstrap.retention_ci(s, s) == [1.0, 1.0]  # the same answers: retention 1 in every resample
    # a teacher right once in 60: it scores 0 in a third of the resamples, so no upper bound
    t = np.zeros(60)
    t[0] = 1
    assert bootstrap.retention_ci(t, t)[1] == 1.0
    assert bootstrap.retention_ci(np.roll(t, 1) + t, t)[1] is None
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap.retention_ci([1, 0], [1, 0, 1])


RECORDS = [{"id": f"e{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "response": str(2 * i) if i % 4 else "no idea", "answer": str(2 * i)} for i in range(1, 9)]


def test_the_ladder_gives_every_rung_its_intervals(tmp_path, tiny_model_dir, smollm2_gguf):
    from edgedistill.evaluate import ladder

    run = make_run(tmp_path, RECORDS, student={"model": str(tiny_model_dir)}, eval={"max_new_tokens": 4},
                   gates={"min_retention": None}, targets=[])
    shutil.copytree(tiny_model_dir, run.merged_dir)
    gguf_artifact(run, smollm2_gguf)
    ladder.evaluate(run)
    summary = json.loads((run.eval_dir / "summary.json").read_text())
    assert "_per_example" not in summary

    def scores(name):
        return {r["id"]: r["score"] for r in read_jsonl(run.root / summary["rungs"][name]["file"])}

    teacher = scores("teacher")
    assert sum(teacher.values()) == 6  # e4 and e8 answered "no idea"
    for name, rung in summary["rungs"].items():
        mine = scores(name)
        ids = sorted(mine)
        assert rung["n"] == len(RECORDS)
        assert rung["score_ci95"] == bootstrap.mean_ci([mine[i] for i in ids])
        assert rung["retention_ci95"] == bootstrap.retention_ci([mine[i] for i in ids], [teacher[i] for i in ids])
        lo, hi = rung["retention_ci95"]
        assert lo <= rung["retention"] <= (hi if hi is not None else float("inf"))
    assert summary["rungs"]["teacher"]["retention_ci95"] == [1.0, 1.0]

    result = CliRunner().invoke(cli, ["report", str(run.root)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    art = json.loads(run.report_json.read_text())["artifacts"][0]
    assert art["id"] == "gguf-q4_1" and art["eval_n"] == len(RECORDS)
    assert art["retention_ci95"] == summary["rungs"]["gguf-q4_1"]["retention_ci95"]
    assert art["score_ci95"] == summary["rungs"]["gguf-q4_1"]["score_ci95"]


# --- verdicts in the report -------------------------------------------------------------------

CIS = {"gguf-q8_0": [0.9, 1.0], "gguf-q4_k_m": [0.8, 0.98], "onnx-int4": [0.35, 0.62]}


def with_intervals(run, cis=CIS, n=50):
    path = run.eval_dir / "summary.json"
    summary = json.loads(path.read_text())
    for name, ci in cis.items():
        summary["rungs"][name].update(retention_ci95=ci, n=n)
    path.write_text(json.dumps(summary))
    return run


def report(run, *sets: str):
    args = ["report", str(run.root), "--check"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def artifact_gates(run) -> dict:
    return {a["id"]: a["gates"] for a in json.loads(run.report_json.read_text())["artifacts"]}


def test_min_retention_is_pass_fail_or_indeterminate_by_its_interval(run_with_results):
    run = with_intervals(run_with_results)
    result = report(run, "gates.min_retention=0.85")
    assert result.exit_code == 1
    out = result.output
    assert "onnx-int4: min_retention = 0.5 < limit 0.85 (95% CI [0.35, 0.62], n=50)" in out
    assert ("gguf-q4_k_m: min_retention = 0.9 (95% CI [0.8, 0.98], n=50): indeterminate against limit 0.85 "
            "(the limit lies inside the interval)") in out
    gates = artifact_gates(run)
    assert {k: g["verdict"] for k, g in gates.items()} == {
        "gguf-q8_0": "pass", "gguf-q4_k_m": "indeterminate", "onnx-int4": "fail"}
    assert gates["gguf-q4_k_m"]["passed"] is False and gates["gguf-q4_k_m"]["failed"] == []
    assert [f["gate"] for f in gates["gguf-q4_k_m"]["indeterminate"]] == ["min_retention"]
    data = json.loads(run.report_json.read_text())
    assert {"verdict", "passed", "failed", "indeterminate"} <= set(data["gates"])
    assert data["gates"]["verdict"] == "fail" and data["gates"]["on_indeterminate"] == "fail"
    assert [(f["artifact"], f["ci95"]) for f in data["gates"]["indeterminate"]] == [("gguf-q4_k_m", [0.8, 0.98])]
    for a in data["artifacts"]:
        assert a["retention_ci95"] == CIS[a["id"]] and a["eval_n"] == 50


def test_on_indeterminate_decides_the_exit_code(run_with_results):
    run = with_intervals(run_with_results)
    # 0.6 lies inside onnx-int4's [0.35, 0.62]; the others are clear of it
    result = report(run, "gates.min_retention=0.6")
    assert result.exit_code == 1 and "1 gate(s) indeterminate (gates.on_indeterminate: fail)" in result.output
    data = json.loads(run.report_json.read_text())
    assert data["gates"]["verdict"] == "indeterminate" and data["gates"]["passed"] is False
    assert data["smallest_passing"]["cpu-x86"] == "gguf-q4_k_m"

    result = report(run, "gates.min_retention=0.6", "gates.on_indeterminate=pass")
    assert result.exit_code == 0, result.output
    data = json.loads(run.report_json.read_text())
    assert data["gates"] == {**data["gates"], "verdict": "indeterminate", "passed": True, "failed": [],
                             "on_indeterminate": "pass"}
    assert data["smallest_passing"]["cpu-x86"] == "onnx-int4"  # counted as passing now
    assert "Verdict: indeterminate" in run.report_md.read_text()


def test_min_eval_n_refuses_to_judge_on_too_few_examples(run_with_results):
    run = with_intervals(run_with_results)
    result = report(run, "gates.min_retention=0.1", "gates.min_eval_n=100")
    assert result.exit_code == 1
    assert "gguf-q8_0: min_eval_n: refusing to judge on 50 eval example(s); gates.min_eval_n is 100" in result.output
    gates = artifact_gates(run)
    assert all([f["gate"] for f in g["failed"]] == ["min_eval_n"] for g in gates.values())
    assert report(run, "gates.min_retention=0.1", "gates.min_eval_n=50").exit_code == 0


def test_max_kld_judges_quantization_loss(run_with_results):
    run = with_intervals(run_with_results)
    # the artifact list is the fixture's stand-in (test_report.py says why); the quant_loss the
    # quantize stage records is added to it as the manifest would carry it
    arts = rep.list_artifacts(run)
    by_id = {a["id"]: a for a in arts}
    by_id["gguf-q4_k_m"]["quant_loss"] = {"kld": 0.05, "top1_agreement": 0.9}
    by_id["gguf-q8_0"]["quant_loss"] = {"kld": 0.01, "kld_ci95": [0.005, 0.03]}
    arts.append({**by_id["gguf-q8_0"], "id": "gguf-f16", "precision": "f16", "quant_loss": None})
    sets = ("gates.min_retention=null", "targets=[]")
    result = report(run, *sets, "gates.max_kld=0.02")
    assert result.exit_code == 1
    assert "gguf-q4_k_m: max_kld = 0.05 > limit 0.02" in result.output
    assert "onnx-int4: max_kld: no value (no quant_loss measured" in result.output
    gates = artifact_gates(run)
    assert gates["gguf-q8_0"]["verdict"] == "indeterminate"  # 0.02 inside [0.005, 0.03]
    assert gates["gguf-f16"]["verdict"] == "pass"  # full precision: nothing lost to quantization
    report(run, *sets, "gates.max_kld=0.04")
    gates = artifact_gates(run)
    assert {k: g["verdict"] for k, g in gates.items()} == {
        "gguf-q8_0": "pass", "gguf-f16": "pass", "gguf-q4_k_m": "fail", "onnx-int4": "fail"}
    assert json.loads(run.report_json.read_text())["artifacts"][0]["quant_loss"] == by_id["gguf-q8_0"]["quant_loss"]


def test_markdown_and_html_show_intervals_n_and_verdicts(run_with_results):
    run = with_intervals(run_with_results)
    report(run, "gates.min_retention=0.85")
    md, page = run.report_md.read_text(), run.report_html.read_text()
    # the ladder: retention, its interval and n; the artifacts: the same, and each verdict
    assert "| gguf-q4_k_m | export/gguf/model-gguf-q4_k_m.bin | 0.72 | – | 0.9 | [0.8, 0.98] | 50 |" in md
    assert "| gguf-q4_k_m | 106 | 0.9 [0.8, 0.98] n=50 |" in md
    assert "? indeterminate: min_retention" in md and "✗ fail: min_retention" in md and "✓ pass" in md
    assert "Indeterminate:" in md and "**Verdict: fail.**" in md
    assert "<td>0.9 [0.8, 0.98] n=50</td>" in page and "? indeterminate: min_retention" in page
    assert "Verdict: fail" in page and "the limit lies inside the 95% interval" in page
