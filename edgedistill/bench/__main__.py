"""``python -m edgedistill.bench``: the device-side runner. Prints a table (stderr shows progress)
and ends stdout with one JSON line, which is what ``edgedistill bench --host`` collects.

    python -m edgedistill.bench --spec spec.json
    python -m edgedistill.bench model-q4_k_m.gguf [--threads 4] [--prompt-tokens 64] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgedistill.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="*", help="GGUF files, ONNX files or ORT GenAI package folders")
    p.add_argument("--spec", help="a JSON spec written by `edgedistill bench` (overrides the rest)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one artifact in this process
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--thread-sweep", default="", help="comma-separated thread counts, e.g. 1,2,4")
    p.add_argument("--context", type=int, default=None, help="llama.cpp n_ctx (default: the runtime's)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--generate-tokens", type=int, default=64)
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--concurrency", default="", help="users at once to sweep, e.g. 1,2,4,8 (a filler prompt)")
    return p


def _format_of(path: Path) -> str:
    if path.is_dir() or path.name == "genai_config.json":
        return "ortgenai" if (path if path.is_dir() else path.parent).joinpath("genai_config.json").exists() else "onnx"
    return {".gguf": "gguf", ".onnx": "onnx"}.get(path.suffix, "gguf")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        from edgedistill.bench.measure import main_one, read_one

        one = read_one(args.one)
        if one.get("mode") == "concurrency":  # the concurrency sweep of one artifact
            from edgedistill.bench.concurrency import measure_concurrency

            return main_one(one, measure_concurrency)
        return main_one(one)
    from edgedistill.bench.device import format_table, run_spec

    if args.spec:
        spec = json.loads(Path(args.spec).read_text())
    elif args.artifacts:
        arts = []
        for a in args.artifacts:
            path = Path(a).resolve()
            if not path.exists():
                print(f"error: {a} does not exist", file=sys.stderr)
                return 2
            arts.append({"id": path.stem, "format": _format_of(path), "precision": "unknown", "path": str(path)})
        spec = {"target": None, "artifacts": arts, "settings": {
            "threads": args.threads, "context": args.context, "prompt_tokens": args.prompt_tokens,
            "generate_tokens": args.generate_tokens, "repetitions": args.repetitions, "warmup": args.warmup,
            "thread_sweep": [int(t) for t in args.thread_sweep.split(",") if t.strip()],
            "concurrency": [int(n) for n in args.concurrency.split(",") if n.strip()]}}
    else:
        _parser().print_usage(sys.stderr)
        print("error: give artifact paths or --spec FILE", file=sys.stderr)
        return 2
    result = run_spec(spec, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
