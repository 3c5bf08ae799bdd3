"""Judge retention by the dropped rule and the current one, side by side, from a judged run's own
verdicts (RUN/eval/judge/; no judge is asked, nothing in RUN is written).

    python3 scripts/compare_judge_rules.py RUN

- dropped: a pair's order-averaged probability preference ``((P(B) - P(A)) teacher first +
  (P(A) - P(B)) rung first) / 2``, a tie within 0.02, and ``(wins + ties) / n``;
- current (the judge stage's, :mod:`edgedistill.judge.pairwise`): ``2 * mean(Phi(q / sigma))``
  from each row's win credit, ties where ``|q| <= sigma``.

For each rung: both retentions with their 95% bootstrap intervals, the win/tie/loss counts, and
the calibration agreement and Cohen's kappa of each rule's labels (teacher_resample: a tie,
student_base: a loss). The per-rung rows must carry their verdicts' keys (a judge stage of this
version or later; rerun `edgedistill judge RUN` first: it re-reads the log and asks nothing).
Prints a table and ends stdout with one JSON line.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

OLD_MARGIN = 0.02
KNOWN = {"teacher_resample": "tie", "student_base": "loss"}


def old_label(v1: dict | None, v2: dict | None) -> str:
    """The dropped rule: the order-averaged probability preference, a tie within OLD_MARGIN; MT-Bench's
    rule with labels alone; unscored when either order has no label."""
    from edgedistill.judge.pairwise import IN_ORDER, SWAPPED

    if not v1 or not v2 or v1.get("label") is None or v2.get("label") is None:
        return "unscored"
    p1, p2 = v1.get("probs"), v2.get("probs")
    if p1 and p2:
        pref = ((p1.get("B", 0) - p1.get("A", 0)) + (p2.get("A", 0) - p2.get("B", 0))) / 2
        return "win" if pref > OLD_MARGIN else "loss" if pref < -OLD_MARGIN else "tie"
    a, b = IN_ORDER[v1["label"]], SWAPPED[v2["label"]]
    return a if a == b else "tie"


def main(root: Path) -> dict:
    from edgedistill.data import read_jsonl
    from edgedistill.evaluate.bootstrap import mean_ci
    from edgedistill.judge.stage import calibration, load_judge_summary
    from edgedistill.rundir import Run

    run = Run.open(root)
    summary = load_judge_summary(run)
    if not summary or summary.get("mode") != "pairwise":
        sys.exit(f"{root} has no pairwise judge summary; run `edgedistill judge {root}` first.")
    judge_dir = run.eval_dir / "judge"
    verdicts = {v["key"]: v for v in read_jsonl(judge_dir / "verdicts.jsonl")}
    out = {"run": str(root), "position_bias": summary.get("position_bias"), "sigma": summary.get("sigma"),
           "sigma_pairs": summary.get("sigma_pairs"), "rungs": {}}
    calib: dict[str, list] = {"dropped": [], "current": []}
    for rung in summary["rungs"]:
        rows = read_jsonl(judge_dir / f"{rung}.jsonl")
        if any("keys" not in r for r in rows):
            sys.exit(f"{judge_dir / (rung + '.jsonl')} has rows without their verdicts' keys; "
                     f"rerun `edgedistill judge {root}` (it asks nothing already judged).")
        old = [old_label(verdicts.get(r["keys"]["in_order"]), verdicts.get(r["keys"]["swapped"])) for r in rows]
        kept = [1.0 if x in ("win", "tie") else 0.0 for x in old]
        credit = [2 * (r["win_credit"] or 0.0) for r in rows]
        if rung in KNOWN:
            calib["dropped"] += [(KNOWN[rung], x) for x in old if x != "unscored"]
            calib["current"] += [(KNOWN[rung], r["outcome"]) for r in rows if r["outcome"] != "unscored"]
        c_old, c_new = Counter(old), Counter(r["outcome"] for r in rows)
        out["rungs"][rung] = {
            "n": len(rows),
            "dropped": {"judge_retention": round(sum(kept) / len(kept), 3), "ci95": mean_ci(kept),
                        "wtl": [c_old["win"], c_old["tie"], c_old["loss"]]},
            "current": {"judge_retention": round(sum(credit) / len(credit), 3), "ci95": mean_ci(credit),
                        "wtl": [c_new["win"], c_new["tie"], c_new["loss"]]}}
    for rule, pairs in calib.items():
        c = calibration(pairs, ["win", "tie", "loss"], 0.7)
        out[f"calibration_{rule}"] = {"agreement": c["agreement"], "kappa": c["kappa"], "n": c["n"]}
    return out


def _ci(ci: list | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    res = main(Path(sys.argv[1]))
    print(f"position bias B {res['position_bias']}, sigma {res['sigma']} ({res['sigma_pairs']} pairs)")
    print(f"{'rung':18s} {'n':>4s}  {'(wins+ties)/n, tie |dP| <= 0.02':36s} {'2 * mean Phi(q / sigma)':36s}")
    for name, r in res["rungs"].items():
        d, c = r["dropped"], r["current"]
        wtl = ["/".join(map(str, x["wtl"])) for x in (d, c)]
        print(f"{name:18s} {r['n']:4d}  {d['judge_retention']:.3f} {_ci(d['ci95']):17s} w/t/l {wtl[0]:9s}"
              f" {c['judge_retention']:.3f} {_ci(c['ci95']):17s} w/t/l {wtl[1]}")
    for rule in ("dropped", "current"):
        c = res[f"calibration_{rule}"]
        print(f"calibration, {rule} rule: agreement {c['agreement']}, kappa {c['kappa']} on {c['n']} known verdicts")
    print(json.dumps(res))
