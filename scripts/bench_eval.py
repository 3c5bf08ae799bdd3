"""Eval generation speed, one example at a time against batched, rung by rung, on one run.

    python3 scripts/bench_eval.py RUN [--limit 32] [--batch-size N] [--max-new-tokens N]
                                      [--rungs student_merged,gguf-f16,...] [--threads N]

For the merged student (transformers) and every artifact of RUN (list_artifacts: ONNX, ORT GenAI,
GGUF), on the first ``--limit`` examples of RUN/data/eval.jsonl with the recipe's
eval.max_new_tokens: loads the rung once, warms it up with one short generation, then times
``Runtime.generate`` over the examples one by one and ``Runtime.generate_batch`` over all of them
(batch size: the recipe's eval.batch_size unless given). Reports examples/s each way, the speed-up,
generated tokens/s, and how many examples got the very same tokens both ways (greedy; a difference
is a near-tie that another summation order breaks the other way). The student before distillation
is left out: it runs in one of the same runtimes (hf or gguf) as a rung here.

Nothing in RUN is written. Prints a table and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def rungs_of(run) -> list[dict]:
    from edgedistill.artifacts import list_artifacts
    from edgedistill.registry import kind_of

    out = []
    if (run.merged_dir / "config.json").is_file():
        out.append({"name": "student_merged", "kind": "hf", "path": run.merged_dir})
    out += [{"name": a["id"], "kind": kind_of(a["format"]), "path": Path(a["path"])}
            for a in list_artifacts(run)]
    return out


def bench_rung(rung: dict, chats: list[list[dict]], max_new: int, batch_size: int,
               threads: int | None) -> dict:
    from edgedistill import runtimes

    t0 = time.perf_counter()
    with runtimes.load(rung["kind"], rung["path"], threads=threads) as rt:
        load_s = time.perf_counter() - t0
        rt.generate(chats[0], 2)  # warm-up: first-call allocations and graph preparation
        t0 = time.perf_counter()
        alone = [rt.generate(chat, max_new) for chat in chats]
        alone_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = rt.generate_batch(chats, max_new, batch_size=batch_size)
        batched_s = time.perf_counter() - t0
    n = len(chats)
    return {
        "rung": rung["name"], "kind": rung["kind"], "n": n, "load_s": round(load_s, 2),
        "one_at_a_time_s": round(alone_s, 3), "batched_s": round(batched_s, 3),
        "one_at_a_time_examples_per_s": round(n / alone_s, 3),
        "batched_examples_per_s": round(n / batched_s, 3),
        "speedup": round(alone_s / batched_s, 2),
        "one_at_a_time_tokens_per_s": round(sum(len(g.token_ids) for g in alone) / alone_s, 1),
        "batched_tokens_per_s": round(sum(len(g.token_ids) for g in batched) / batched_s, 1),
        "same_tokens": sum(a.token_ids == b.token_ids for a, b in zip(alone, batched)),
        "same_text": sum(a.text == b.text for a, b in zip(alone, batched)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--limit", type=int, default=32, help="eval examples to generate (default 32)")
    ap.add_argument("--batch-size", type=int, help="default: the recipe's eval.batch_size")
    ap.add_argument("--max-new-tokens", type=int, help="default: the recipe's eval.max_new_tokens")
    ap.add_argument("--rungs", help="comma-separated rung names (default: all)")
    ap.add_argument("--threads", type=int, help="default: every core")
    args = ap.parse_args()

    from edgedistill.data import read_jsonl
    from edgedistill.rundir import Run

    run = Run(args.run)
    if not run.config_path.is_file():
        sys.exit(f"{args.run} is not a run directory (no config.yaml).")
    recipe = run.recipe
    batch_size = args.batch_size or recipe.eval.batch_size
    max_new = args.max_new_tokens or recipe.eval.max_new_tokens
    chats = [r["messages"] for r in read_jsonl(run.eval_data)[: args.limit]]
    rungs = rungs_of(run)
    if args.rungs:
        wanted = args.rungs.split(",")
        missing = sorted(set(wanted) - {r["name"] for r in rungs})
        if missing:
            sys.exit(f"no rung {', '.join(missing)} in {args.run}; it has "
                     f"{', '.join(r['name'] for r in rungs)}.")
        rungs = [r for r in rungs if r["name"] in wanted]

    rows = []
    for rung in rungs:
        rows.append(bench_rung(rung, chats, max_new, batch_size, args.threads))
        print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"\n{len(chats)} eval examples, max_new_tokens {max_new}, batch size {batch_size}")
    print(f"{'rung':16} {'kind':9} {'one ex/s':>9} {'batch ex/s':>10} {'speed-up':>9} "
          f"{'one tok/s':>10} {'batch tok/s':>11} {'same tokens':>12}")
    for r in rows:
        print(f"{r['rung']:16} {r['kind']:9} {r['one_at_a_time_examples_per_s']:9.2f} "
              f"{r['batched_examples_per_s']:10.2f} {r['speedup']:8.2f}x "
              f"{r['one_at_a_time_tokens_per_s']:10.1f} {r['batched_tokens_per_s']:11.1f} "
              f"{r['same_tokens']:>7}/{r['n']:<4}")
    print(json.dumps({"run": str(args.run), "n": len(chats), "max_new_tokens": max_new,
                      "batch_size": batch_size, "rows": rows}))


if __name__ == "__main__":
    main()
