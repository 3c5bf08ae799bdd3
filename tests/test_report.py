"""report: the report.json contract, gates and their exit codes through the real CLI, the
smallest passing artifact per target, and the rendered Markdown/HTML with embedded plots."""

from __future__ import annotations

import base64
import json
import re

import pytest
from click.testing import CliRunner

from edgedistill.report import build as rep
from edgedistill.cli import cli
from edgedistill.report.plots import pareto_front, tradeoff_figure, tradeoff_plot, tradeoff_series

from test_bench import make_run

TEACHER = 0.8
SCORES = {"gguf-q8_0": 0.76, "gguf-q4_k_m": 0.72, "onnx-int4": 0.4}
SIZES = {"gguf-q8_0": 145_000_000, "gguf-q4_k_m": 106_000_000, "onnx-int4": 90_000_000}


def _bench_record(aid: str, tok_s: float, ttft: float, rss: float) -> dict:
    return {"id": aid, "format": aid.split("-")[0], "precision": aid.split("-")[1], "bytes": SIZES[aid],
            "runtime": "llama.cpp", "threads": 2, "load_s": 0.1, "peak_rss_mb": rss,
            "ttft_ms": {"p50": ttft, "p90": ttft * 1.2, "p99": ttft * 1.3},
            "decode_tokens_per_s": {"p50": tok_s, "p90": tok_s * 0.9, "p99": tok_s * 0.85},
            "token_latency_ms": {"p50": 1e3 / tok_s, "p90": 1.1e3 / tok_s, "p99": 1.3e3 / tok_s},
            "roofline_fraction": 0.5, "bandwidth_gbs": 20.0, "on_target": True, "target": "cpu-x86",
            "measured_on": {"hostname": "ci", "arch": "x86_64", "cpu": "test cpu"}}


@pytest.fixture
def run_with_results(tmp_path, monkeypatch):
    """A run with an eval summary and cpu-x86 bench records written as the stages write them."""
    run = make_run(tmp_path, gates={"min_retention": 0.85})
    rungs = {"teacher": {"score": TEACHER}, "student_base": {"score": 0.4}, "student_merged": {"score": 0.78}}
    rungs.update({k: {"score": v, "artifact": True} for k, v in SCORES.items()})
    for name, r in rungs.items():
        r.update(retention=round(r["score"] / TEACHER, 6), file=f"eval/{name}.jsonl", model=name)
    run.eval_dir.mkdir()
    (run.eval_dir / "summary.json").write_text(json.dumps(
        {"metric": "exact_match", "reference": "gold", "n": 50, "max_new_tokens": 32, "rungs": rungs}))
    bdir = run.bench_dir / "cpu-x86"
    bdir.mkdir(parents=True)
    for aid, (tok, ttft, rss) in {"gguf-q8_0": (79.0, 60.0, 300.0), "gguf-q4_k_m": (81.0, 55.0, 250.0),
                                  "onnx-int4": (90.0, 110.0, 400.0)}.items():
        (bdir / f"{aid}.json").write_text(json.dumps(_bench_record(aid, tok, ttft, rss)))
    arts = [{"id": k, "format": k.split("-")[0], "precision": k.split("-")[1],
             "path": str(run.export_dir / k.split("-")[0] / f"model-{k}.bin"), "bytes": SIZES[k],
             "sha256": "0" * 64, "parity": {"greedy_token_agreement": 0.9, "max_abs_logit_diff": None}}
            for k in SCORES]
    monkeypatch.setattr(rep, "list_artifacts", lambda r, **kw: arts)
    return run


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_report_json_follows_the_contract(run_with_results):
    run = run_with_results
    result = invoke("report", str(run.root))
    assert result.exit_code == 0, result.output
    data = json.loads(run.report_json.read_text())
    assert {"edgedistill_version", "run_dir", "recipe", "metric", "teacher", "student_base", "artifacts",
            "gates"} <= set(data)
    assert data["metric"] == "exact_match" and data["reference"] == "gold"
    assert data["teacher"]["score"] == TEACHER and data["student_base"]["score"] == 0.4
    assert set(data["teacher"]) >= {"model", "score"}
    a = next(x for x in data["artifacts"] if x["id"] == "gguf-q4_k_m")
    assert {"id", "format", "precision", "path", "bytes", "sha256", "score", "retention", "parity", "bench",
            "gates"} <= set(a)
    assert a["path"] == "export/gguf/model-gguf-q4_k_m.bin"  # relative to the run
    assert a["retention"] == pytest.approx(0.72 / 0.8)
    b = a["bench"]["cpu-x86"]
    assert {"runtime", "threads", "ttft_ms", "decode_tokens_per_s", "peak_rss_mb", "load_s",
            "roofline_fraction"} <= set(b)
    assert {"p50", "p90"} <= set(b["ttft_ms"]) and {"p50", "p90"} <= set(b["decode_tokens_per_s"])
    assert {"passed", "failed"} <= set(a["gates"]) and set(data["gates"]) >= {"passed", "failed"}


