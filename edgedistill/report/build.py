"""report: RUN/report.json (the contract in DESIGN.md), report.md and report.html, and the gates.

Gates come from the recipe (``gates.*``, overridable with ``--set gates.*``): ``min_retention``
(score / teacher score, on its 95% paired-bootstrap interval from ``eval``), ``min_eval_n``,
``max_kld`` (quantized artifacts' ``quant_loss``), ``max_peak_rss_mb``, ``min_decode_tokens_per_s``
(p50), ``max_ttft_ms`` (p50) on every target the artifact was benched on; and each target's
``budgets`` and ``ram_mb``. Each verdict is pass, fail or indeterminate (:mod:`.gates`);
``gates.on_indeterminate`` (default fail) says what an indeterminate one does to the exit code.

Nothing unmeasured passes: a gate that is set but has nothing to judge fails; an artifact that
failed to load or run on a target fails there; every target the recipe lists (``targets``) must
have measured every artifact it runs. ``check=True`` raises :class:`~edgedistill.errors.GateFailed`
(exit 1) naming artifact, gate, value and limit, after the report is written. The report names,
per target, the smallest artifact that passes every gate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill import __version__
from edgedistill.errors import GateFailed
from edgedistill.artifacts import list_artifacts
from edgedistill.hardware import Target, load_target
from edgedistill.report.gates import describe, judge, verdict
from edgedistill.report.headline import headline
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

BENCH_FIELDS = ("runtime", "threads", "context", "n_ctx", "ttft_ms", "decode_tokens_per_s", "token_latency_ms",
                "peak_rss_mb", "load_s", "roofline_fraction", "roofline_note", "roofline_bound_tokens_per_s",
                "bandwidth_gbs", "dram_bandwidth_gbs", "bytes_per_token", "bytes_per_token_basis",
                "energy_per_token_j", "on_target", "not_on_target_because", "predicted_decode_tokens_per_s",
                "predicted_basis", "predicted_peak_rss_mb", "predicted_peak_rss_basis", "note", "error",
                "damaged", "ssh_host", "runtime_version", "thread_sweep", "budgets",
                "concurrency", "users_supported", "users_supported_reason", "service_level")
HOST_FIELDS = ("hostname", "arch", "cpu", "board", "cores_logical", "ram_mb", "accelerators")


def _bench_view(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: rec[k] for k in BENCH_FIELDS if k in rec}
    host = rec.get("measured_on") or {}
    out["measured_on"] = {k: host.get(k) for k in HOST_FIELDS}
    return out


def _asked_targets(run: Run) -> dict[str, Target]:
    """The recipe's ``targets``, loaded (by name or path), keyed by target name."""
    out = {}
    for t in run.recipe.targets:
        path = Path(t)
        tgt = load_target(str(run.root / path) if not path.is_absolute() and (run.root / path).exists() else t)
        out[tgt.name] = tgt
    return out


def _unmeasured(entry: dict[str, Any], asked: dict[str, Target], run: Run) -> list[dict[str, Any]]:
    """A failed ``measured`` gate on each asked-for target that runs the artifact and has no record."""
    return [{"artifact": entry["id"], "target": name, "gate": "measured", "verdict": "fail", "value": None,
             "limit": None, "reason": f"not benched on {name}, which the recipe's targets ask for "
                                      f"(run `edgedistill bench {run.root} --target {name}`)"}
            for name, tgt in asked.items()
            if name not in entry["bench"] and tgt.runtime_for(entry["format"], entry["precision"])]


