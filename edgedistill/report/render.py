"""report.md and report.html from report.json's content; the HTML embeds the plots of
:mod:`edgedistill.report.plots` (retention with its interval against size and decode speed, the
teacher beside the artifacts; latency percentiles per target)."""

from __future__ import annotations

import html
from typing import Any

from edgedistill.report.headline import html_section as headline_html, markdown_lines as headline_lines
from edgedistill.report.plots import latency_plot, tradeoff_plot
from edgedistill.report.sections import SETS_HEAD, eval_set_rows, training_lines, judge_lines, judge_rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _pct(d: Any, p: str = "p50") -> Any:
    return d.get(p) if isinstance(d, dict) else None


# ---------------------------------------------------------------------------------------------
# tables


def _interval(ci: Any) -> str:
    from edgedistill.report.gates import interval

    return interval(ci) if ci else "–"


def _retention(a: dict[str, Any]) -> str:
    """Retention with its 95% interval and n: ``0.923 [0.87, 0.97] n=120``."""
    if a.get("retention") is None:
        return "–"
    ci = f" {_interval(a['retention_ci95'])}" if a.get("retention_ci95") else ""
    n = f" n={a['eval_n']}" if a.get("eval_n") is not None else ""
    return f"{_fmt(a['retention'])}{ci}{n}"


LADDER_HEAD = ["rung", "model / path", "score", "score 95% CI", "retention", "retention 95% CI", "n"]


def _ladder_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    named = [(label, data[key]) for label, key in (("teacher", "teacher"), ("student (before)", "student_base"),
                                                   ("student (merged)", "student_merged"))]
    for label, r in named + [(a["id"], {**a, "model": a["path"]}) for a in data["artifacts"]]:
        rows.append([label, str(r["model"]), _fmt(r.get("score")), _interval(r.get("score_ci95")),
                     _fmt(r.get("retention")), _interval(r.get("retention_ci95")), _fmt(r.get("eval_n"))])
    return rows


def _verdict(gates: dict[str, Any]) -> str:
    v = gates.get("verdict") or ("pass" if gates.get("passed") else "fail")
    names = ", ".join(sorted({f["gate"] + (f" on {f['target']}" if f.get("target") else "")
                              for f in gates.get("failed", []) + gates.get("indeterminate", [])}))
    mark = {"pass": "✓ pass", "fail": "✗ fail", "indeterminate": "? indeterminate"}[v]
    counted = " (counted as pass)" if v == "indeterminate" and gates.get("passed") else ""
    return f"{mark}{counted}" + (f": {names}" if names else "")


def _speed(b: dict[str, Any]) -> str:
    """Decode tokens/s p50 on the target; measured elsewhere, the target's predicted bound first."""
    if b.get("error"):
        return f"error: {b['error']}"
    measured = _fmt(_pct(b.get("decode_tokens_per_s")))
    if b.get("on_target", True):
        return measured
    host = (b.get("measured_on") or {}).get("hostname")
    pred = b.get("predicted_decode_tokens_per_s")
    return (f"≤{_fmt(pred)} predicted" if pred is not None else "no prediction") + f" (host {host}: {measured})"


def _artifact_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for a in data["artifacts"]:
        parity = a.get("parity") or {}
        agree = parity.get("greedy_token_agreement") if isinstance(parity, dict) else None
        benches = a["bench"] or {"–": {}}
        for t, b in benches.items():
            off = b and not b.get("on_target", True)
            rss = _fmt(b.get("predicted_peak_rss_mb") if off else b.get("peak_rss_mb")) + (" predicted" if off else "")
            kld = (a.get("quant_loss") or {}).get("kld")
            host = " (host)" if off and not b.get("error") else ""  # not the target's: no prediction
            rows.append([a["id"], _fmt(a["bytes"] / 1e6 if a.get("bytes") else None), _retention(a),
                         _fmt(agree), _fmt(kld, 3), t, _speed(b) if b else "–",
                         _fmt(_pct(b.get("ttft_ms"))) + host, _fmt(_pct(b.get("ttft_ms"), "p90")) + host,
                         _fmt(_pct(b.get("token_latency_ms"), "p99")) + host, rss if b else "–",
                         _fmt(b.get("roofline_fraction")) if b.get("roofline_fraction") is not None or
                         not b.get("roofline_note") else "n/a (>1)",
                         _verdict(a["gates"])])
    return rows


