"""The gates: what an artifact must reach to ship (the recipe's ``gates.*`` and each target's
``budgets``), judged from report.json's per-artifact entries, and their one-line descriptions."""

from __future__ import annotations

from typing import Any

# gate -> (bench field, percentile or None, "max" | "min")
BENCH_GATES = {
    "max_peak_rss_mb": ("peak_rss_mb", None, "max"),
    "min_decode_tokens_per_s": ("decode_tokens_per_s", "p50", "min"),
    "max_ttft_ms": ("ttft_ms", "p50", "max"),
}


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
