"""The demo's weak skill, measured without the eval split's noise: fresh sums and differences.

    python scripts/probe_arithmetic.py RUN [RUN ...]     # e.g. runs/demo and a longer run of it
    python scripts/probe_arithmetic.py RUN --n 200 --seed 99

The demo's eval split holds 17 sums and 12 differences, so one question moves a kind's score by 6
to 8 points and two runs' scores on them can hardly be told apart. This asks the teacher GGUF (the
first RUN's teacher.model) and every artifact of each RUN (GGUF, ORT GenAI, ONNX; ``--formats``
narrows them) the same fresh questions: N sums and
N differences in scripts/make_demo_data.py's wording and operand ranges, and N/2 of each in the
rephrased set's wordings. No question shares its pair of numbers with a question of the demo's
files or of any RUN's data (train, eval, rejected): none was trained on, none is the eval split's.
Which questions are asked follows from the seed and the RUNs' data: compare runs in one call.
Replies are greedy, with the run's system prompt, scored by the run's metric (the demo's: qa).

Prints, per model, each kind's score with its 95% bootstrap interval and the share of the
teacher's score it keeps over all the questions (paired interval, as `edgedistill eval` reports
retention), and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import operator
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_demo_data as demo  # noqa: E402

WORDINGS = {"add": "What is {a} + {b}?", "sub": "What is {a} - {b}?"}
RESULT = {"add": operator.add, "sub": operator.sub}
COLUMNS = ("add", "sub", "add-reworded", "sub-reworded")


def numbers_of(text: str) -> tuple[int, ...]:
    """The pair of numbers a question asks about, in order (any order counts as the same pair)."""
    return tuple(sorted(int(x) for x in re.findall(r"\d+", text)))


def prompts_in(path: Path) -> list[str]:
    """The questions of a JSONL file the demo or a run writes (a ``prompt``, or the user turn)."""
    from edgedistill.data import read_jsonl  # a broken line: DataError with the file and line

    out = []
    for rec in read_jsonl(path):
        if "prompt" in rec:
            out.append(rec["prompt"])
        out += [m["content"] for m in rec.get("messages") or [] if m.get("role") == "user"]
    return out


def questions(n: int, seed: int, seen: set[tuple[int, ...]], system_prompt: str | None) -> list[dict]:
    """``n`` sums and ``n`` differences worded as the generator words them, ``n // 2`` of each in
    the rephrased set's wordings; every pair of numbers new (not in ``seen``, not asked twice)."""
    from edgedistill.errors import DataError

    rng = random.Random(seed)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    taken, out = set(seen), []
    for kind in WORDINGS:
        for column, count, wordings in ((kind, n, [WORDINGS[kind]]),
                                        (f"{kind}-reworded", n // 2, list(demo.REPHRASED[kind]))):
            for i in range(count):
                for _ in range(100_000):
                    a, b = demo.OPERANDS[kind](rng)
                    pair = tuple(sorted((a, b)))
                    if pair not in taken:
                        break
                else:
                    raise DataError(f"fewer than {count} new pairs of numbers for {column}: lower --n")
                taken.add(pair)
                q = rng.choice(wordings).format(a=a, b=b)
                out.append({"id": f"{column}-{i:04d}", "kind": column, "answer": str(RESULT[kind](a, b)),
                            "messages": [*system, {"role": "user", "content": q}]})
    return out


def summarize(scores: list[float], kinds: list[str], teacher: list[float] | None) -> dict:
    """Each column's score and interval; over all questions, the share kept of ``teacher``'s."""
    from edgedistill.evaluate.bootstrap import mean_ci, retention_ci

    out = {}
    for col in COLUMNS:
        own = [s for s, k in zip(scores, kinds) if k == col]
        if own:
            out[col] = {"n": len(own), "score": round(sum(own) / len(own), 4), "ci95": mean_ci(own)}
    out["all"] = {"n": len(scores), "score": round(sum(scores) / len(scores), 4), "ci95": mean_ci(scores)}
    if teacher is not None and sum(teacher) > 0:
        out["all"]["retention"] = round(sum(scores) / sum(teacher), 4)
        out["all"]["retention_ci95"] = retention_ci(scores, teacher)
    return out


def main() -> None:
    from edgedistill.errors import EdgeDistillError

    try:
        probe()
    except EdgeDistillError as e:  # a run or model file that is not there, too large an --n: exit 2
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def probe() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories after export")
    ap.add_argument("--n", type=int, default=200, help="sums and differences each (half as many reworded)")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--formats", default="gguf,ortgenai,onnx", help="the artifact formats asked")
    a = ap.parse_args()

    from edgedistill.artifacts import list_artifacts
    from edgedistill.evaluate.ladder import _generate_all  # the eval stage's: one load, batched
    from edgedistill.evaluate.metrics import score_example
    from edgedistill.rundir import Run
    from edgedistill.bench.run import teacher_gguf

    runs = [Run(Path(r)) for r in a.runs]
    first = runs[0].recipe
    seen = set()
    files = sorted(demo.OUT.parent.glob("demo*.jsonl"))
    files += [f for r in runs for f in sorted((r.root / "data").glob("*.jsonl"))]
    for f in files:
        seen |= {numbers_of(q) for q in prompts_in(f)}
    recs = questions(a.n, a.seed, seen, first.teacher.system_prompt)
    kinds = [r["kind"] for r in recs]

    formats = a.formats.split(",")
    labels = [r.root.name for r in runs]
    if len(set(labels)) < len(labels):  # runs/a/demo and runs/b/demo: name them by their paths
        labels = [str(r.root) for r in runs]
    teacher, why = teacher_gguf(runs[0])
    if teacher is None:
        raise SystemExit(f"the teacher cannot be asked here: {why}")
    models = [("teacher", "gguf", teacher)]
    models += [(f"{label}/{x['id']}", x["format"], x["path"])
               for label, r in zip(labels, runs) for x in list_artifacts(r) if x["format"] in formats]
    rows, teacher = {}, None
    for name, kind, path in models:
        replies = [o["prediction"] for o in _generate_all(kind, Path(path), recs, first.eval.max_new_tokens, name)]
        scores = [score_example(first.task, p, r["answer"], record=r)["score"] for p, r in zip(replies, recs)]
        rows[name] = summarize(scores, kinds, teacher)
        teacher = scores if teacher is None else teacher
        cells = " ".join(f"{c}: {rows[name][c]['score']:.3f}" for c in COLUMNS)
        print(f"{name}: {cells}", file=sys.stderr, flush=True)

    def cell(v: dict) -> str:
        lo, hi = v["ci95"] or (v["score"], v["score"])
        return f"{v['score']:.3f} [{lo:.2f}, {hi:.2f}]"

    print(f"{len(recs)} questions no run trained on ({a.n} sums, {a.n} differences, {a.n // 2} of each "
          f"reworded; seed {a.seed}), {first.task} metric, 95% intervals")
    width = max(len(n) for n in rows)
    print(f"{'model':<{width}}  " + "  ".join(f"{c:<20}" for c in COLUMNS) + "  kept of the teacher's")
    for name, r in rows.items():
        kept = r["all"].get("retention")
        ci = r["all"].get("retention_ci95") or [None, None]
        kept_s = f"{kept:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if kept is not None and None not in ci else ""
        print(f"{name:<{width}}  " + "  ".join(f"{cell(r[c]):<20}" for c in COLUMNS) + f"  {kept_s}")
    print(json.dumps({"n": a.n, "seed": a.seed, "teacher": str(models[0][2]), "models": rows}))


if __name__ == "__main__":
    main()