ART_HEAD = ["artifact", "MB", "retention [95% CI] n", "parity", "KLD", "target", "tok/s p50", "TTFT p50 ms",
            "TTFT p90 ms", "lat p99 ms", "peak RSS MB", "roofline", "gates"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _where(data: dict[str, Any]) -> list[str]:
    lines = []
    for t, v in data["targets"].items():
        host = v.get("measured_on") or {}
        device = v.get("device") or {}
        wants = f"accelerators: {', '.join(v.get('accelerators') or []) or 'none'}"
        if not v["benched"]:
            lines.append(f"{t}: not benched{' (asked for by the recipe)' if v.get('asked') else ''}; {wants}")
            continue
        why = "; ".join(v.get("not_on_target_because") or [])
        honest = "on the target" if v["on_target"] else (
            f"measured_on: {host.get('hostname')}, not the target ({why}); the target's figures are predicted")
        has = ", ".join(host.get("accelerators") or []) or "none"
        lines.append(f"{t} ({device.get('description') or device.get('arch') or ''}; {wants}): measured on "
                     f"{host.get('hostname')} ({host.get('arch')}, {host.get('cpu')}, {host.get('cores_logical')} "
                     f"cores, {host.get('ram_mb')} MB, accelerators: {has}), {honest}; smallest artifact "
                     f"passing every gate: {v['smallest_passing'] or 'none'}")
    return lines


def _gate_lines(data: dict[str, Any]) -> list[str]:
    from edgedistill.report.gates import describe

    g = data["gates"]
    head = {"pass": "**All gates passed.**",
            "fail": "**Verdict: fail.**",
            "indeterminate": "**Verdict: indeterminate** (a limit lies inside its 95% interval; "
                             f"gates.on_indeterminate: {g.get('on_indeterminate', 'fail')}, so the check "
                             f"{'passes' if g['passed'] else 'fails'})."}[g.get("verdict") or
                                                                         ("pass" if g["passed"] else "fail")]
    out = [head, ""]
    if g["failed"]:
        out += ["Failed:", "", *[f"- {describe(f)}" for f in g["failed"]], ""]
    if g.get("indeterminate"):
        out += ["Indeterminate:", "", *[f"- {describe(f)}" for f in g["indeterminate"]], ""]
    return out


def render_markdown(data: dict[str, Any]) -> str:
    ref = data.get("reference") or "n/a"
    parts = [
        f"# edgedistill report — {data['run_dir']}", "",
        f"Task `{data['task']}`, metric `{data['metric']}` against **{ref}** answers "
        f"(n = {_fmt(data['eval']['n'])}). Recipe: `{data['recipe']}`.", "",
        *headline_lines(data),
        "## Retention ladder", "",
        _md_table([*LADDER_HEAD[:2], data["metric"], *LADDER_HEAD[3:]], _ladder_rows(data)), "",
        *(["## Eval sets", "", _md_table(SETS_HEAD, eval_set_rows(data)), ""] if eval_set_rows(data) else []),
        *(["## The judge", "", *judge_lines(data), "", _md_table(*judge_rows(data)), ""] if judge_lines(data) else []),
        *(["## Training labels", "", *[f"- {line}" for line in training_lines(data)], ""]
          if training_lines(data) else []),
        "## Artifacts", "", _md_table(ART_HEAD, _artifact_rows(data)), "",
        "## Targets", "", *[f"- {line}" for line in _where(data)], "",
        "## Gates", "",
        "Limits: " + (", ".join(f"`{k}` = {v}" for k, v in data["gate_limits"].items() if v is not None)
                      or "none set"),
        "",
        *_gate_lines(data),
        *_unchecked_lines(data),
    ]
    return "\n".join(parts)


def _unchecked_lines(data: dict[str, Any]) -> list[str]:
    """Target budgets a host's figures could not judge, grouped by target and budget."""
    seen: dict[tuple[str, str, Any], str] = {}
    for u in data.get("unchecked_budgets") or []:
        seen.setdefault((u["target"], u["gate"], u["limit"]), u["reason"])
    if not seen:
        return []
    return ["Target budgets not checked (a host's figures never pass or fail a device's budget):", "",
            *[f"- {t}: `{g}` = {lim} ({why})" for (t, g, lim), why in seen.items()], ""]


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}img{max-width:100%}.ok{color:#17813a}.bad{color:#b3261e}"""


def render_html(data: dict[str, Any]) -> str:
    from edgedistill.report.gates import describe

    e = html.escape
    plots = [(tradeoff_plot(data), "Size and decode speed against retention"),
             (latency_plot(data), "Latency percentiles per target")]
    imgs = "".join(f'<h2>{e(t)}</h2><img alt="{e(t)}" src="data:image/png;base64,{p}">' for p, t in plots if p)
    g = data["gates"]
    accepted = " (gates.on_indeterminate: pass)" if g.get("verdict") == "indeterminate" and g["passed"] else ""
    gates = (f'<p class="{"ok" if g["passed"] else "bad"}"><b>Verdict: {e(g.get("verdict") or "")}</b>{accepted}</p>' +
             ("<p>Failed gates:</p><ul>" + "".join(f"<li>{e(describe(f))}</li>" for f in g["failed"]) + "</ul>"
              if g["failed"] else "") +
             ("<p>Indeterminate gates (the limit lies inside the 95% interval):</p><ul>" +
              "".join(f"<li>{e(describe(f))}</li>" for f in g.get("indeterminate", [])) + "</ul>"
              if g.get("indeterminate") else ""))
    unchecked = "".join(f"<p>{e(line)}</p>" for line in _unchecked_lines(data) if line)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgedistill report</title>
<style>{CSS}</style></head><body>
<h1>edgedistill report</h1><p>{e(data['run_dir'])} — task <code>{e(data['task'])}</code>, metric
<code>{e(data['metric'])}</code> against <b>{e(str(data.get('reference') or 'n/a'))}</b> answers
(n = {e(_fmt(data['eval']['n']))}).</p>{headline_html(data)}
<h2>Retention ladder</h2>{_html_table([*LADDER_HEAD[:2], data["metric"], *LADDER_HEAD[3:]], _ladder_rows(data))}
{"<h2>Eval sets</h2>" + _html_table(SETS_HEAD, eval_set_rows(data)) if eval_set_rows(data) else ""}
{"<h2>The judge</h2>" + "".join(f"<p>{e(x)}</p>" for x in judge_lines(data)) + _html_table(*judge_rows(data)) if judge_lines(data) else ""}
{"<h2>Training labels</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in training_lines(data)) + "</ul>" if training_lines(data) else ""}
<h2>Artifacts</h2>{_html_table(ART_HEAD, _artifact_rows(data))}
<h2>Targets</h2><ul>{"".join(f"<li>{e(line)}</li>" for line in _where(data))}</ul>
<h2>Gates</h2>{gates}{unchecked}
{imgs}
</body></html>
"""