def build(run: Run) -> dict[str, Any]:
    """report.json's content, from the run's eval summary, bench records and artifacts."""
    from edgedistill.bench.run import load_bench
    from edgedistill.evaluate.ladder import BASE, MERGED, RESAMPLE, TEACHER, load_summary
    from edgedistill.judge.stage import load_judge_summary
    from edgedistill.evaluate.metrics import primary_metric

    recipe = run.recipe
    summary = load_summary(run)
    bench = load_bench(run)
    rungs = (summary or {}).get("rungs", {})
    gates = recipe.gates.model_dump()
    manifest = run.read_manifest()

    on_indeterminate = gates.get("on_indeterminate") or "fail"
    asked = _asked_targets(run)

    sets = (summary or {}).get("sets") or {}

    def on_sets(name: str) -> dict[str, Any]:
        """The rung's score and retention on each eval set (data.eval_sets), e.g. reworded questions."""
        out = {}
        for set_name, s in sets.items():
            r = s["rungs"].get(name)
            if r:
                out[set_name] = {k: r.get(k) for k in ("score", "score_ci95", "retention", "retention_ci95")}
                out[set_name]["eval_n"] = r.get("n", s.get("n"))
                if (r.get("metrics") or {}).get("in_form") is not None:  # its prompts ask for a form
                    out[set_name]["in_form"] = r["metrics"]["in_form"]
        return out

    judged = load_judge_summary(run) if recipe.eval.judge_config(recipe.task) else None
    judge_rungs = (judged or {}).get("rungs", {})

    def judge_fields(name: str) -> dict[str, Any]:
        """judge_retention, its interval and the verdict counts of one rung, when it was judged."""
        j = judge_rungs.get(name)
        if not j:
            return {}
        return {k: j.get(k) for k in ("judge_retention", "judge_retention_ci95", "judge_score",
                                      "judge_score_ci95", "judge") if k in j}

    def rung(name: str, model: str) -> dict[str, Any]:
        r = rungs.get(name) or {}
        return {"model": model, "score": r.get("score"), "score_ci95": r.get("score_ci95"),
                "retention": r.get("retention"), "retention_ci95": r.get("retention_ci95"),
                "eval_n": r.get("n", (summary or {}).get("n")) if r else None, "file": r.get("file"),
                "eval_sets": on_sets(name), **judge_fields(name)}

    artifacts = []
    for art in list_artifacts(run, include_damaged=True):
        r = rungs.get(art["id"]) or {}
        path = Path(art["path"]) if art.get("path") else None
        entry = {
            "id": art["id"], "format": art.get("format"), "precision": art.get("precision"),
            "path": run.rel(run.root / path) if path else None, "bytes": art.get("bytes"),
            "sha256": art.get("sha256"), "score": r.get("score"), "score_ci95": r.get("score_ci95"),
            "retention": r.get("retention"), "retention_ci95": r.get("retention_ci95"),
            "eval_n": r.get("n", (summary or {}).get("n")) if r else None,
            "parity": art.get("parity"), "quant_loss": art.get("quant_loss"),
            "eval_file": r.get("file"), "eval_sets": on_sets(art["id"]),
            "bench": {t: _bench_view(recs[art["id"]]) for t, recs in bench.items() if art["id"] in recs},
            **judge_fields(art["id"]),
        }
        if judged is not None:
            entry["judge_calibration_trusted"] = judged["calibration"]["trusted"]
            entry["judge_calibration_reason"] = judged["calibration"].get("reason")
        if art.get("damaged"):
            entry["damaged"] = True
        if entry["bytes"] is None:
            entry["bytes"] = next((recs[art["id"]].get("bytes") for recs in bench.values() if art["id"] in recs), None)
        checks = judge(entry, gates) + _unmeasured(entry, asked, run)
        entry["gates"] = {**verdict(checks, on_indeterminate),
                          "unchecked": [c for c in checks if c["verdict"] == "unchecked"], "checks": checks}
        artifacts.append(entry)

    targets = {}
    for name in sorted(set(asked) | set(bench)):
        recs = bench.get(name, {})
        host = next(iter(recs.values()), {}).get("measured_on") if recs else None
        ok = [a for a in artifacts if a["id"] in recs and a["gates"]["passed"] and a["bytes"]]
        best = min(ok, key=lambda a: a["bytes"]) if ok else None
        device = asked[name].device() if name in asked else next(iter(recs.values()), {}).get("target_device")
        targets[name] = {
            "asked": name in asked, "benched": sorted(recs), "measured_on": host,
            "on_target": all(r.get("on_target") for r in recs.values()) if recs else None,
            "not_on_target_because": next((r["not_on_target_because"] for r in recs.values()
                                           if r.get("not_on_target_because")), []),
            "device": device, "accelerators": (device or {}).get("accelerators", []),
            "host_accelerators": (host or {}).get("accelerators"),
            "smallest_passing": best["id"] if best else None,
            "smallest_passing_bytes": best["bytes"] if best else None,
        }
    run_level = []
    if not artifacts and recipe.export.formats:
        run_level.append({"artifact": None, "gate": "artifacts", "verdict": "fail", "value": 0, "limit": None,
                          "message": f"the run has no exported artifacts to ship (export.formats: "
                                     f"{', '.join(recipe.export.formats)}); run `edgedistill export "
                                     f"{run.root}` and `edgedistill quantize {run.root}`"})
    for name in asked:
        if not bench.get(name) and not any(c["gate"] == "measured" and c.get("target") == name
                                           for a in artifacts for c in a["gates"]["failed"]):
            run_level.append({"artifact": None, "target": name, "gate": "measured", "verdict": "fail",
                              "value": None, "limit": None,
                              "message": f"target {name} was asked for (recipe targets) and has no measurement; "
                                         f"run `edgedistill bench {run.root} --target {name}`"})
    overall = verdict([c for a in artifacts for c in a["gates"]["checks"]] + run_level, on_indeterminate)
    return {
        "edgedistill_version": __version__, "run_dir": str(run.root),
        "recipe": manifest.get("recipe") or str(run.config_path),
        "task": recipe.task, "metric": (summary or {}).get("metric") or primary_metric(recipe.task),
        "reference": (summary or {}).get("reference"),
        "eval": {"n": (summary or {}).get("n"), "max_new_tokens": (summary or {}).get("max_new_tokens"),
                 "skipped_no_reference": (summary or {}).get("skipped_no_reference"),
                 "sets": {k: {"n": v.get("n"), "reference": v.get("reference")} for k, v in sets.items()}},
        "training_data": _training_data(run),
        "teacher": {**rung(TEACHER, recipe.teacher.model), **_teacher_bench(bench),
                    **_teacher_judge(judged, rung(RESAMPLE, recipe.teacher.model))},
        "student_base": rung(BASE, recipe.student.model),
        "student_merged": rung(MERGED, run.rel(run.merged_dir)),
        "artifacts": artifacts,
        "targets": targets,
        "unchecked_budgets": [u for a in artifacts for u in a["gates"]["unchecked"]],
        "smallest_passing": {t: v["smallest_passing"] for t, v in targets.items()},
        "headline": headline(run, artifacts, targets, bench),  # teacher vs shipped, per target
        "judge_calibration": _calibration(judged),
        "judge": _judge_block(judged),
        "gate_limits": gates,
        "gates": {**overall, "on_indeterminate": on_indeterminate},
    }


