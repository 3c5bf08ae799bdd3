"""Write the README's demo results from a real run: every figure in that section comes from the run's
report.json and manifest.json, through docs/demo-results.json (committed, so a test can check the
README against it, as the CLI reference is checked against --help).

    python scripts/gen_demo_table.py runs/demo      # after `edgedistill run` (and bench --concurrency)
    python scripts/gen_demo_table.py runs/support --name support   # the support profile's section
    python scripts/gen_demo_table.py --check         # exit 1 when README.md does not match the snapshots

The snapshot keeps what the table shows (scores and retention with their 95% intervals on the eval
split and on each eval set, sizes, bench figures, the report's headline -- the teacher against the
shipped artifact on each target, set beside the seed's claims --, how the training labels were
verified, stage seconds and the wall time from the manifest's timestamps), the host and the
package versions, so a stranger can see where each number came from and recompute it by running
the same commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from generated import between  # scripts/generated.py
from seed_claims import compare  # scripts/seed_claims.py: the headline against the seed's claims

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NAMES = ("demo", "support", "gemma")  # a README section and a snapshot each: docs/NAME-results.json
# sections that set a run beside the demo's (the same profile, another student): one row a student
COMPACT = {"gemma": "--set student.model=pypi:gemma-3-270m"}


def snapshot_path(name: str) -> Path:
    return ROOT / "docs" / f"{name}-results.json"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}-results:start -->", f"<!-- {name}-results:end -->"


def _ts(stamp: str) -> float:
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))


def by_kind(run_dir: Path, rungs: list[str]) -> dict[str, dict[str, list[float]]]:
    """Right answers / questions per question kind (the ``kind`` field of the eval records), for each
    rung: where the student falls behind the teacher."""
    kinds = {}
    for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            kinds[rec["id"]] = rec.get("kind")
    if not any(kinds.values()):
        return {}
    out: dict[str, dict[str, list[float]]] = {}
    for rung in rungs:
        path = run_dir / "eval" / f"{rung}.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                cell = out.setdefault(kinds.get(rec["id"]) or "other", {}).setdefault(rung, [0, 0])
                cell[0] += rec.get("score") or 0
                cell[1] += 1
    return dict(sorted(out.items()))


SECTIONS = ("teacher", "student", "train", "export", "eval", "bench", "gates", "targets")  # not data: its paths


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()} if d else {prefix: d}


def overrides(run_dir: Path, profile: str) -> list[str]:
    """The `--set KEY=VALUE`s that turn the bundled ``profile`` into the run's recipe (what the run
    directory's config.yaml holds), leaving out what the student's own set implies (a packaged
    base model's chat template)."""
    from edgedistill.recipes import load_recipe
    from edgedistill.schema import bundled

    path = Path(profile) if Path(profile).is_file() else bundled("profiles") / Path(profile).name

    def diff(sets: list[str]) -> list[str]:
        base = _flat(load_recipe(path, sets).model_dump(mode="json", include=set(SECTIONS)))
        return [f"{k[:-1]}={v if isinstance(v, str) else json.dumps(v)}" for k, v in ran.items() if base.get(k) != v]

    ran = _flat(load_recipe(run_dir / "config.yaml").model_dump(mode="json", include=set(SECTIONS)))
    student = [x for x in diff([]) if x.startswith("student.model=")]
    return student + diff(student)


def snapshot(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    # `run` ends with the report stage, which a later bench or report runs again: the wall time
    # is up to the last other stage, plus the report's own seconds
    finished = [_ts(s["finished_at"]) + (stages.get("report", {}).get("seconds") or 0)
                for name, s in stages.items() if s.get("finished_at") and name != "report"]
    keep = ("id", "bytes", "score", "score_ci95", "retention", "retention_ci95", "eval_n", "eval_sets",
            "quant_loss")
    arts = []
    for a in report["artifacts"]:
        bench = (a.get("bench") or {}).get("cpu-x86") or {}
        arts.append({**{k: a.get(k) for k in keep},
                     "decode_tokens_per_s": (bench.get("decode_tokens_per_s") or {}).get("p50"),
                     "peak_rss_mb": bench.get("peak_rss_mb"), "ttft_ms": (bench.get("ttft_ms") or {}).get("p50"),
                     "verdict": a["gates"].get("verdict")})
    judge_keys = ("judge_retention", "judge_retention_ci95", "judge_score", "judge_score_ci95", "judge")
    for a, full in zip(arts, report["artifacts"]):
        a.update({k: full[k] for k in judge_keys if k in full})
    rung_keys = ("model", "score", "score_ci95", "retention", "retention_ci95", "eval_n", "eval_sets") + judge_keys
    host = next((a["bench"]["cpu-x86"].get("measured_on") for a in report["artifacts"]
                 if (a.get("bench") or {}).get("cpu-x86")), None)
    return {
        "source": {"run_dir": report["run_dir"], "recipe": report["recipe"],
                   "overrides": overrides(run_dir, report["recipe"]),
                   "edgedistill_version": report["edgedistill_version"], "host": host,
                   "versions": next((s.get("versions") for s in stages.values() if s.get("versions")), None)},
        "metric": report["metric"], "eval": report["eval"], "training_data": report.get("training_data"),
        "teacher": {k: report["teacher"].get(k) for k in rung_keys + ("resample", "rubric_mean") if k in report["teacher"]},
        "judge": report.get("judge"), "judge_calibration": report.get("judge_calibration"),
        "task": report.get("task"), "reference": report.get("reference"),
        "student_base": {k: report["student_base"].get(k) for k in rung_keys},
        "student_merged": {k: report["student_merged"].get(k) for k in rung_keys},
        "artifacts": arts, "smallest_passing": report.get("smallest_passing"),
        "gates": {"verdict": report["gates"].get("verdict"), "passed": report["gates"].get("passed"),
                  "limits": report.get("gate_limits")},
        "headline": report.get("headline"),
        "by_kind": by_kind(run_dir, list(dict.fromkeys(  # each rung once
            ["teacher", "student_merged", (report.get("smallest_passing") or {}).get("cpu-x86") or "student_merged"]))),
        "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        "wall_seconds": round(max(finished) - _ts(manifest["created_at"])) if finished else None,
    }


def _n(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci or None in ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _service_level(limits: dict | None) -> str:
    limits = limits or {}
    parts = [text.format(limits[key]) for key, text in (("max_ttft_ms_p95", "p95 TTFT ≤ {:g} ms"),
                                                          ("min_tokens_per_s_per_user", "≥ {:g} tokens/s per user"))
             if limits.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def headline_sentence(heads: dict, target: str = "cpu-x86") -> str | None:
    """The report's headline on ``target`` (else the first benched one), as scripts/seed_claims.py
    sets it against the seed's claims: every figure from report.json's ``headline``."""
    if not heads:
        return None
    name = target if target in heads else next(iter(heads))
    h = heads[name]
    c = compare(h)
    m, u, ci = c["measured"], c["users_supported"], c["retention_ci95"]
    ret = f"{_pct(m['retention'])} retention" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
    lead = (f"The report's headline on {name} (`python scripts/seed_claims.py RUN` sets it against the seed's "
            f"85% lower latency, 95% lower memory, 92% retention and 10x users): {c['artifact']} "
            f"({c['shipped_basis']})")
    if not c["teacher_measured"]:
        return f"{lead} keeps {ret} of the teacher's score; the teacher was not measured on {name}: {c['note']}."
    level = f"users at once under the service level{_service_level(u['service_level'])}"
    if u["artifact"] is None or u["teacher"] is None:
        users = f"users at once: not measured, {u['note']}"
    elif u["teacher"] == 0:
        users = f"{level}: {u['artifact']} against none for the teacher"
    else:
        users = f"{level}: {u['artifact']} against the teacher's {u['teacher']}, {m['users_multiple']:.1f}x"
    where = "" if c["on_target"] else f" ({c['note']})"
    return (f"{lead} against the teacher {c['teacher_model']}, by the same bench on the same machine{where}: "
            f"{_pct(m['latency_reduction'])} less time to a whole {c['generate_tokens']}-token answer, "
            f"{_pct(m['memory_reduction'])} lower peak RSS, {_pct(c['size_reduction'])} smaller weights, {ret}; "
            f"{users}.")


def _gates(r: dict) -> str:
    """The run's gate verdict, the artifacts that missed, and the exit code the run gave."""
    g = r.get("gates") or {}
    missed: dict[str, list[str]] = {}
    for a in r["artifacts"]:
        if a.get("verdict") not in (None, "pass"):
            missed.setdefault(a["verdict"], []).append(a["id"])
    code = 0 if g.get("passed") else 1  # report.json's gates.passed: what the run's exit code follows
    said = "; ".join(f"{v}: {', '.join(ids)}" for v, ids in missed.items()) or g.get("verdict")
    return f"{said} (exit {code})"


def render_students(s: dict, name: str) -> str:
    """The demo's shipped student beside another student's run of the same profile."""
    demo_path = snapshot_path("demo")
    runs = ([("demo", json.loads(demo_path.read_text()))] if demo_path.is_file() else []) + [(name, s)]
    host = s["source"].get("host") or {}
    sets = " ".join(f"--set {x}" for x in s["source"].get("overrides") or []) or COMPACT[name]
    out = [f"The demo's recipe with another student (`edgedistill run {sets}`), on "
           f"{host.get('cpu')} ({host.get('cores_logical')} cores); {s['metric']} on the {s['eval']['n']} "
           "held-out questions, the shipped artifact's retention with its 95% interval. Every "
           "artifact passed its parity check (export keeps no file that fails it).", "",
           "| student | before → merged | shipped | retention [95% CI] | size | decode tok/s | peak RSS | gates (exit) |",
           "|---|---|---|---|---|---|---|---|"]
    for _, r in runs:
        ship = (r.get("smallest_passing") or {}).get("cpu-x86")
        label = ship
        if not ship:  # none passes every gate: the report's headline names the one it would ship
            ship = ((r.get("headline") or {}).get("cpu-x86") or {}).get("artifact")
            label = f"{ship} (misses a gate: {r['gates']['verdict']})"
        a = next((x for x in r["artifacts"] if x["id"] == ship), None) or {}
        out.append(f"| {r['student_base']['model']} | {_n(r['student_base'].get('score'))} → "
                   f"{_n(r['student_merged'].get('score'))} | {label or 'none'} | "
                   f"{_n(a.get('retention')) + _ci(a.get('retention_ci95'))} | "
                   f"{a['bytes'] / 1e6:.0f} MB | {_n(a.get('decode_tokens_per_s'), 0)} | "
                   f"{_n(a.get('peak_rss_mb'), 0)} MB | {_gates(r)} |" if a else
                   f"| {r['student_base']['model']} | | none | | | | | {_gates(r)} |")
    out += ["", f"Snapshot: `docs/{name}-results.json` (`python scripts/gen_demo_table.py RUN --name {name}`)."]
    return "\n".join(out) + "\n"


def render(s: dict, name: str = "demo") -> str:
    if name in COMPACT:
        return render_students(s, name)
    sets = list((s["eval"].get("sets") or {}))
    judge = s.get("judge") or {}
    gold_judge = judge.get("mode") == "gold"
    head = ["rung", f"{s['metric']} [95% CI]", "retention [95% CI]"]
    head += [f"{name}: {s['metric']} / retention" for name in sets]
    if judge:
        head += (["judged right and in form [95% CI]", "judge retention [95% CI]"] if gold_judge else
                 ["judge retention [95% CI]", "wins / ties / losses", "rubric ratio"])
    head += ["size", "decode tok/s", "peak RSS"]
    rows = []

    def row(label: str, r: dict, a: dict | None = None) -> None:
        cells = [label, _n(r.get("score")) + _ci(r.get("score_ci95")),
                 _n(r.get("retention")) + _ci(r.get("retention_ci95"))]
        for name in sets:
            e = (r.get("eval_sets") or {}).get(name) or {}
            cells.append(f"{_n(e.get('score'))} / {_n(e.get('retention'))}"
                         + (f" ({_n(e['in_form'])} in form)" if e.get("in_form") is not None else ""))
        if judge:
            j = r.get("judge") or {}
            ret = _n(r.get("judge_retention")) + _ci(r.get("judge_retention_ci95")) \
                if r.get("judge_retention") is not None else ""
            if gold_judge:
                cells += [_n(r.get("judge_score")) + _ci(r.get("judge_score_ci95"))
                          + (f" (n={j['n']})" if j.get("n") and j.get("n") != s["eval"]["n"] else ""), ret]
            else:
                cells += [ret + (f" (n={j['n']})" if ret and j.get("n") != s["eval"]["n"] else ""),
                          f"{j['wins']} / {j['ties']} / {j['losses']}" if "wins" in j else "",
                          _n(j.get("rubric_ratio")) if j.get("rubric_ratio") is not None else ""]
        a = a or {}
        cells += [f"{a['bytes'] / 1e6:.0f} MB" if a.get("bytes") else "",
                  _n(a.get("decode_tokens_per_s"), 0) if a.get("decode_tokens_per_s") else "",
                  f"{a['peak_rss_mb']:.0f} MB" if a.get("peak_rss_mb") else ""]
        rows.append(cells)

    row(f"teacher ({s['teacher']['model']})", s["teacher"])
    if s["teacher"].get("resample"):
        row("teacher asked again", s["teacher"]["resample"])
    row("student before distillation", s["student_base"])
    row("student after (merged)", s["student_merged"])
    for a in s["artifacts"]:
        row(a["id"], a, a)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ev = s["eval"]
    out = [f"Measured by `edgedistill run` on {((s['source'].get('host') or {}).get('cpu')) or 'this machine'} "
           f"({(s['source'].get('host') or {}).get('cores_logical')} cores): the whole run took "
           f"{(s['wall_seconds'] or 0) / 60:.1f} min; {s['metric']} against the "
           + (f"teacher's replies to {ev['n']} held-out conversations" if s.get("reference") == "teacher" else
              f"gold answers of {ev['n']} held-out questions")
           + "".join(f" and of the {v['n']} questions of `{k}`" for k, v in (ev.get("sets") or {}).items())
           + ("" if not any((e.get("in_form") is not None) for r in [s["teacher"], *s["artifacts"]]
                            for e in (r.get("eval_sets") or {}).values()) else
              " (a question that asks for only the value or a whole sentence counts as right only in that form)")
           + "; 95% intervals by bootstrap over the eval examples (paired for retention).", "", *lines, ""]
    cal = s.get("judge_calibration")
    if judge and cal:
        known = ", ".join(f"{k} {v['agreed']} of {v['n']}" for k, v in (cal.get("by_expected") or {}).items())
        cost = judge.get("cost") or {}
        who = ("the teacher itself, whose bias toward its own replies makes judge retention conservative"
               if judge.get("is_teacher") else judge.get("model"))
        out += [f"The judge ({who}; verdicts from "
                f"{judge.get('verdicts_from')}) agreed with {_n(cal.get('agreement'))} of {cal.get('n')} verdicts "
                f"known in advance ({known}), Cohen's kappa {_n(cal.get('kappa'))}"
                + (f", swap consistency {_n(cal.get('swap_consistency'))}"
                   if cal.get("swap_consistency") is not None else "")
                + f": {'trusted' if cal.get('trusted') else 'not trusted'} "
                f"(eval.judge.min_agreement {cal.get('min_agreement')})"
                + (f"; it read {cost.get('prompt_tokens')} prompt tokens ({cost.get('decoded_tokens')} decoded "
                   f"once prefixes were shared) in {cost['seconds']:.0f} s for "
                   + (f"its {cost.get('questions')} questions"
                      if cost.get("questions") == judge.get("unique_questions") else
                      f"{cost.get('questions')} of the {judge.get('unique_questions')} questions")
                   + (" (a run killed before it finished asked the others)"
                      if (cost.get("questions") or 0) < (judge.get("unique_questions") or 0) else "") + "."
                   if cost.get("seconds") else "."), ""]
    t = s.get("training_data") or {}
    if t:
        verified = ", ".join(f"{v} {k}" for k, v in sorted((t.get("verified") or {}).items()))
        syn = t.get("synthesized") or {}
        sets = t.get("train_sets") or {}
        origin = [f"{t.get('train_prompts')} train questions"
                  + "".join(f" ({v} of them from the train-only set `{k}`)" for k, v in sorted(sets.items()))]
        if syn.get("kept"):
            origin.append(f"{syn['kept']} the teacher wrote")
        rejected = ", ".join(f"{v} {k}" for k, v in sorted((t.get("rejected_by_reason") or {}).items()))
    tail = []  # one closing paragraph: the labels, the kinds of question, the stages
    if t:
        tail.append(f"Training labels: {t.get('train')} ({verified}), from {' and '.join(origin)}; "
                    f"the rest were rejected ({rejected}).")
    # the headline sets the shipped student against the teacher: the demo's section carries it
    sentence = headline_sentence(s.get("headline") or {}) if name == "demo" else None
    if sentence:
        out += [sentence, ""]
    kinds = s.get("by_kind") or {}
    if kinds:
        rungs = list(dict.fromkeys(r for cells in kinds.values() for r in cells))
        names = {"teacher": "teacher", "student_merged": "merged student"}
        tail.append(f"Right answers per kind of question ({' / '.join(names.get(r, r) for r in rungs)}): "
                    + "; ".join(f"{k} " + " / ".join(f"{cells[r][0]:.0f}" if r in cells else "–" for r in rungs)
                                + f" of {next(iter(cells.values()))[1]}" for k, cells in kinds.items()) + ".")
    secs = s.get("stage_seconds") or {}
    main = {k: v for k, v in secs.items() if v and v > 5}
    tail.append("Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(main.items(), key=lambda kv: -kv[1]))
               + f". Gates: {s['gates']['verdict']}. Snapshot: `docs/{name}-results.json` "
               f"(`python scripts/gen_demo_table.py RUN{'' if name == 'demo' else ' --name ' + name}` rewrites "
               "it and this section).")
    out.append(" ".join(tail))
    return "\n".join(out) + "\n"


def rewrite(text: str, section: str, name: str = "demo") -> str:
    return between(text, *markers(name), section)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a finished run directory of the profile --name names")
    ap.add_argument("--name", choices=NAMES, default="demo", help="which README section (default: demo)")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = README.read_text()
    if a.check:
        want = text
        for name in NAMES:
            if snapshot_path(name).is_file():
                want = rewrite(want, render(json.loads(snapshot_path(name).read_text()), name), name)
        if want != text:
            print("README.md's results sections do not match docs/*-results.json: "
                  "run python scripts/gen_demo_table.py RUN [--name NAME]")
            return 1
        return 0
    if not a.run:
        ap.error("give a run directory, or --check")
    snap = snapshot(Path(a.run))
    path = snapshot_path(a.name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(snap, indent=1) + "\n")
    README.write_text(rewrite(text, render(snap, a.name), a.name))
    print(f"updated {README} and {path}")
    print(json.dumps({"wall_seconds": snap["wall_seconds"], "shipped": (snap.get("smallest_passing") or {}).get("cpu-x86")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
