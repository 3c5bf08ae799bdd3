"""The gates: what an artifact must reach to ship (the recipe's ``gates.*`` and each target's
``budgets`` and ``ram_mb``), judged from report.json's per-artifact entries. Each gate's verdict is
pass, fail or indeterminate:

- ``min_retention`` is judged on the retention's 95% paired-bootstrap interval: fail when the whole
  interval is below the limit, pass when it is all at or above it, indeterminate when the limit
  lies inside it (without an interval, on the point value). ``min_eval_n`` refuses to judge it on
  fewer eval examples (a failure, saying so);
- ``min_judge_retention``: the judge's retention (eval.judge), on its interval like
  ``min_retention``; indeterminate, with the reason, when the judge's agreement with known verdicts
  is under ``eval.judge.min_agreement``;
- ``max_kld``: a quantized artifact's KL divergence from the merged model (``quant_loss.kld``), on
  its interval when it has one; a full-precision artifact without ``quant_loss`` passes;
- ``runs``: an artifact that failed to load or run on a target fails there; ``intact``: one whose
  files changed since export fails;
- ``min_users_supported``: the concurrency sweep's ``users_supported`` on each target (none
  measured: fail; measured elsewhere: indeterminate);
- bench gates (``max_peak_rss_mb``, ``min_decode_tokens_per_s`` p50, ``max_ttft_ms`` p50) on each
  target: on the target itself, its measurement decides. Measured on another machine, a host's
  figure never passes: the target's predicted figure fails the gate when even it misses (the
  roofline speed is an upper bound; the predicted peak RSS is the host's), and otherwise a recipe
  gate is indeterminate and a target budget is listed as unchecked. ``ram_mb``: a peak RSS over the
  target's RAM fails, measured there or predicted.

A verdict's ``passed`` is what the exit code follows: pass, or indeterminate with
``gates.on_indeterminate: pass``.
"""

from __future__ import annotations

from typing import Any

# gate -> (bench field, percentile or None, "max" | "min", predicted field or None)
BENCH_GATES = {
    "max_peak_rss_mb": ("peak_rss_mb", None, "max", "predicted_peak_rss_mb"),
    "min_decode_tokens_per_s": ("decode_tokens_per_s", "p50", "min", "predicted_decode_tokens_per_s"),
    "max_ttft_ms": ("ttft_ms", "p50", "max", None),
}
FULL_PRECISION = {"fp32", "f32", "fp16", "f16", "bf16"}


def _interval_verdict(value: float, ci: list | None, limit: float, kind: str) -> str:
    """pass | fail | indeterminate for ``value`` (with its 95% interval) against a min/max limit."""
    lo, hi = (ci[0], ci[1]) if ci else (value, value)
    lo = float("-inf") if lo is None else lo
    hi = float("inf") if hi is None else hi
    if kind == "min":
        return "fail" if hi < limit else "pass" if lo >= limit else "indeterminate"
    return "fail" if lo > limit else "pass" if hi <= limit else "indeterminate"