def test_check_passes_and_names_the_smallest_passing(run_with_results):
    run = run_with_results
    result = invoke("report", str(run.root), "--check")
    assert result.exit_code == 1  # onnx-int4 keeps 0.5 of the teacher: below 0.85
    result = invoke("report", str(run.root), "--check", "--set", "gates.min_retention=0.5")
    assert result.exit_code == 0, result.output
    data = json.loads(run.report_json.read_text())
    assert data["gates"]["passed"] is True
    assert data["smallest_passing"]["cpu-x86"] == "onnx-int4"  # 90 MB, now above every limit
    invoke("report", str(run.root), "--set", "gates.min_retention=0.85")
    data = json.loads(run.report_json.read_text())
    assert data["targets"]["cpu-x86"]["smallest_passing"] == "gguf-q4_k_m"


def test_failed_gate_exits_1_naming_artifact_gate_value_limit(run_with_results):
    run = run_with_results
    result = CliRunner().invoke(cli, ["report", str(run.root), "--check", "--set", "gates.min_retention=0.93",
                                      "--set", "gates.max_ttft_ms=100"])
    assert result.exit_code == 1
    out = result.output
    assert "gguf-q4_k_m: min_retention = 0.9 < limit 0.93" in out
    assert "onnx-int4: max_ttft_ms on cpu-x86 = 110 > limit 100.0" in out
    assert "gguf-q8_0: min_retention" not in out  # 0.95 passes
    assert "Traceback" not in out
    data = json.loads(run.report_json.read_text())  # the report is written before the exit
    assert data["gates"]["passed"] is False
    failed = {(f["artifact"], f["gate"]) for f in data["gates"]["failed"]}
    assert failed == {("gguf-q4_k_m", "min_retention"), ("onnx-int4", "min_retention"),
                      ("onnx-int4", "max_ttft_ms")}
    assert data["smallest_passing"]["cpu-x86"] == "gguf-q8_0"


def test_gate_with_nothing_measured_fails(run_with_results):
    run = run_with_results
    for f in (run.bench_dir / "cpu-x86").glob("*.json"):
        f.unlink()
    result = invoke("report", str(run.root), "--check", "--set", "gates.min_retention=0.1",
                    "--set", "gates.min_decode_tokens_per_s=10")
    assert result.exit_code == 1
    assert "min_decode_tokens_per_s: no value (not benched" in result.output


def test_markdown_and_html_carry_tables_and_plots(run_with_results):
    run = run_with_results
    invoke("report", str(run.root))
    md = run.report_md.read_text()
    assert "## Retention ladder" in md and "| gguf-q4_k_m |" in md and "Pareto" not in md
    page = run.report_html.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # trade-offs with the Pareto front, latency percentiles
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "<table>" in page and "cpu-x86" in page


def test_pareto_front():
    # (size, retention): smaller is better, higher is better
    pts = [(145, 0.95), (106, 0.90), (90, 0.50), (120, 0.85), (100, 0.90)]
    assert pareto_front(pts, minimize_x=True) == [2, 4, 0]
    # (speed, retention): both higher is better
    assert pareto_front([(79, 0.95), (81, 0.9), (90, 0.5), (70, 0.5)], minimize_x=False) == [0, 1, 2]


def test_a_run_with_nothing_to_ship_fails_the_check(tmp_path):
    run = make_run(tmp_path)
    result = invoke("report", str(run.root), "--check")
    assert result.exit_code == 1 and "no exported artifacts to ship" in result.output
    assert json.loads(run.report_json.read_text())["gates"]["passed"] is False


def _set_budgets(run, budgets: dict, on_target: bool) -> None:
    for f in (run.bench_dir / "cpu-x86").glob("*.json"):
        rec = json.loads(f.read_text())
        rec.update(budgets=budgets, on_target=on_target)
        f.write_text(json.dumps(rec))


def test_target_budgets_are_gates_where_measured_on_the_target(run_with_results):
    run = run_with_results
    _set_budgets(run, {"max_peak_rss_mb": 350.0, "max_ttft_ms": None, "min_decode_tokens_per_s": 80.0},
                 on_target=True)
    result = invoke("report", str(run.root), "--check", "--set", "gates.min_retention=0.5")
    assert result.exit_code == 1
    assert "onnx-int4: max_peak_rss_mb on cpu-x86 (target budget) = 400 > limit 350.0" in result.output
    assert "gguf-q8_0: min_decode_tokens_per_s on cpu-x86 (target budget) = 79 < limit 80.0" in result.output
    data = json.loads(run.report_json.read_text())
    failed = {(f["artifact"], f["gate"], f["source"]) for f in data["gates"]["failed"]}
    assert failed == {("onnx-int4", "max_peak_rss_mb", "target budget"),
                      ("gguf-q8_0", "min_decode_tokens_per_s", "target budget")}
    assert data["smallest_passing"]["cpu-x86"] == "gguf-q4_k_m"  # 250 MB, 81 tok/s: within both
    assert data["unchecked_budgets"] == []