def _teacher_bench(bench: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The teacher's weights and bench records per target, where bench measured it alike (a local
    GGUF teacher, id ``teacher``); nothing for an endpoint teacher."""
    recs = {t: r["teacher"] for t, r in bench.items() if "teacher" in r}
    if not recs:
        return {}
    return {"bytes": next((r["bytes"] for r in recs.values() if r.get("bytes")), None),
            "bench": {t: _bench_view(r) for t, r in recs.items()}}


def _teacher_judge(judged: dict[str, Any] | None, resample: dict[str, Any]) -> dict[str, Any]:
    """The teacher's own judged figures: its resample against itself (parity), its rubric mean or
    judged score against gold."""
    if judged is None:
        return {}
    out = {k: v for k, v in (judged.get("teacher") or {}).items()}
    if resample.get("score") is not None:
        out["resample"] = {k: resample.get(k) for k in ("score", "score_ci95", "retention", "retention_ci95",
                                                         "judge_retention", "judge_retention_ci95", "judge")}
    return out


def _calibration(judged: dict[str, Any] | None) -> dict[str, Any] | None:
    if judged is None:
        return None
    c = judged["calibration"]
    return {"model": judged["judge"]["model"], **{k: c.get(k) for k in ("agreement", "kappa", "n", "trusted",
                                                                          "min_agreement", "by_expected", "reason")},
            "swap_consistency": _mean([r.get("judge", {}).get("swap_consistency") for r in judged["rungs"].values()])}


def _judge_block(judged: dict[str, Any] | None) -> dict[str, Any] | None:
    """Who judged, how, and what it cost."""
    if judged is None:
        return None
    return {"mode": judged["mode"], **judged["judge"], "rungs": judged.get("rungs_judged"),
            "unique_questions": judged.get("unique_questions"), "cost": judged.get("cost"),
            **{k: judged.get(k) for k in ("position_bias", "sigma", "sigma_pairs", "sigma_source")}}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 6) if vals else None


def _training_data(run: Run) -> dict[str, Any] | None:
    """How the training labels were verified, from the generate stage (counts)."""
    m = (run.stage_entry("generate") or {}).get("metrics")
    if not m:
        return None
    keys = ("train_prompts", "train_sets", "train", "verified", "rejected_by_reason", "synthesized",
            "teacher_first_answer_gold_accuracy", "eval", "eval_sets", "eval_rejected_kept")
    return {k: m.get(k) for k in keys}


def report(run: Run, *, force: bool = True, check: bool = False) -> None:
    """Write report.json, report.md and report.html; with ``check``, fail on a missed gate."""
    from edgedistill.report.render import render_html, render_markdown

    data = build(run)
    stage = run.begin("report", force=True)
    with stage:
        stage.output(run.report_json).write_text(json.dumps(data, indent=2) + "\n")
        stage.output(run.report_md).write_text(render_markdown(data))
        stage.output(run.report_html).write_text(render_html(data))
        stage.metrics.update(gates_passed=data["gates"]["passed"], verdict=data["gates"]["verdict"],
                             failed=len(data["gates"]["failed"]),
                             indeterminate=len(data["gates"]["indeterminate"]),
                             smallest_passing=data["smallest_passing"])
    gates = data["gates"]
    if not check:  # with check, the error lists them
        for f in gates["failed"]:
            log.warning("gate failed: %s", describe(f))
        for f in gates["indeterminate"]:
            log.warning("gate indeterminate: %s", describe(f))
    log.info("Wrote %s, %s and %s", run.report_json, run.report_md, run.report_html)
    if check and not gates["passed"]:
        lines = [describe(f) for f in gates["failed"]]
        unsure = [describe(f) for f in gates["indeterminate"]]
        text = (f"{len(lines)} gate(s) failed:\n  " + "\n  ".join(lines) if lines else "") + \
            ("\n" if lines and unsure else "") + \
            (f"{len(unsure)} gate(s) indeterminate (gates.on_indeterminate: fail):\n  " + "\n  ".join(unsure)
             if unsure else "")
        raise GateFailed(
            text,
            hint=f"Details in {run.report_md}. Limits come from the recipe's gates "
                 "(change one with e.g. `--set gates.min_retention=0.8`) and, where marked, "
                 "from the target's budgets (its YAML)." + (
                     " An indeterminate gate needs more eval examples (a narrower interval), or "
                     "`--set gates.on_indeterminate=pass` to accept it." if unsure else ""))