def _eval_gates(artifact: dict[str, Any], gates: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    aid, n = artifact["id"], artifact.get("eval_n")
    min_n = gates.get("min_eval_n")
    refused = min_n is not None and (n is None or n < min_n)
    if refused:
        out.append({"artifact": aid, "gate": "min_eval_n", "verdict": "fail", "value": n, "limit": min_n,
                    "reason": f"refusing to judge on {n or 0} eval example(s); gates.min_eval_n is {min_n}"})
    # (gate, value field, why a missing value is missing, why a value cannot be trusted)
    untrusted = artifact.get("judge_calibration_reason") or "the judge is not trusted" \
        if artifact.get("judge_calibration_trusted") is False else None
    for gate, field, missing, distrust in (
            ("min_retention", "retention", "not evaluated (run `edgedistill eval`)", None),
            ("min_judge_retention", "judge_retention", "not judged (eval.judge; run `edgedistill judge`)",
             untrusted)):
        limit = gates.get(gate)
        if limit is None or refused:
            continue
        value, ci = artifact.get(field), artifact.get(f"{field}_ci95")
        base = {"artifact": aid, "gate": gate, "value": value, "limit": limit, "ci95": ci, "n": n}
        if value is None:
            out.append({**base, "verdict": "fail", "reason": missing})
        elif distrust:
            out.append({**base, "verdict": "indeterminate", "reason": distrust})
        else:
            out.append({**base, "verdict": _interval_verdict(value, ci, limit, "min")})
    limit = gates.get("max_kld")
    if limit is not None:
        loss = artifact.get("quant_loss") or {}
        kld = loss.get("kld")
        base = {"artifact": aid, "gate": "max_kld", "value": kld, "limit": limit, "ci95": loss.get("kld_ci95")}
        if kld is not None:
            out.append({**base, "verdict": _interval_verdict(kld, loss.get("kld_ci95"), limit, "max")})
        elif loss.get("non_finite_positions"):
            out.append({**base, "verdict": "fail", "reason": f"its logits are not finite at "
                        f"{loss['non_finite_positions']} of {loss.get('tokens')} positions (a broken artifact)"})
        elif artifact.get("precision") not in FULL_PRECISION:
            out.append({**base, "verdict": "fail", "reason": "no quant_loss measured (run `edgedistill quantize`)"})
    return out


def _bench_gates(artifact: dict[str, Any], gates: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    aid, benches = artifact["id"], artifact.get("bench") or {}
    if artifact.get("damaged"):
        out.append({"artifact": aid, "gate": "intact", "verdict": "fail", "value": None, "limit": None,
                    "reason": "its files changed since export; re-export it (`edgedistill export RUN --force`)"})
    for gate in (*BENCH_GATES, "min_users_supported"):
        if gates.get(gate) is not None and not benches:
            out.append({"artifact": aid, "gate": gate, "verdict": "fail", "value": None, "limit": gates[gate],
                        "reason": "not benched (run `edgedistill bench`)"})
    for target, b in benches.items():
        where = {"artifact": aid, "target": target}
        if b.get("error"):
            out.append({**where, "gate": "runs", "verdict": "fail", "value": None, "limit": None,
                        "reason": f"failed to load or run: {b['error']}"})
            continue
        here = bool(b.get("on_target"))
        budgets = b.get("budgets") or {}
        for gate, (field, pct, kind, predicted_field) in BENCH_GATES.items():
            raw = b.get(field)
            measured = raw.get(pct) if isinstance(raw, dict) else raw
            predicted = b.get(predicted_field) if predicted_field else None
            for limit, source in ((gates.get(gate), "recipe"), (budgets.get(gate), "target budget")):
                if limit is None:
                    continue
                f = {**where, "gate": gate, "limit": limit, "source": source}
                if here:
                    missed = measured is None or (measured > limit if kind == "max" else measured < limit)
                    out.append({**f, "value": measured, "verdict": "fail" if missed else "pass",
                                **({"reason": "not measured"} if measured is None else {})})
                elif predicted is not None and (predicted > limit if kind == "max" else predicted < limit):
                    out.append({**f, "value": predicted, "predicted": True, "verdict": "fail"})
                else:
                    out.append({**f, "value": predicted, "predicted": predicted is not None,
                                "verdict": "indeterminate" if source == "recipe" else "unchecked",
                                "reason": f"measured on {(b.get('measured_on') or {}).get('hostname')}, not on "
                                          f"{target}" + (" (the prediction cannot decide it)" if predicted else "")})
        out += _users_gate(where, b, gates.get("min_users_supported"), here)
        ram = budgets.get("ram_mb")
        rss = b.get("peak_rss_mb") if here else b.get("predicted_peak_rss_mb")
        if ram is not None and rss is not None:
            out.append({**where, "gate": "ram_mb", "limit": ram, "value": rss, "predicted": not here,
                        "source": "target budget", "verdict": "fail" if rss > ram else "pass"})
    return out


def _users_gate(where: dict[str, Any], b: dict[str, Any], limit: int | None, here: bool) -> list[dict[str, Any]]:
    """``gates.min_users_supported``: the concurrency sweep's users_supported on the target."""
    if limit is None:
        return []
    f = {**where, "gate": "min_users_supported", "limit": limit, "source": "recipe",
         "value": b.get("users_supported")}
    if f["value"] is None:
        return [{**f, "verdict": "fail", "reason": b.get("users_supported_reason") or
                 "no concurrency sweep (run `edgedistill bench RUN --concurrency 1,2,4,8,16`)"}]
    if not here:
        return [{**f, "verdict": "indeterminate", "reason": f"measured on "
                 f"{(b.get('measured_on') or {}).get('hostname')}, not on {where['target']}"}]
    return [{**f, "verdict": "pass" if f["value"] >= limit else "fail",
             **({} if f["value"] >= limit else {"reason": b.get("users_supported_reason")})}]


def judge(artifact: dict[str, Any], gates: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gate judged for one artifact: dicts with ``gate``, ``verdict`` (pass | fail |
    indeterminate | unchecked), ``value``, ``limit`` and, where they apply, ``target``, ``source``,
    ``ci95``, ``n``, ``predicted``, ``reason``."""
    return _eval_gates(artifact, gates) + _bench_gates(artifact, gates)


def verdict(findings: list[dict[str, Any]], on_indeterminate: str = "fail") -> dict[str, Any]:
    """report.json's ``gates`` object for a list of judged gates."""
    failed = [f for f in findings if f["verdict"] == "fail"]
    unsure = [f for f in findings if f["verdict"] == "indeterminate"]
    overall = "fail" if failed else "indeterminate" if unsure else "pass"
    passed = overall == "pass" or (overall == "indeterminate" and on_indeterminate == "pass")
    return {"verdict": overall, "passed": passed, "failed": failed, "indeterminate": unsure}


def describe(f: dict[str, Any]) -> str:
    if f.get("message"):
        return f["message"]
    where = f" on {f['target']}" if f.get("target") else ""
    if f.get("source") == "target budget":
        where += " (target budget)"
    if f["gate"] in ("runs", "intact", "min_eval_n", "measured"):
        return f"{f['artifact']}{where}: {f['gate']}: {f['reason']}"
    if f["value"] is None:
        return f"{f['artifact']}: {f['gate']}{where}: no value ({f.get('reason', 'not measured')}), limit {f['limit']}"
    name = "predicted " + f["gate"] if f.get("predicted") else f["gate"]
    spread = f" (95% CI {interval(f['ci95'])}{', n=' + str(f['n']) if f.get('n') is not None else ''})" \
        if f.get("ci95") else (f" (n={f['n']})" if f.get("n") is not None else "")
    if f["verdict"] == "indeterminate":
        why = f"; {f['reason']}" if f.get("reason") else ""
        return (f"{f['artifact']}: {name}{where} = {_num(f['value'])}{spread}: indeterminate against limit "
                f"{f['limit']}{why if not f.get('ci95') or f.get('reason') else ' (the limit lies inside the interval)'}")
    op = ("<" if f["gate"].startswith("min_") else ">") if f["verdict"] == "fail" else \
        (">=" if f["gate"].startswith("min_") else "<=")
    return f"{f['artifact']}: {name}{where} = {_num(f['value'])} {op} limit {f['limit']}{spread}"


def interval(ci: list | None) -> str:
    if not ci:
        return "–"
    lo, hi = ci
    return f"[{_num(lo) if lo is not None else '-∞'}, {_num(hi) if hi is not None else '∞'}]"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
