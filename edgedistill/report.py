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
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

BENCH_FIELDS = ("runtime", "threads", "ttft_ms", "decode_tokens_per_s", "token_latency_ms", "peak_rss_mb",
                "load_s", "roofline_fraction", "bandwidth_gbs", "energy_per_token_j", "on_target",
                "predicted_decode_tokens_per_s", "predicted_basis", "note", "error", "ssh_host",
                "runtime_version", "thread_sweep", "budgets")
# gate -> (bench field, percentile or None, "max" | "min")
BENCH_GATES = {
    "max_peak_rss_mb": ("peak_rss_mb", None, "max"),
    "min_decode_tokens_per_s": ("decode_tokens_per_s", "p50", "min"),
    "max_ttft_ms": ("ttft_ms", "p50", "max"),
}


def list_artifacts(run: Run) -> list[dict[str, Any]] | None:
    """The exporter's list of the run's artifacts; None when this install has no exporter."""
    try:
        from edgedistill.formats import list_artifacts as listed
    except ImportError:
        return None
    return listed(run)


def _artifacts(run: Run, summary: dict[str, Any] | None, bench: dict[str, dict]) -> list[dict[str, Any]]:
    """The run's artifacts (from the exporter), else whatever eval and bench saw."""
    listed = list_artifacts(run)
    if listed is not None:
        return listed
    seen: dict[str, dict[str, Any]] = {}
    for rid, rung in ((summary or {}).get("rungs") or {}).items():
        if rung.get("artifact"):
            fmt, _, prec = rid.partition("-")
            seen[rid] = {"id": rid, "format": fmt, "precision": prec, "path": rung["model"]}
    for records in bench.values():
        for rid, rec in records.items():
            seen.setdefault(rid, {"id": rid, "format": rec.get("format"), "precision": rec.get("precision"),
                                  "path": rec.get("path"), "bytes": rec.get("bytes")})
    return list(seen.values())


def _bench_view(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: rec[k] for k in BENCH_FIELDS if k in rec}
    host = rec.get("measured_on") or {}
    out["measured_on"] = {k: host.get(k) for k in ("hostname", "arch", "cpu", "cores_logical", "ram_mb")}
    return out


def judge(artifact: dict[str, Any], gates: dict[str, Any]) -> list[dict[str, Any]]:
    """The failed gates of one artifact (empty: it passes every gate that is set): the recipe's
    gates, and each target's budgets where the artifact was benched on that target itself."""
    failed = []
    limit = gates.get("min_retention")
    if limit is not None:
        value = artifact.get("retention")
        if value is None or value < limit:
            failed.append({"artifact": artifact["id"], "gate": "min_retention", "value": value, "limit": limit,
                           **({"reason": "not evaluated (run `edgedistill eval`)"} if value is None else {})})
    benches = artifact.get("bench") or {}
    for gate, (field, pct, kind) in BENCH_GATES.items():
        limit = gates.get(gate)
        if limit is not None and not benches:
            failed.append({"artifact": artifact["id"], "gate": gate, "value": None, "limit": limit,
                           "reason": "not benched (run `edgedistill bench`)"})
        for target, b in benches.items():
            budget = (b.get("budgets") or {}).get(gate)
            limits = [(lim, src) for lim, src in ((limit, "recipe"), (budget, "target budget"))
                      if lim is not None and (src == "recipe" or b.get("on_target"))]
            raw = b.get(field)
            value = raw.get(pct) if isinstance(raw, dict) else raw
            for lim, src in limits:
                if value is None or (value > lim if kind == "max" else value < lim):
                    failed.append({"artifact": artifact["id"], "gate": gate, "target": target, "value": value,
                                   "limit": lim, "source": src,
                                   **({"reason": b.get("error") or "not measured"} if value is None else {})})
    return failed


def unchecked_budgets(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """Target budgets that were not applied because the bench ran on another machine: a host's
    figures never pass or fail a device's budget."""
    out = []
    for target, b in (artifact.get("bench") or {}).items():
        if b.get("on_target"):
            continue
        for gate, budget in (b.get("budgets") or {}).items():
            if budget is not None:
                out.append({"artifact": artifact["id"], "gate": gate, "target": target, "limit": budget,
                            "reason": f"measured on {(b.get('measured_on') or {}).get('hostname')}, "
                                      f"not on {target}"})
    return out


def build(run: Run) -> dict[str, Any]:
    """report.json's content, from the run's eval summary, bench records and artifacts."""
    from edgedistill.bench.run import load_bench
    from edgedistill.evaluate import BASE, MERGED, TEACHER, load_summary
    from edgedistill.metrics import primary_metric

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
    for art in _artifacts(run, summary, bench):
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


def describe(f: dict[str, Any]) -> str:
    if f.get("message"):
        return f["message"]
    where = f" on {f['target']}" if f.get("target") else ""
    if f.get("source") == "target budget":
        where += " (target budget)"
    if f["value"] is None:
        return f"{f['artifact']}: {f['gate']}{where}: no value ({f.get('reason', 'not measured')}), limit {f['limit']}"
    op = "<" if f["gate"].startswith("min_") else ">"
    return f"{f['artifact']}: {f['gate']}{where} = {_num(f['value'])} {op} limit {f['limit']}"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def report(run: Run, *, force: bool = True, check: bool = False) -> None:
    """Write report.json, report.md and report.html; with ``check``, fail on a missed gate."""
    from edgedistill.report_render import render_html, render_markdown

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
