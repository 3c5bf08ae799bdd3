"""The seed headline, measured: latency, memory and accuracy retention of each student artifact
against the teacher, on this machine, with the same prompt and settings.

    python scripts/seed_claims.py RUN                 # e.g. runs/demo after `edgedistill run`
    python scripts/seed_claims.py RUN --rounds 3      # more rounds: steadier medians

The seed claims 85% lower latency, 95% lower memory and 92% accuracy retention. Here, for the
teacher GGUF (the recipe's teacher.model) and every benchable artifact of RUN, each in a fresh
process through the bench's own runner (a `prompt_tokens` prompt, `generate_tokens` greedy tokens,
every core), taking turns round by round so a busy machine slows all of them alike:

- latency: 1 - student / teacher of the time to a whole answer (TTFT + (generate_tokens - 1)
  per-token latencies, p50), and of the per-token latency alone;
- memory: 1 - student / teacher of peak RSS (the process, interpreter included) and of the file;
- retention: student score / teacher score on the eval split (from `edgedistill eval`: the same
  prompts for both).

Writes RUN/seed_claims.json (`edgedistill report` shows it), prints a table, and ends stdout with
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path


def teacher_gguf(run) -> Path:
    from edgedistill import models

    ref = run.recipe.teacher.model
    if not (models.is_packaged(ref) or ref.lower().endswith(".gguf")):
        raise SystemExit(f"teacher.model {ref!r} is not a GGUF: its latency and memory cannot be "
                         "measured on this machine (an API teacher runs elsewhere)")
    path = Path(models.resolve(ref))
    if not path.is_file():
        path = run.config_path.parent / path
    if not path.is_file():
        raise SystemExit(f"the teacher GGUF {path} is not there; `edgedistill models fetch` first")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory after eval (and export, quantize)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--generate-tokens", type=int, default=32)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    from edgedistill.bench.device import KIND_OF_FORMAT, measure_in_subprocess
    from edgedistill.bench.host import host_info
    from edgedistill.bench.measure import artifact_bytes, whole_answer_ms
    from edgedistill.evaluate.ladder import TEACHER, load_summary
    from edgedistill.artifacts import list_artifacts
    from edgedistill.rundir import Run

    run = Run(Path(a.run))
    summary = load_summary(run)
    if not summary:
        raise SystemExit(f"{run.root} has no eval summary; run `edgedistill eval {run.root}` first")
    rungs = summary["rungs"]
    teacher_score = rungs[TEACHER]["score"]
    models = [{"id": "teacher", "format": "gguf", "path": str(teacher_gguf(run))}]
    models += [{"id": x["id"], "format": x["format"], "path": str(x["path"])}
               for x in list_artifacts(run) or [] if x["format"] in KIND_OF_FORMAT]
    settings = {"prompt_tokens": a.prompt_tokens, "generate_tokens": a.generate_tokens,
                "repetitions": a.repetitions, "warmup": a.warmup}
    records: dict[str, list[dict]] = {m["id"]: [] for m in models}
    for rnd in range(a.rounds):
        for m in models:
            one = {"kind": KIND_OF_FORMAT[m["format"]], "path": m["path"], "threads": a.threads,
                   "providers": [], "gpu_layers": 0, **settings}
            rec = measure_in_subprocess(one)
            if "error" in rec:
                raise SystemExit(f"{m['id']}: {rec['error']}")
            records[m["id"]].append(rec)
            print(f"round {rnd + 1}: {m['id']}: TTFT {rec['ttft_ms']['p50']:.0f} ms, "
                  f"{rec['decode_tokens_per_s']['p50']:.1f} tok/s, peak RSS {rec['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)

    def med(mid: str, fn) -> float:
        return statistics.median(fn(r) for r in records[mid])

    n_gen = a.generate_tokens
    t = {"answer_ms": med("teacher", lambda r: whole_answer_ms(r, n_gen)),
         "token_ms": med("teacher", lambda r: r["token_latency_ms"]["p50"]),
         "peak_rss_mb": med("teacher", lambda r: r["peak_rss_mb"]),
         "bytes": artifact_bytes(models[0]["path"])}
    rows = []
    for m in models[1:]:
        s = {"answer_ms": med(m["id"], lambda r: whole_answer_ms(r, n_gen)),
             "token_ms": med(m["id"], lambda r: r["token_latency_ms"]["p50"]),
             "peak_rss_mb": med(m["id"], lambda r: r["peak_rss_mb"]),
             "bytes": artifact_bytes(m["path"])}
        score = (rungs.get(m["id"]) or {}).get("score")
        rows.append({
            "id": m["id"], **{f"student_{k}": round(v, 2) for k, v in s.items()},
            "latency_reduction": round(1 - s["answer_ms"] / t["answer_ms"], 4),
            "token_latency_reduction": round(1 - s["token_ms"] / t["token_ms"], 4),
            "memory_reduction": round(1 - s["peak_rss_mb"] / t["peak_rss_mb"], 4),
            "size_reduction": round(1 - s["bytes"] / t["bytes"], 4),
            "retention": round(score / teacher_score, 4) if score is not None and teacher_score else None,
        })
    out = {"claim": {"latency_reduction": 0.85, "memory_reduction": 0.95, "retention": 0.92},
           "teacher": {"model": run.recipe.teacher.model, "path": models[0]["path"], "score": teacher_score,
                       **{k: round(v, 2) for k, v in t.items()}},
           "metric": summary["metric"], "eval_n": summary["n"], "settings": {**settings, "threads": a.threads},
           "rounds": a.rounds, "host": host_info(), "load_average": os.getloadavg(), "artifacts": rows}
    tmp = run.root / ".seed_claims.json.partial"
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(run.root / "seed_claims.json")

    print(f"teacher {run.recipe.teacher.model}: {t['answer_ms']:.0f} ms per {n_gen}-token answer, "
          f"peak RSS {t['peak_rss_mb']:.0f} MB, {t['bytes'] / 1e6:.0f} MB file, {summary['metric']} "
          f"{teacher_score:.3f} (n = {summary['n']})")
    print(f"{'artifact':<16} {'latency':>9} {'per token':>10} {'memory':>8} {'file':>7} {'retention':>10}"
          f"   (reduction vs the teacher; seed claim: 85% latency, 95% memory, 92% retention)")
    for r in rows:
        ret = f"{r['retention']:.1%}" if r["retention"] is not None else "n/a"
        print(f"{r['id']:<16} {r['latency_reduction']:9.1%} {r['token_latency_reduction']:10.1%} "
              f"{r['memory_reduction']:8.1%} {r['size_reduction']:7.1%} {ret:>10}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
