"""report: RUN/report.json (the contract in DESIGN.md), report.md and report.html, and the gates.

Gates come from the recipe (``gates.*``, overridable with ``--set gates.*``):

- ``min_retention``: score / teacher score of the artifact, from ``eval``;
- ``max_peak_rss_mb``, ``min_decode_tokens_per_s`` (p50), ``max_ttft_ms`` (p50): on every target
  the artifact was benched on.

A target's own ``budgets`` (the same three) are gates too, applied where the bench ran on that
target; benched on another machine, they are listed as unchecked, never passed or failed.

A gate that is set but has nothing to judge (no eval, no bench, a bench that failed) fails: a
release pipeline must not pass what nobody measured. ``check=True`` raises
:class:`~edgedistill.errors.GateFailed` (exit 1) naming artifact, gate, value and limit, after the
report is written. The report names, per target, the smallest artifact that passes every gate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill import __version__
from edgedistill.errors import GateFailed
from edgedistill.artifacts import list_artifacts
from edgedistill.report.gates import describe, judge, unchecked_budgets
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

BENCH_FIELDS = ("runtime", "threads", "ttft_ms", "decode_tokens_per_s", "token_latency_ms", "peak_rss_mb",
                "load_s", "roofline_fraction", "bandwidth_gbs", "energy_per_token_j", "on_target",
                "predicted_decode_tokens_per_s", "predicted_basis", "note", "error", "ssh_host",
                "runtime_version", "thread_sweep", "budgets")


def _bench_view(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: rec[k] for k in BENCH_FIELDS if k in rec}
    host = rec.get("measured_on") or {}
    out["measured_on"] = {k: host.get(k) for k in ("hostname", "arch", "cpu", "cores_logical", "ram_mb")}
    return out


def build(run: Run) -> dict[str, Any]:
    """report.json's content, from the run's eval summary, bench records and artifacts."""
    from edgedistill.bench.run import load_bench
    from edgedistill.evaluate.ladder import BASE, MERGED, TEACHER, load_summary
    from edgedistill.evaluate.metrics import primary_metric

    recipe = run.recipe
    summary = load_summary(run)
    bench = load_bench(run)
    rungs = (summary or {}).get("rungs", {})
    gates = recipe.gates.model_dump()
    manifest = run.read_manifest()

    def rung(name: str, model: str) -> dict[str, Any]:
        r = rungs.get(name)
        return {"model": model, "score": r["score"] if r else None,
                "retention": r.get("retention") if r else None, "file": r.get("file") if r else None}

    artifacts = []
    for art in list_artifacts(run):
        r = rungs.get(art["id"])
        path = Path(art["path"]) if art.get("path") else None
        entry = {
            "id": art["id"], "format": art.get("format"), "precision": art.get("precision"),
            "path": run.rel(run.root / path) if path else None, "bytes": art.get("bytes"),
            "sha256": art.get("sha256"), "score": r["score"] if r else None,
            "retention": r.get("retention") if r else None, "parity": art.get("parity"),
            "eval_file": r.get("file") if r else None,
            "bench": {t: _bench_view(recs[art["id"]]) for t, recs in bench.items() if art["id"] in recs},
        }
        if entry["bytes"] is None:
            entry["bytes"] = next((recs[art["id"]].get("bytes") for recs in bench.values() if art["id"] in recs), None)
        failed = judge(entry, gates)
        entry["gates"] = {"passed": not failed, "failed": failed, "unchecked": unchecked_budgets(entry)}
        artifacts.append(entry)

    targets = {}
    for name in sorted(set(recipe.targets) | set(bench)):
        recs = bench.get(name, {})
        host = next(iter(recs.values()), {}).get("measured_on") if recs else None
        ok = [a for a in artifacts if a["id"] in recs and a["gates"]["passed"] and a["bytes"]]
        best = min(ok, key=lambda a: a["bytes"]) if ok else None
        targets[name] = {
            "benched": sorted(recs), "measured_on": host,
            "on_target": all(r.get("on_target") for r in recs.values()) if recs else None,
            "smallest_passing": best["id"] if best else None,
            "smallest_passing_bytes": best["bytes"] if best else None,
        }
    all_failed = [f for a in artifacts for f in a["gates"]["failed"]]
    if not artifacts and recipe.export.formats:
        all_failed.append({"artifact": None, "gate": "artifacts", "value": 0, "limit": None,
                           "message": f"the run has no exported artifacts to ship (export.formats: "
                                      f"{', '.join(recipe.export.formats)}); run `edgedistill export "
                                      f"{run.root}` and `edgedistill quantize {run.root}`"})
    return {
        "edgedistill_version": __version__, "run_dir": str(run.root),
        "recipe": manifest.get("recipe") or str(run.config_path),
        "task": recipe.task, "metric": (summary or {}).get("metric") or primary_metric(recipe.task),
        "reference": (summary or {}).get("reference"),
        "eval": {"n": (summary or {}).get("n"), "max_new_tokens": (summary or {}).get("max_new_tokens"),
                 "skipped_no_reference": (summary or {}).get("skipped_no_reference")},
        "teacher": rung(TEACHER, recipe.teacher.model),
        "student_base": rung(BASE, recipe.student.model),
        "student_merged": rung(MERGED, run.rel(run.merged_dir)),
        "artifacts": artifacts,
        "targets": targets,
        "unchecked_budgets": [u for a in artifacts for u in a["gates"]["unchecked"]],
        "smallest_passing": {t: v["smallest_passing"] for t, v in targets.items()},
        "gate_limits": gates,
        "gates": {"passed": not all_failed, "failed": all_failed},
        "seed_claims": _seed_claims(run),
    }


def _seed_claims(run: Run) -> dict[str, Any] | None:
    """RUN/seed_claims.json, written by scripts/seed_claims.py (teacher vs student, measured)."""
    path = run.root / "seed_claims.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        log.warning("%s is not valid JSON (%s); the report leaves it out", path, e)
        return None


def report(run: Run, *, force: bool = True, check: bool = False) -> None:
    """Write report.json, report.md and report.html; with ``check``, fail on a missed gate."""
    from edgedistill.report.render import render_html, render_markdown

    data = build(run)
    stage = run.begin("report", force=True)
    with stage:
        stage.output(run.report_json).write_text(json.dumps(data, indent=2) + "\n")
        stage.output(run.report_md).write_text(render_markdown(data))
        stage.output(run.report_html).write_text(render_html(data))
        stage.metrics.update(gates_passed=data["gates"]["passed"], failed=len(data["gates"]["failed"]),
                             smallest_passing=data["smallest_passing"])
    if not check:  # with check, the error lists them
        for f in data["gates"]["failed"]:
            log.warning("gate failed: %s", describe(f))
    log.info("Wrote %s, %s and %s", run.report_json, run.report_md, run.report_html)
    if check and not data["gates"]["passed"]:
        lines = [describe(f) for f in data["gates"]["failed"]]
        raise GateFailed(
            f"{len(lines)} gate(s) failed:\n  " + "\n  ".join(lines),
            hint=f"Details in {run.report_md}. Limits come from the recipe's gates "
                 "(change one with e.g. `--set gates.min_retention=0.8`) and, where marked, "
                 "from the target's budgets (its YAML).")
