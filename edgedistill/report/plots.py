"""The report's plots, by matplotlib (Agg), as base64 PNG for the HTML: size and decode speed
against retention per artifact, each with its 95% interval as an error bar, the Pareto front
marked and the teacher as a point of its own; and latency percentiles per target.

:func:`tradeoff_series` computes what the trade-off plot draws, from report.json's content alone.
"""

from __future__ import annotations

import base64
import io
from typing import Any

PCTS = ("p50", "p90", "p99")


def pareto_front(points: list[tuple[float, float]], minimize_x: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y is always maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            better_x = x2 <= x if minimize_x else x2 >= x
            strictly = (x2 != x) or (y2 != y)
            if j != i and better_x and y2 >= y and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _p50(d: Any) -> Any:
    return d.get("p50") if isinstance(d, dict) else None


def _point(label: str, x: float, a: dict[str, Any]) -> dict[str, Any]:
    """An artifact's point: retention, and how far its 95% interval reaches below and above it."""
    y, ci = a["retention"], a.get("retention_ci95")
    lo, hi = ci if ci and None not in ci else (y, y)
    return {"label": label, "x": x, "y": y, "err": (round(max(y - lo, 0.0), 6), round(max(hi - y, 0.0), 6))}


def _teacher(x: float | None) -> dict[str, Any] | None:
    """The teacher's point: retention 1.0 by definition (score / its own score), no interval."""
    return {"label": "teacher", "x": x, "y": 1.0, "err": (0.0, 0.0)} if x else None


def _on_target(b: dict[str, Any] | None) -> float | None:
    """Decode tokens/s p50 where measured on the target itself (a host's speed is never a device's)."""
    b = b or {}
    return _p50(b.get("decode_tokens_per_s")) if b.get("on_target", True) and not b.get("error") else None


def tradeoff_series(data: dict[str, Any]) -> dict[str, Any] | None:
    """What :func:`tradeoff_plot` draws: ``{"size": {"points", "teacher"}, "speed": {target:
    {"points", "teacher"}}}``, a point being ``{"label", "x", "y", "err": (below, above)}``; x in
    MB or decode tokens/s, y the retention. The teacher's point is there where bench measured it:
    its weights (report.json's ``teacher.bytes``), its decode speed on each target it was measured
    on. None without an artifact that has a retention and a size."""
    arts = [a for a in data["artifacts"] if a.get("retention") is not None and a.get("bytes")]
    if not arts:
        return None
    teacher = data.get("teacher") or {}
    size = {"points": [_point(a["id"], a["bytes"] / 1e6, a) for a in arts],
            "teacher": _teacher(teacher["bytes"] / 1e6 if teacher.get("bytes") else None)}
    speed = {}
    for t in sorted({t for a in arts for t, b in a["bench"].items() if _on_target(b)}):
        sel = [a for a in arts if _on_target(a["bench"].get(t))]
        speed[t] = {"points": [_point(a["id"], _on_target(a["bench"][t]), a) for a in sel],
                    "teacher": _teacher(_on_target((teacher.get("bench") or {}).get(t)))}
    return {"size": size, "speed": speed}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _draw(ax, series: dict[str, Any], minimize_x: bool, marker: str, name: str) -> None:
    pts = series["points"]
    xy = [(p["x"], p["y"]) for p in pts]
    bars = ax.errorbar([p["x"] for p in pts], [p["y"] for p in pts], fmt=marker, ms=6, alpha=0.8, capsize=3,
                       yerr=[[p["err"][0] for p in pts], [p["err"][1] for p in pts]],
                       label=f"{name + ': ' if name else ''}artifacts (95% CI)")
    color = bars.lines[0].get_color()
    front = pareto_front(xy, minimize_x)
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", lw=1.2, color=color,
            label=f"Pareto front{' (' + name + ')' if name else ''}")
    ax.scatter([xy[i][0] for i in front], [xy[i][1] for i in front], s=140, facecolors="none",
               edgecolors="crimson", lw=1.5)
    t = series["teacher"]
    if t:
        ax.scatter([t["x"]], [t["y"]], marker="*", s=260, color=color, edgecolors="black", zorder=5,
                   label=f"teacher{' on ' + name if name else ''}")
        xy.append((t["x"], t["y"]))
    for (x, y), lab in zip(xy, [p["label"] for p in pts] + ["teacher"]):
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs = [x for x, _ in xy]
    if min(xs) > 0 and max(xs) / min(xs) > 10:  # a 1.5 GB teacher beside 100 MB students
        from matplotlib.ticker import StrMethodFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def tradeoff_figure(data: dict[str, Any]):
    """The trade-off figure (size, and decode speed per target, against retention), or None."""
    series = tradeoff_series(data)
    if series is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = series["speed"]
    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(12 if speed else 6, 4.4), squeeze=False)
    ax = axes[0][0]
    _draw(ax, series["size"], True, "o", "")
    ax.set(xlabel="size (MB)", ylabel="retention (score / teacher)", title="Size vs retention")
    ax.axhline(1.0, color="grey", lw=0.6)
    if data["gate_limits"].get("min_retention") is not None:
        ax.axhline(data["gate_limits"]["min_retention"], color="crimson", lw=0.8, ls=":", label="min_retention gate")
    ax.legend(fontsize=8)
    if speed:
        ax = axes[0][1]
        for (t, s), marker in zip(speed.items(), "os^Dv<>"):
            _draw(ax, s, False, marker, t)
        ax.set(xlabel="decode tokens/s (p50)", ylabel="retention", title="Decode speed vs retention")
        ax.legend(fontsize=8)
    fig.suptitle("higher is better on retention; bars are 95% intervals; circled points are on the "
                 "artifacts' Pareto front; the star is the teacher", fontsize=9)
    return fig


def tradeoff_plot(data: dict[str, Any]) -> str | None:
    fig = tradeoff_figure(data)
    return _png(fig) if fig is not None else None


def latency_plot(data: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    targets = sorted({t for a in data["artifacts"] for t, b in a["bench"].items() if _p50(b.get("ttft_ms"))})
    if not targets:
        return None
    fig, axes = plt.subplots(2, len(targets), figsize=(6 * len(targets), 7), squeeze=False)
    for col, t in enumerate(targets):
        arts = [a for a in data["artifacts"] if _p50((a["bench"].get(t) or {}).get("ttft_ms"))]
        x = np.arange(len(arts))
        for row, (field, title) in enumerate((("ttft_ms", "TTFT (ms)"), ("token_latency_ms", "per-token latency (ms)"))):
            ax = axes[row][col]
            for k, p in enumerate(PCTS):
                vals = [(a["bench"][t].get(field) or {}).get(p) or 0 for a in arts]
                ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=p)
            ax.set_xticks(x, [a["id"] for a in arts], rotation=30, ha="right", fontsize=8)
            ax.set(ylabel=title, title=f"{t}: {title}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
