"""How much does `edgedistill bench` cost over each runtime's own tight decode loop?

    python scripts/bench_overhead.py --run runs/demo        # the run's gguf-q4_k_m and onnx artifacts
    python scripts/bench_overhead.py                        # SmolLM2-135M without a run (see below)

For each artifact, in the same session and alternating round by round (so a busy machine slows
both alike; the order of the two flips every round, so neither always runs first), each in a
fresh process with the same threads, prompt length, token count, repetitions and warm-up:

- bench: the child `edgedistill bench` runs (`python -m edgedistill.bench --one`), i.e. the
  runtimes.py loop (chat-template prompt ids, a Python generator, greedy argmax on numpy logits);
- tight: the runtime's own loop -- llama.cpp's C API through llama_cpp (`llama_decode` one token at
  a time, the C greedy sampler), or a bare onnxruntime `session.run` loop with the KV cache fed
  back and argmax;

and reports decode tokens/s p50 of both and overhead = 1 - bench / tight (goal: <= 5%), plus the
same comparison on CPU time per token (all threads of the process), which other processes
sharing the cores disturb far less than wall-clock time.

Without --run: the packaged SmolLM2-135M-Instruct Q4_1 GGUF is requantized to Q4_K_M with
llama.cpp's quantizer, and imported to Hugging Face + exported to ONNX (optimum) once; both are
cached in ~/.cache/edgedistill/bench-overhead. Prints a table, ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FILLER = "The quick brown fox jumps over the lazy dog near the river bank at dawn. "


# ---------------------------------------------------------------------------------------------
# the tight loops (run in a child process: --tight KIND PATH)


def tight_gguf(path: str, threads: int, n_prompt: int, n_gen: int, reps: int,
               warmup: int) -> tuple[list[float], list[float]]:
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 512, 512, threads, threads
    cp.flash_attn_type = 1  # enabled, as the bench's runtime asks (the C default is auto)
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    text = (FILLER * 40).encode()
    buf = (L.llama_token * 2048)()
    n = L.llama_tokenize(vocab, text, len(text), buf, 2048, False, False)
    prompt = (L.llama_token * n_prompt)(*buf[:n_prompt])
    assert n >= n_prompt
    sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
    one = (L.llama_token * 1)()
    rates, cpu = [], []
    for rep in range(warmup + reps):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        assert L.llama_decode(ctx, L.llama_batch_get_one(prompt, n_prompt)) == 0
        t_first = c_first = None
        for i in range(n_gen):
            one[0] = L.llama_sampler_sample(sampler, ctx, -1)
            if i == 0:
                t_first, c_first = time.perf_counter(), time.process_time()
            if i == n_gen - 1:
                break
            assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
        t_last, c_last = time.perf_counter(), time.process_time()
        if rep >= warmup:
            rates.append((n_gen - 1) / (t_last - t_first))
            cpu.append((c_last - c_first) * 1e3 / (n_gen - 1))
    L.llama_sampler_free(sampler)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return rates, cpu


def tight_onnx(path: str, threads: int, n_prompt: int, n_gen: int, reps: int,
               warmup: int) -> tuple[list[float], list[float]]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past = [n for n in inputs if n.startswith("past_key_values.")]
    present = [n.replace("past_key_values.", "present.") for n in past]
    heads, dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    dtype = np.float16 if "float16" in inputs[past[0]].type else np.float32
    ids = np.arange(100, 100 + n_prompt, dtype=np.int64)[None]
    rates, cpu = [], []
    for rep in range(warmup + reps):
        kv = {n: np.zeros((1, heads, 0, dim), dtype=dtype) for n in past}
        feed_ids, n_past = ids, 0
        t_first = c_first = None
        for i in range(n_gen):
            n = feed_ids.shape[1]
            feed = {"input_ids": feed_ids, **kv}
            if "attention_mask" in inputs:
                feed["attention_mask"] = np.ones((1, n_past + n), dtype=np.int64)
            if "position_ids" in inputs:
                feed["position_ids"] = np.arange(n_past, n_past + n, dtype=np.int64)[None]
            outs = sess.run(["logits", *present], feed)
            tok = int(outs[0][0, -1].argmax())
            if i == 0:
                t_first, c_first = time.perf_counter(), time.process_time()
            kv = dict(zip(past, outs[1:]))
            n_past += n
            feed_ids = np.array([[tok]], dtype=np.int64)
        t_last, c_last = time.perf_counter(), time.process_time()
        if rep >= warmup:
            rates.append((n_gen - 1) / (t_last - t_first))
            cpu.append((c_last - c_first) * 1e3 / (n_gen - 1))
    return rates, cpu


# ---------------------------------------------------------------------------------------------
# the comparison


def _child(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"child failed: {' '.join(cmd[:4])}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def prepare_default(cache: Path) -> list[dict]:
    """SmolLM2-135M as GGUF Q4_K_M and as ONNX, made here once (cached)."""
    from edgedistill import models

    cache.mkdir(parents=True, exist_ok=True)
    src = models.resolve("pypi:smollm2-135m-instruct")
    q4km = cache / "smollm2-135m-q4_k_m.gguf"
    if not q4km.exists():
        import llama_cpp as L

        params = L.llama_model_quantize_default_params()
        params.ftype = L.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.allow_requantize = True
        tmp = q4km.with_suffix(".partial")
        if L.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise SystemExit("llama_model_quantize failed")
        tmp.rename(q4km)
    onnx_dir = cache / "onnx"
    if not (onnx_dir / "model.onnx").exists():
        from edgedistill.formats import onnx
        from edgedistill.train.student import import_gguf

        hf = import_gguf(Path(src), cache / "hf")
        tmp = cache / ".onnx-partial"
        onnx.export(hf, tmp)
        tmp.rename(onnx_dir)
    return [{"id": "gguf-q4_k_m", "format": "gguf", "path": str(q4km), "note": "requantized from Q4_1"},
            {"id": "onnx-fp32", "format": "onnx", "path": str(onnx_dir / "model.onnx")}]


def from_run(run_dir: str, ids: list[str] | None = None) -> list[dict]:
    from edgedistill.artifacts import list_artifacts
    from edgedistill.rundir import Run

    listed = [a for a in list_artifacts(Run(Path(run_dir))) if a["format"] in ("gguf", "onnx")]
    arts = [a for a in listed if (a["id"] in ids if ids else a["id"] == "gguf-q4_k_m" or a["format"] == "onnx")]
    if not arts or (ids and len(arts) != len(ids)):
        raise SystemExit(f"{run_dir}: asked for {', '.join(ids or ['gguf-q4_k_m', 'onnx-*'])}; its gguf and "
                         f"onnx artifacts are {', '.join(a['id'] for a in listed) or 'none'} "
                         "(run export and quantize first)")
    return [{"id": a["id"], "format": a["format"], "path": str(a["path"])} for a in arts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a run directory with exported artifacts")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--artifacts", help="comma-separated artifact ids of --run (default: gguf-q4_k_m "
                    "and every onnx artifact)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--generate-tokens", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tight", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    shape = (a.threads, a.prompt_tokens, a.generate_tokens, a.repetitions, a.warmup)
    if a.tight:
        fn = tight_gguf if a.tight[0] == "gguf" else tight_onnx
        rates, cpu = fn(a.tight[1], *shape)
        print(json.dumps({"decode_tokens_per_s_runs": rates, "p50": statistics.median(rates),
                          "cpu_ms_per_token_p50": statistics.median(cpu)}))
        return

    ids = a.artifacts.split(",") if a.artifacts else None
    arts = from_run(a.run, ids) if a.run else prepare_default(Path.home() / ".cache" / "edgedistill" / "bench-overhead")
    rows = {x["id"]: {"bench": [], "tight": [], "bench_cpu": [], "tight_cpu": []} for x in arts}
    flags = ["--threads", str(a.threads), "--prompt-tokens", str(a.prompt_tokens), "--generate-tokens",
             str(a.generate_tokens), "--repetitions", str(a.repetitions), "--warmup", str(a.warmup)]
    for rnd in range(a.rounds):
        for art in (arts if rnd % 2 == 0 else arts[::-1]):
            one = {"kind": art["format"], "path": art["path"], "threads": a.threads, "providers": [],
                   "gpu_layers": 0, "prompt_tokens": a.prompt_tokens, "generate_tokens": a.generate_tokens,
                   "repetitions": a.repetitions, "warmup": a.warmup}
            env = {**os.environ, "USE_TORCH": "0"}  # as the bench runs its children
            children = {"bench": [sys.executable, "-m", "edgedistill.bench", "--one", json.dumps(one)],
                        "tight": [sys.executable, __file__, "--tight", art["format"], art["path"], *flags]}
            got = {name: _child(children[name], env)
                   for name in (("bench", "tight") if rnd % 2 == 0 else ("tight", "bench"))}
            bench, tight = got["bench"], got["tight"]
            r = rows[art["id"]]
            r["bench"].append(bench["decode_tokens_per_s"]["p50"])
            r["tight"].append(tight["p50"])
            r["bench_cpu"].append(bench["decode_cpu_ms_per_token"]["p50"])
            r["tight_cpu"].append(tight["cpu_ms_per_token_p50"])
            print(f"round {rnd + 1}: {art['id']}: bench {r['bench'][-1]:.1f} tok/s ({r['bench_cpu'][-1]:.2f} "
                  f"CPU ms/token), tight {r['tight'][-1]:.1f} tok/s ({r['tight_cpu'][-1]:.2f} CPU ms/token)",
                  file=sys.stderr, flush=True)
    result = {"threads": a.threads, "prompt_tokens": a.prompt_tokens, "generate_tokens": a.generate_tokens,
              "repetitions": a.repetitions, "rounds": a.rounds, "load_average": os.getloadavg(),
              "cores": os.cpu_count(), "artifacts": []}
    print(f"{'artifact':<14} {'bench tok/s':>12} {'tight tok/s':>12} {'overhead':>9} {'CPU overhead':>13}"
          f"   (medians of {a.rounds} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for art in arts:
        r = rows[art["id"]]
        entry = {"id": art["id"], "path": art["path"], "note": art.get("note"),
                 "bench_tokens_per_s": statistics.median(r["bench"]),
                 "tight_tokens_per_s": statistics.median(r["tight"]),
                 # wall-clock: 1 - bench speed / tight speed, per round, median
                 "overhead": statistics.median(1 - b / t for b, t in zip(r["bench"], r["tight"])),
                 # CPU time per token (all threads): robust to other processes sharing the cores
                 "cpu_overhead": statistics.median(b / t - 1 for b, t in zip(r["bench_cpu"], r["tight_cpu"])),
                 **{f"{k}_rounds": v for k, v in r.items()}}
        result["artifacts"].append(entry)
        print(f"{art['id']:<14} {entry['bench_tokens_per_s']:12.1f} {entry['tight_tokens_per_s']:12.1f} "
              f"{entry['overhead']:9.1%} {entry['cpu_overhead']:13.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
