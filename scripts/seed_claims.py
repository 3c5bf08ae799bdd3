"""The seed's claims beside this run's headline: the seed's case study reports 85% lower latency,
95% lower memory, 92% retention and 10x the users served at once for its distilled student. This
prints, per target, what the report's headline measured (report.json's ``headline``: the teacher
and the shipped artifact by the same bench harness on the same machine) against each claim.

    edgedistill bench RUN --concurrency 1,2,4,8,16   # users supported, teacher and artifacts alike
    python scripts/seed_claims.py RUN                # e.g. runs/demo after `edgedistill run`

It measures nothing itself. Where RUN/report.json is missing, or older than a bench record or the
eval summary, it runs `edgedistill report RUN` first. Each claim is marked ✓ (met), ✗ (missed),
? (retention only: the claim lies inside the 95% interval) or – (not measured: e.g. the teacher is
an endpoint, or no concurrency sweep ran). Ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SEED = {"latency_reduction": 0.85, "memory_reduction": 0.95, "retention": 0.92, "users_multiple": 10.0}
MARK = {"pass": "✓", "fail": "✗", "indeterminate": "?", "unmeasured": "–"}


def fresh_report(root: Path) -> Path:
    """RUN/report.json, rewritten by `edgedistill report RUN` where it is missing or stale."""
    report = root / "report.json"
    inputs = [*root.glob("bench/*/*.json"), root / "eval" / "summary.json"]
    newest = max((p.stat().st_mtime for p in inputs if p.is_file()), default=0.0)
    if report.is_file() and report.stat().st_mtime >= newest:
        return report
    why = "is missing" if not report.is_file() else "is older than the bench or eval results"
    print(f"{report} {why}: running `edgedistill report {root}`", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "edgedistill.cli", "report", str(root)], stdout=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"`edgedistill report {root}` failed (exit {proc.returncode})")
    return report


def _verdict(key: str, value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "unmeasured"
    if ci and None not in ci and ci[0] < SEED[key] <= ci[1]:
        return "indeterminate"
    return "pass" if value >= SEED[key] else "fail"


def compare(h: dict[str, Any]) -> dict[str, Any]:
    """One target's headline (report.json's ``headline[target]``) against the seed's claims."""
    users = h.get("users_supported") or {}
    measured = {"latency_reduction": (h.get("answer_ms") or {}).get("reduction"),
                "memory_reduction": (h.get("peak_rss_mb") or {}).get("reduction"),
                "retention": h.get("retention"), "users_multiple": users.get("multiple")}
    return {"artifact": h["artifact"], "shipped_basis": h.get("shipped_basis"),
            "teacher_model": h.get("teacher_model"), "teacher_measured": bool(h.get("teacher_measured")),
            "on_target": h.get("on_target"), "note": h.get("note"), "generate_tokens": h.get("generate_tokens"),
            "measured": measured, "retention_ci95": h.get("retention_ci95"), "eval_n": h.get("eval_n"),
            "size_reduction": (h.get("weights_bytes") or {}).get("reduction"),
            "users_supported": {"teacher": users.get("teacher"), "artifact": users.get("artifact"),
                                "service_level": users.get("service_level"), "note": users.get("note")},
            "verdicts": {k: _verdict(k, v, h.get("retention_ci95") if k == "retention" else None)
                         for k, v in measured.items()}}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _pair(d: dict[str, Any] | None, unit: str, scale: float = 1.0) -> str:
    d = d or {}
    if d.get("teacher") is None or d.get("artifact") is None:
        return ""
    return f"{d['teacher'] / scale:,.1f} {unit} → {d['artifact'] / scale:,.1f} {unit}"


def table(name: str, h: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """The printed comparison of one target."""
    m, v, u = c["measured"], c["verdicts"], c["users_supported"]
    ci = c["retention_ci95"]
    rows = [(f"lower latency ({c['generate_tokens'] or '?'}-token answer)", "85%", _pct(m["latency_reduction"]),
             v["latency_reduction"], _pair(h.get("answer_ms"), "ms")),
            ("lower memory (peak RSS)", "95%", _pct(m["memory_reduction"]), v["memory_reduction"],
             _pair(h.get("peak_rss_mb"), "MB")),
            ("retention (95% CI)", "92%", _pct(m["retention"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""),
             v["retention"], f"n = {c['eval_n']}" if c["eval_n"] else ""),
            ("users at once (service level)", "10x",
             "n/a" if m["users_multiple"] is None else f"{m['users_multiple']:.1f}x", v["users_multiple"],
             f"{u['teacher']} → {u['artifact']}" if u["artifact"] is not None else (u["note"] or "")),
            ("smaller weights", "", _pct(c["size_reduction"]), None, _pair(h.get("weights_bytes"), "MB", 1e6))]
    out = [f"{name}: the teacher {c['teacher_model']} against {c['artifact']} ({c['shipped_basis']})"
           + (f"; {c['note']}" if c.get("note") else ""),
           f"  {'claim':<34} {'seed':>5} {'measured':>24}    teacher → shipped"]
    for label, seed, got, verdict, detail in rows:
        out.append(f"  {label:<34} {seed:>5} {got:>24} {MARK[verdict] if verdict else ' '}  {detail}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory after eval and bench")
    a = ap.parse_args()
    root = Path(a.run)
    if not root.is_dir():
        raise SystemExit(f"{root} is not a run directory")
    report = fresh_report(root)
    heads = json.loads(report.read_text()).get("headline") or {}
    if not heads:
        raise SystemExit(f"{report} has no headline: no artifact was benched "
                         f"(run `edgedistill bench {root} --concurrency 1,2,4,8,16`, then this again)")
    out = {name: compare(h) for name, h in heads.items()}
    for name, h in heads.items():
        print("\n".join(table(name, h, out[name])))
    print(json.dumps({"report": str(report), "seed": SEED, "targets": out}, ensure_ascii=False))


if __name__ == "__main__":
    main()
