"""Output for CI systems (issue 15, part 5): ``report --junit FILE`` writes one JUnit test case per
(artifact, target, gate) agreeing with the exit code of ``--check``; with GITHUB_STEP_SUMMARY set,
report.md is appended there; the last stdout line is one JSON object naming what was written."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from click.testing import CliRunner

from edgedistill.cli import cli
from edgedistill.report.ci import cases
from test_report import run_with_results  # noqa: F401  (the fixture: eval + cpu-x86 bench records)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def junit_cases(path) -> dict[tuple[str, str], ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {(tc.get("classname"), tc.get("name")): tc for tc in root.iter("testcase")}


def test_junit_has_a_case_per_artifact_target_gate_and_matches_the_exit_code(run_with_results, tmp_path):
    run = run_with_results
    junit = tmp_path / "ci" / "gates.xml"
    result = invoke("report", str(run.root), "--check", "--junit", str(junit),
                    "--set", "gates.max_ttft_ms=100")
    assert result.exit_code == 1  # onnx-int4: retention 0.5 < 0.85 and TTFT 110 ms > 100 ms
    got = junit_cases(junit)
    for aid in ("gguf-q8_0", "gguf-q4_k_m", "onnx-int4"):
        assert (f"edgedistill.{aid}", "min_retention") in got
        assert (f"edgedistill.{aid}", "max_ttft_ms on cpu-x86") in got
    failed = {k for k, tc in got.items() if tc.find("failure") is not None}
    assert failed == {("edgedistill.onnx-int4", "min_retention"),
                      ("edgedistill.onnx-int4", "max_ttft_ms on cpu-x86")}
    message = got[("edgedistill.onnx-int4", "max_ttft_ms on cpu-x86")].find("failure").get("message")
    assert "110" in message and "100" in message
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "2" and int(suite.get("tests")) == len(got)
    report = json.loads(run.report_json.read_text())
    assert len(report["gates"]["failed"]) == 2  # the JUnit file and report.json agree
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["junit"] == str(junit) and out["exit_code"] == 1 and out["gates_passed"] is False

    result = invoke("report", str(run.root), "--check", "--junit", str(junit),
                    "--set", "gates.min_retention=0.5", "--set", "gates.max_ttft_ms=200")
    assert result.exit_code == 0, result.output
    assert not [tc for tc in junit_cases(junit).values() if tc.find("failure") is not None]


def test_indeterminate_and_unchecked_gates_in_junit():
    """A report as gates.py writes it: every judged gate with its verdict under ``checks``."""
    def art(aid, checks):
        return {"id": aid, "bench": {}, "gates": {"checks": checks}}

    data = {"run_dir": "RUN", "gate_limits": {"min_retention": 0.9, "on_indeterminate": "fail"},
            "artifacts": [
                art("a", [{"gate": "min_retention", "verdict": "indeterminate", "value": 0.9, "limit": 0.9,
                           "ci95": [0.8, 1.0], "n": 60}]),
                art("b", [{"gate": "max_peak_rss_mb", "target": "raspberry-pi-5", "source": "target budget",
                           "verdict": "unchecked", "value": None, "limit": 500, "reason": "measured on ci"},
                          {"gate": "runs", "target": "raspberry-pi-5", "verdict": "fail", "value": None,
                           "limit": None, "reason": "failed to load or run: boom"}])],
            "gates": {"passed": False, "failed": []}}
    got = {(c.artifact, c.target, c.gate): c for c in cases(data)}
    assert got[("a", None, "min_retention")].failed  # indeterminate counts as failed by default
    assert not got[("b", "raspberry-pi-5", "max_peak_rss_mb")].failed
    assert got[("b", "raspberry-pi-5", "max_peak_rss_mb")].verdict == "unchecked"
    assert got[("b", "raspberry-pi-5", "runs")].failed
    lenient = {**data, "gate_limits": {**data["gate_limits"], "on_indeterminate": "pass"}}
    assert not next(c for c in cases(lenient) if c.artifact == "a").failed


def test_github_step_summary_gets_report_md_appended(run_with_results, tmp_path, monkeypatch):
    run = run_with_results
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = invoke("report", str(run.root))
    assert result.exit_code == 0, result.output
    md = run.report_md.read_text()
    text = summary.read_text()
    assert text.startswith("earlier step\n") and md.strip() in text
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["step_summary"] == str(summary) and out["report_md"] == str(run.report_md)
    invoke("report", str(run.root), "--check")  # fails (exit 1) and still appends
    assert summary.read_text().count("## Retention ladder") == 2


def test_nothing_is_published_when_report_did_not_write(tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = invoke("report", str(tmp_path / "no-run"), "--junit", str(tmp_path / "j.xml"))
    assert result.exit_code == 2
    assert not summary.exists() and not (tmp_path / "j.xml").exists()
    assert json.loads(result.stdout.strip().splitlines()[-1])["exit_code"] == 2
