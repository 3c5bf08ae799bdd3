"""Teacher generation throughput, two comparisons.

    python scripts/bench_generate.py --local [--model pypi:qwen2.5-coder-1.5b-instruct] [--prompts 96]
    python scripts/bench_generate.py --prompts 16 --max-tokens 16 --concurrency 2

``--local``: answers per second of a local GGUF teacher asked through edgedistill's batched
llama.cpp backend (``teacher.backend: gguf``, ``teacher.concurrency`` sequences in one context,
the shared system prompt computed once) against the same model served one request at a time by
``python -m llama_cpp.server`` (``teacher.serve``, which reuses the previous prompt's common
prefix), on the same prompts (the demo's questions with its system prompt), each side timing the
whole ``generate`` stage, alternating over ``--repeats`` rounds on fresh prompts; goal >= 2x.

Starts ``python -m llama_cpp.server`` (one, then a second) on 127.0.0.1 serving the model
(default: the packaged SmolLM2-135M GGUF), warms each up, then alternates raw and edgedistill
runs (``--repeats`` each, twice the concurrency over two endpoints) on distinct prompts, timing
the whole ``generate`` stage (dedup, resume log, validation, outputs included). Prints a table,
and as the last line one JSON object with the ratios (goal: edgedistill/raw >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from edgedistill.recipes import load_recipe
from edgedistill.rundir import Run
from edgedistill.teacher.generate import generate
from edgedistill.teacher.serve import serve

WORDS = ["apple", "river", "mountain", "violin", "planet", "garden", "engine", "forest", "window", "rocket"]


def make_prompts(n: int, offset: int) -> list[dict]:
    return [{"id": f"b{offset + i}", "prompt": f"Write one short sentence about a {WORDS[(offset + i) % 10]} "
             f"and the number {offset + i}."} for i in range(n)]


async def raw_loop(urls: list[str], prompts: list[dict], concurrency: int, max_tokens: int,
                   model: str = "teacher") -> tuple[float, int]:
    """The baseline: AsyncOpenAI, a semaphore, gather; round-robin over ``urls``."""
    import openai

    clients = [openai.AsyncOpenAI(base_url=u, api_key="no-key", max_retries=0) for u in urls]
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(i: int, p: dict) -> None:
        nonlocal tokens
        async with sem:
            r = await clients[i % len(clients)].chat.completions.create(
                model=model, messages=[{"role": "user", "content": p["prompt"]}],
                max_tokens=max_tokens, temperature=0.0)
            tokens += r.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    for c in clients:
        await c.close()
    return wall, tokens


def edgedistill_run(urls: list[str], prompts: list[dict], concurrency: int, max_tokens: int,
                    work: Path, model: str = "teacher") -> tuple[float, int]:
    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    recipe = {"task": "conversation", "data": {"prompts": "prompts.jsonl", "eval_fraction": 0.0},
              "teacher": {"backend": "openai", "model": model, "base_url": urls if len(urls) > 1 else urls[0],
                          "concurrency": concurrency, "max_tokens": max_tokens, "temperature": 0.0,
                          "min_success_ratio": 0.0, "accept_finish_reasons": ["stop", "length"]},
              "student": {"model": "student"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = Run.create(folder / "run", load_recipe(folder / "recipe.yaml"))
    t0 = time.perf_counter()
    generate(run)
    wall = time.perf_counter() - t0
    m = run.stage_entry("generate")["metrics"]
    return wall, m["completion_tokens"]


DEMO = Path(__file__).resolve().parents[1] / "edgedistill" / "profiles" / "data" / "demo.jsonl"


def local_run(model: str, backend: str, prompts: list[dict], concurrency: int, max_tokens: int,
              work: Path) -> tuple[float, int]:
    """Seconds for `generate` over ``prompts`` with the GGUF ``model`` in-process (batched) or
    served by llama_cpp.server (one request at a time), and the answers it got."""
    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    teacher = {"model": model, "concurrency": concurrency, "max_tokens": max_tokens, "temperature": 0.0,
               "system_prompt": "Reply with the answer only.", "min_success_ratio": 0.0,
               "retries_on_wrong": 0, "accept_finish_reasons": ["stop", "length"], "n_ctx": 2048}
    teacher.update({"backend": "gguf"} if backend == "batched" else {"backend": "openai", "serve": True})
    recipe = {"task": "qa", "data": {"prompts": "prompts.jsonl", "eval_fraction": 0.0},
              "teacher": teacher, "student": {"model": "student"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = Run.create(folder / "run", load_recipe(folder / "recipe.yaml"))
    t0 = time.perf_counter()
    generate(run)
    wall = time.perf_counter() - t0
    return wall, run.stage_entry("generate")["metrics"]["asked"]


def local_main(args) -> None:
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()]
    rows = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in rows]
    rates: dict[str, list[float]] = {"served, one request at a time": [], "batched (teacher.backend: gguf)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeats):
            for name, backend, conc in (("served, one request at a time", "served", 2),
                                        ("batched (teacher.backend: gguf)", "batched", args.concurrency)):
                start = (rnd * 2 + (backend == "batched")) * args.prompts % len(rows)
                chunk = (rows + rows)[start:start + args.prompts]
                chunk = [{**r, "id": f"{r['id']}-{rnd}"} for r in chunk]
                wall, answers = local_run(args.model, backend, chunk, conc, args.max_tokens, Path(tmp))
                rates[name].append(answers / wall)
                print(f"round {rnd + 1}: {name}: {answers} answers in {wall:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'teacher':<36}{'answers/s (median of ' + str(args.repeats) + ')':>32}")
    for k, v in med.items():
        print(f"{k:<36}{v:>32.2f}")
    print(json.dumps({"batched_over_served": round(med["batched (teacher.backend: gguf)"] /
                                                   med["served, one request at a time"], 3),
                      "answers_per_s": {k: round(v, 3) for k, v in med.items()}, "model": args.model,
                      "prompts": args.prompts, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                      "repeats": args.repeats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local", action="store_true", help="batched GGUF backend vs llama_cpp.server")
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per server")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--base-url", action="append", default=[],
                    help="two running endpoints to use instead of starting llama.cpp servers (give it twice)")
    ap.add_argument("--served-model", default="teacher", help="the model name to request (for --base-url)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # defaults per comparison: the demo's teacher and questions for --local, a small model otherwise
    defaults = ({"model": "pypi:qwen2.5-coder-1.5b-instruct", "prompts": 96, "max_tokens": 48, "concurrency": 32}
                if args.local else
                {"model": "pypi:smollm2-135m-instruct", "prompts": 16, "max_tokens": 16, "concurrency": 2})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.local:
        return local_main(args)

    rows: dict[str, list[float]] = {"raw, 1 endpoint": [], "edgedistill, 1 endpoint": [],
                                    "raw, 2 endpoints": [], "edgedistill, 2 endpoints": []}
    offset = 0

    def batch() -> list[dict]:
        nonlocal offset
        offset += args.prompts
        return make_prompts(args.prompts, offset)

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.base_url:
            if len(args.base_url) != 2:
                ap.error("--base-url needs exactly two endpoints")
            one, two = args.base_url
        else:
            one = stack.enter_context(serve(args.model, n_ctx=512, threads=args.threads))
            two = stack.enter_context(serve(args.model, n_ctx=512, threads=args.threads))
        asyncio.run(raw_loop([one, two], make_prompts(4, 10_000), 2, 4, args.served_model))  # warm both
        for _ in range(args.repeats):
            wall, tok = asyncio.run(raw_loop([one], batch(), args.concurrency, args.max_tokens, args.served_model))
            rows["raw, 1 endpoint"].append(tok / wall)
            wall, tok = edgedistill_run([one], batch(), args.concurrency, args.max_tokens, work, args.served_model)
            rows["edgedistill, 1 endpoint"].append(tok / wall)
            wall, tok = asyncio.run(raw_loop([one, two], batch(), 2 * args.concurrency, args.max_tokens,
                                             args.served_model))
            rows["raw, 2 endpoints"].append(tok / wall)
            wall, tok = edgedistill_run([one, two], batch(), 2 * args.concurrency, args.max_tokens, work,
                                        args.served_model)
            rows["edgedistill, 2 endpoints"].append(tok / wall)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{'run':<28}{'completion tok/s (median of ' + str(args.repeats) + ')':>36}")
    for k, v in med.items():
        print(f"{k:<28}{v:>36.1f}")
    print(json.dumps({
        "edgedistill_over_raw": round(med["edgedistill, 1 endpoint"] / med["raw, 1 endpoint"], 3),
        "edgedistill_over_raw_2_endpoints": round(med["edgedistill, 2 endpoints"] / med["raw, 2 endpoints"], 3),
        "two_endpoints_over_one": round(med["edgedistill, 2 endpoints"] / med["edgedistill, 1 endpoint"], 3),
        "prompts": args.prompts, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "threads_per_server": args.threads,
    }))


if __name__ == "__main__":
    main()
