"""How well each rung of one or more runs does what a prompt asks about form, on an eval set whose
records say which form they ask for (``"format": "value"`` or ``"sentence"``; the demo's `forms`).

    python scripts/compare_forms.py RUN [RUN ...] [--set forms]

Prints, per run and rung: the set's score (right and in the form asked) with its 95% interval and
retention, then per form the replies in form, right (the value alone) and both, of n. Reads
RUN/eval/summary.json and RUN/eval/<set>/<rung>.jsonl; asks no model anything (docs/forms.md).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--set", default="forms", help="the eval set (data.eval_sets) to read")
    args = ap.parse_args()
    for run in args.runs:
        summary = json.loads((run / "eval" / "summary.json").read_text())
        s = (summary.get("sets") or {}).get(args.set)
        if s is None:
            raise SystemExit(f"{run}: no eval set {args.set!r} in eval/summary.json")
        forms = {r["id"]: r.get("format") for r in rows(run / "data" / f"eval-{args.set}.jsonl")}
        print(f"{run} (eval set {args.set}, n={s['n']})")
        for rung, r in s["rungs"].items():
            by = defaultdict(lambda: [0, 0, 0, 0])  # n, in form, right, both
            for row in rows(run / "eval" / args.set / f"{rung}.jsonl"):
                c = by[forms.get(row["id"])]
                c[0] += 1
                c[1] += int(row.get("in_form") or 0)
                c[2] += int(row.get("exact_match") or 0)
                c[3] += int(row.get("score") or 0)
            ci, rci = r.get("score_ci95") or [None, None], r.get("retention_ci95") or [None, None]
            parts = "; ".join(f"{f}: in form {c[1]}, right {c[2]}, both {c[3]} of {c[0]}"
                              for f, c in sorted(by.items(), key=lambda kv: str(kv[0])))
            print(f"  {rung:16s} {r['score']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  retention {r['retention']:.3f} "
                  f"[{rci[0]:.3f}, {rci[1]:.3f}]  {parts}")


if __name__ == "__main__":
    main()
