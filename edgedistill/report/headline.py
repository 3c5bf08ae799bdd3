"""The headline: on each target, the teacher against the artifact the run ships, from the same
bench harness on the same machine (report.json's ``headline``, the first table of report.md/.html).

Per target: time to a whole answer (the median first token plus the rest of ``generate_tokens``
at the median decode speed: :func:`edgedistill.bench.measure.whole_answer_ms`), peak RSS, weights
(the files' bytes), users supported under the target's service level (the concurrency sweep), and
the retention with its 95% interval; each with its reduction (``1 - artifact / teacher``) or
multiple (``artifact / teacher`` for users). The shipped artifact is the target's
``smallest_passing``; where none passes every gate, the benched artifact with the highest
retention (then the smallest), said so in ``shipped_basis``. Where the teacher was not benched
(an endpoint, or an HF model), ``teacher_measured`` is false and ``note`` says why: no figure of
a machine other than the target stands in for it.
"""

from __future__ import annotations

import html
from typing import Any

from edgedistill.bench.measure import whole_answer_ms
from edgedistill.rundir import Run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _reduction(teacher: float | None, artifact: float | None) -> dict[str, Any]:
    show = (lambda v: v if v is None or isinstance(v, int) else round(v, 2))  # noqa: E731
    return {"teacher": show(teacher), "artifact": show(artifact),
            "reduction": round(1 - artifact / teacher, 4) if teacher and artifact is not None else None,
            "multiple": _ratio(teacher, artifact)}


def _answer_ms(rec: dict[str, Any]) -> float | None:
    if "error" in rec or not rec.get("generate_tokens"):
        return None
    return whole_answer_ms(rec, rec["generate_tokens"])


def _shipped(name: str, target: dict[str, Any], artifacts: list[dict[str, Any]],
             recs: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    by_id = {a["id"]: a for a in artifacts}
    if target.get("smallest_passing") in by_id:
        return by_id[target["smallest_passing"]], "the smallest artifact passing every gate"
    ran = [a for a in artifacts if a["id"] in recs and "error" not in recs[a["id"]]]
    if not ran:
        return None, f"no artifact was benched on {name}"
    best = max(ran, key=lambda a: (a.get("retention") if a.get("retention") is not None else -1,
                                   -(a.get("bytes") or 0)))
    return best, "no artifact passes every gate: the benched one with the highest retention"


def headline(run: Run, artifacts: list[dict[str, Any]], targets: dict[str, Any],
             bench: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """{target: the teacher against the shipped artifact}, from report.json's artifact entries and
    targets and the raw bench records ({target: {id: record}}; the teacher's id is ``teacher``)."""
    out = {}
    for name, target in targets.items():
        recs = bench.get(name) or {}
        art, basis = _shipped(name, target, artifacts, recs)
        if art is None:
            continue
        s, t = recs[art["id"]], recs.get("teacher")
        row: dict[str, Any] = {"artifact": art["id"], "shipped_basis": basis, "teacher_model": run.recipe.teacher.model,
                               "retention": art.get("retention"), "retention_ci95": art.get("retention_ci95"),
                               "eval_n": art.get("eval_n"), "on_target": s.get("on_target")}
        if t is None or "error" in t:
            why = ((run.stage_entry(f"bench:{name}") or {}).get("metrics") or {}).get("teacher")
            row.update(teacher_measured=False, note=(t or {}).get("error") and f"the teacher failed to run: "
                       f"{t['error']}" or why or "the teacher was not benched on this target")
            out[name] = row
            continue
        row["teacher_measured"] = True
        row["on_target"] = bool(s.get("on_target") and t.get("on_target"))
        if not row["on_target"]:
            row["note"] = f"measured on {(s.get('measured_on') or {}).get('hostname')}, not on {name}"
        row["generate_tokens"] = s.get("generate_tokens")
        row["answer_ms"] = _reduction(_answer_ms(t), _answer_ms(s))
        row["peak_rss_mb"] = _reduction(t.get("peak_rss_mb"), s.get("peak_rss_mb"))
        row["weights_bytes"] = _reduction(t.get("bytes"), art.get("bytes") or s.get("bytes"))
        tu, su = t.get("users_supported"), s.get("users_supported")
        row["users_supported"] = {"teacher": tu, "artifact": su, "multiple": _ratio(su, tu),
                                  "service_level": s.get("service_level") or t.get("service_level")}
        row["users_supported_ratio"] = _ratio(su, tu)
        if tu == 0 and su is not None:
            row["users_supported"]["note"] = (f"the teacher serves no user at the service level "
                                              f"({t.get('users_supported_reason')}); no ratio")
        elif tu is None or su is None:
            row["users_supported"]["note"] = (s.get("users_supported_reason") or t.get("users_supported_reason")
                                              or "no concurrency sweep (bench --concurrency 1,2,4,8,16)")
        out[name] = row
    return out


HEAD = ["", "teacher", "shipped", "change"]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _rows(h: dict[str, Any]) -> list[list[str]]:
    def red(d: dict[str, Any], unit: str, scale: float = 1.0, what: str = "less") -> list[str]:
        fmt = (lambda v: "n/a" if v is None else f"{v / scale:,.1f} {unit}")
        change = f"{_pct(d['reduction'])} {what}" + (f" ({d['multiple']:.1f}x)" if d.get("multiple") else "") \
            if d["reduction"] is not None else "n/a"
        return [fmt(d["teacher"]), fmt(d["artifact"]), change]

    ci = h.get("retention_ci95")
    ret = _pct(h.get("retention")) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "") + \
        (f" (n = {h['eval_n']})" if h.get("eval_n") else "")
    u = h["users_supported"]
    users = "n/a" if u["multiple"] is None else f"{u['multiple']:.1f}x"
    return [[f"time to a {h['generate_tokens']}-token answer", *red(h["answer_ms"], "ms")],
            ["peak RSS", *red(h["peak_rss_mb"], "MB")],
            ["weights", *red(h["weights_bytes"], "MB", 1e6, "smaller")],
            ["users supported", str(u["teacher"]), str(u["artifact"]), users + (f" ({u['note']})" if u.get("note") else "")],
            ["retention (95% CI)", "100% (the reference)", ret, ""]]


def _title(name: str, h: dict[str, Any]) -> str:
    return (f"{name}: the teacher {h['teacher_model']} against {h['artifact']} ({h['shipped_basis']})"
            + (f"; {h['note']}" if h.get("note") else ""))


def markdown_lines(data: dict[str, Any]) -> list[str]:
    """report.md's headline section (empty without one)."""
    heads = data.get("headline") or {}
    if not heads:
        return []
    out = ["## Headline: the teacher against the shipped artifact", ""]
    for name, h in heads.items():
        out += [_title(name, h) + ".", ""]
        if h.get("teacher_measured"):
            out += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD),
                    *["| " + " | ".join(r) + " |" for r in _rows(h)], ""]
    return out


def html_section(data: dict[str, Any]) -> str:
    heads = data.get("headline") or {}
    if not heads:
        return ""
    e = html.escape
    parts = ["<h2>Headline: the teacher against the shipped artifact</h2>"]
    for name, h in heads.items():
        parts.append(f"<p>{e(_title(name, h))}.</p>")
        if h.get("teacher_measured"):
            th = "".join(f"<th>{e(x)}</th>" for x in HEAD)
            trs = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in _rows(h))
            parts.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
    return "".join(parts)