def test_target_budgets_never_judge_a_hosts_figures(run_with_results):
    run = run_with_results
    _set_budgets(run, {"max_peak_rss_mb": 10.0, "max_ttft_ms": None, "min_decode_tokens_per_s": None},
                 on_target=False)
    result = invoke("report", str(run.root), "--check", "--set", "gates.min_retention=0.5")
    assert result.exit_code == 0, result.output
    data = json.loads(run.report_json.read_text())
    assert {u["artifact"] for u in data["unchecked_budgets"]} == set(SCORES)
    assert all(u["gate"] == "max_peak_rss_mb" and u["limit"] == 10.0 for u in data["unchecked_budgets"])
    md = run.report_md.read_text()
    assert "Target budgets not checked" in md and "cpu-x86: `max_peak_rss_mb` = 10.0 (measured on ci" in md


def _plot_data(teacher: dict) -> dict:
    """report.json's content as the plots read it: three artifacts with retention intervals, one of
    them benched on a Pi only from a host (not on the target: never plotted as the Pi's speed)."""
    def art(aid, size, ret, ci, bench):
        return {"id": aid, "bytes": size, "retention": ret, "retention_ci95": ci, "bench": bench}
    on = lambda tok: {"decode_tokens_per_s": {"p50": tok}, "on_target": True}  # noqa: E731
    return {"gate_limits": {"min_retention": 0.85}, "teacher": teacher, "artifacts": [
        art("gguf-q8_0", 145e6, 0.95, [0.9, 0.99], {"cpu-x86": on(79.0)}),
        art("gguf-q4_k_m", 106e6, 0.9, [0.84, 0.97], {"cpu-x86": on(81.0),
                                                      "pi5": {"decode_tokens_per_s": {"p50": 80.0}, "on_target": False}}),
        art("onnx-int4", 90e6, 0.5, None, {})]}


def test_tradeoff_plot_draws_retention_intervals_and_the_teacher():
    teacher = {"model": "pypi:teacher", "score": 0.8, "bytes": 1_117e6,
               "bench": {"cpu-x86": {"decode_tokens_per_s": {"p50": 30.0}, "on_target": True},
                         "pi5": {"decode_tokens_per_s": {"p50": 9.0}, "on_target": False}}}
    data = _plot_data(teacher)
    series = tradeoff_series(data)
    size = series["size"]
    assert [(p["label"], p["x"], p["y"]) for p in size["points"]] == [
        ("gguf-q8_0", 145.0, 0.95), ("gguf-q4_k_m", 106.0, 0.9), ("onnx-int4", 90.0, 0.5)]
    assert [p["err"] for p in size["points"]] == [(0.05, 0.04), (0.06, 0.07), (0.0, 0.0)]  # no interval: no bar
    assert size["teacher"] == {"label": "teacher", "x": 1117.0, "y": 1.0, "err": (0.0, 0.0)}
    assert list(series["speed"]) == ["cpu-x86"]  # the Pi's figures are a host's: not plotted
    assert [(p["label"], p["x"]) for p in series["speed"]["cpu-x86"]["points"]] == [("gguf-q8_0", 79.0),
                                                                                      ("gguf-q4_k_m", 81.0)]
    assert series["speed"]["cpu-x86"]["teacher"]["x"] == 30.0

    fig = tradeoff_figure(data)
    size_ax, speed_ax = fig.axes
    bars = [c for c in size_ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()  # one vertical bar per artifact: (x, low) to (x, high)
    assert [[tuple(round(v, 4) for v in pt) for pt in seg] for seg in segments] == [
        [(145.0, 0.9), (145.0, 0.99)], [(106.0, 0.84), (106.0, 0.97)], [(90.0, 0.5), (90.0, 0.5)]]
    stars = [c.get_offsets().tolist() for ax in (size_ax, speed_ax) for c in ax.collections
             if c.get_label().startswith("teacher")]
    assert stars == [[[1117.0, 1.0]], [[30.0, 1.0]]]
    assert size_ax.get_xscale() == "log"  # a teacher ten times the students' size
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert base64.b64decode(tradeoff_plot(data)).startswith(b"\x89PNG")


def test_an_unmeasured_teacher_has_no_point():
    series = tradeoff_series(_plot_data({"model": "gpt-4o", "score": 0.8}))  # an endpoint teacher
    assert series["size"]["teacher"] is None and series["speed"]["cpu-x86"]["teacher"] is None


def test_report_carries_the_teachers_bench_for_the_plots(run_with_results):
    run = run_with_results
    invoke("report", str(run.root))
    assert "bench" not in json.loads(run.report_json.read_text())["teacher"]  # not benched: no figures
    rec = {**_bench_record("gguf-q8_0", 20.0, 300.0, 1800.0), "id": "teacher", "bytes": 1_117_000_000}
    (run.bench_dir / "cpu-x86" / "teacher.json").write_text(json.dumps(rec))
    invoke("report", str(run.root))
    data = json.loads(run.report_json.read_text())
    assert data["teacher"]["bytes"] == 1_117_000_000
    assert data["teacher"]["bench"]["cpu-x86"]["decode_tokens_per_s"]["p50"] == 20.0
    assert "seed_claims" not in data and "teacher" not in {a["id"] for a in data["artifacts"]}
    assert tradeoff_series(data)["speed"]["cpu-x86"]["teacher"]["x"] == 20.0

