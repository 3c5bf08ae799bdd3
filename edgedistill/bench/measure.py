"""What the device side measures: one artifact in this process, the machine, its memory bandwidth,
and its energy sensor. Imports no torch (nor anything heavy at module level): it runs on devices.

Timing of one artifact (``measure_artifact``), after ``warmup`` untimed runs, over
``repetitions`` timed runs of a ``prompt_tokens`` prefill and ``generate_tokens`` greedy tokens
(end-of-turn suppressed, so every run decodes the same count):

- ``load_s``: ``runtimes.load`` in a fresh process (cold: file read, graph build), with the
  target's context length (``n_ctx``: what llama.cpp allocated, it rounds up to a multiple of 256);
- ``ttft_ms``: from handing over the prompt ids to the first generated token (prefill + 1 step);
- ``token_latency_ms``: every gap between consecutive generated tokens, all runs pooled;
- ``decode_tokens_per_s``: per run, (tokens - 1) / (last token time - first token time). Its pXX is
  the speed at the pXX of the per-run time per token, so p90 <= p50 (the slow tail);
- ``peak_rss_mb``: this process's peak resident set (VmHWM), the interpreter included;
- ``energy_per_token_j``: energy over the timed runs / generated tokens: RAPL package energy where
  /sys/class/powercap exposes it, Jetson board power from ``tegrastats`` integrated over time
  where that exists; null otherwise (the reason is recorded in ``energy_note``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from edgedistill.bench.energy import energy_meter
from edgedistill.registry import runtime_name

FILLER = ("The quick brown fox jumps over the lazy dog while the small robot counts every step "
          "it takes across the long bridge over the quiet river near the old town. ")


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}
    out["mean"] = round(float(arr.mean()), 3)
    return out


def runtime_version(kind: str) -> dict[str, Any]:
    """The runtime's version and build flags, as the runtime reports them."""
    if kind == "gguf":
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        return {"llama_cpp_python": llama_cpp.__version__,
                "build": info.decode() if isinstance(info, bytes) else str(info)}
    if kind == "onnx":
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
                "build": ort.get_build_info() if hasattr(ort, "get_build_info") else None}
    if kind == "ortgenai":
        import onnxruntime_genai as og

        return {"onnxruntime_genai": getattr(og, "__version__", None)}
    return {}


def prompt_ids_of_length(rt: Any, n: int) -> list[int]:
    """Chat-template prompt ids of about ``n`` tokens (the last ``n`` when longer)."""
    words = FILLER.split()
    count = max(1, n)
    ids: list[int] = []
    for _ in range(12):
        text = " ".join(words[i % len(words)] for i in range(count))
        ids = rt.chat_prompt_ids([{"role": "user", "content": text}])
        if len(ids) >= n:
            break
        count += max(1, n - len(ids))
    return ids[-n:]


def rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (reset at exec). ru_maxrss is not used on Linux: it
    carries the parent's peak across fork+exec, which would charge the bench's own buffers."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0


def measure_artifact(spec: dict[str, Any]) -> dict[str, Any]:
    """Load and time one artifact in this process. ``spec``: kind, path, threads, providers,
    gpu_layers, n_ctx, prompt_tokens, generate_tokens, repetitions, warmup."""
    from edgedistill import runtimes

    kind = spec["kind"]
    rss_before = rss_mb()
    t0 = time.perf_counter()
    rt = runtimes.load(kind, spec["path"], threads=spec.get("threads"),
                       providers=spec.get("providers") or None, gpu_layers=spec.get("gpu_layers", 0),
                       n_ctx=spec.get("n_ctx"))
    load_s = time.perf_counter() - t0
    n_ctx = rt.llm.n_ctx() if kind == "gguf" else None  # as the runtime allocated it
    prompt = prompt_ids_of_length(rt, spec["prompt_tokens"])
    n_gen = spec["generate_tokens"]
    for _ in range(spec["warmup"]):
        for _tok in rt.stream_ids(prompt, n_gen, ignore_eos=True):
            pass
    meter = energy_meter()
    if meter is not None:
        meter.start()
    ttft, gaps, rates, cpu_ms, produced = [], [], [], [], 0
    for _ in range(spec["repetitions"]):
        stamps, cpu = [], []
        start = time.perf_counter()
        for _tok in rt.stream_ids(prompt, n_gen, ignore_eos=True):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
        produced += len(stamps)
        ttft.append((stamps[0] - start) * 1e3)
        gaps.extend((b - a) * 1e3 for a, b in zip(stamps, stamps[1:]))
        if len(stamps) > 1:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            cpu_ms.append((cpu[-1] - cpu[0]) * 1e3 / (len(cpu) - 1))
    energy = meter.stop() if meter is not None else None
    rt.close()
    per_token_ms = sorted(1e3 / r for r in rates)
    ms = percentiles(per_token_ms)
    return {
        "kind": kind, "runtime": runtime_name(kind), "runtime_version": runtime_version(kind),
        "threads": spec.get("threads"), "providers": spec.get("providers") or [],
        "gpu_layers": spec.get("gpu_layers", 0), "context": spec.get("n_ctx"), "n_ctx": n_ctx,
        "prompt_tokens": len(prompt), "generate_tokens": n_gen, "tokens_per_run": produced // max(1, spec["repetitions"]),
        "repetitions": spec["repetitions"], "warmup": spec["warmup"],
        "load_s": round(load_s, 4),
        "ttft_ms": percentiles(ttft),
        "token_latency_ms": percentiles(gaps),
        "decode_tokens_per_s": {k: (round(1e3 / v, 3) if v else None) for k, v in ms.items()},
        "decode_tokens_per_s_runs": [round(r, 3) for r in rates],
        "decode_cpu_ms_per_token": percentiles(cpu_ms),  # CPU time of all threads; wall time is above
        "peak_rss_mb": round(rss_mb(), 1), "rss_before_load_mb": round(rss_before, 1),
        "energy_per_token_j": round(energy / produced, 6) if energy is not None and produced else None,
        "energy_note": (meter.note if energy is not None else meter.reason) if meter is not None
        else energy_meter.reason,  # type: ignore[attr-defined]
        "torch_imported": "torch" in sys.modules,
    }


def whole_answer_ms(rec: dict[str, Any], generate_tokens: int) -> float:
    """Time to a whole answer of ``generate_tokens`` tokens from one :func:`measure_artifact`
    result: the median first token plus the rest at the median decode rate."""
    return rec["ttft_ms"]["p50"] + (generate_tokens - 1) * 1e3 / rec["decode_tokens_per_s"]["p50"]


def artifact_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    if p.suffix == ".onnx":  # the graph and its external data beside it (model.onnx.data, model.onnx_data)
        return sum(q.stat().st_size for q in p.parent.iterdir()
                   if q.is_file() and (q.name.startswith(p.name) or q.name.startswith(p.stem + ".onnx")))
    return p.stat().st_size


def read_one(arg: str) -> dict[str, Any]:
    """``--one``'s spec: JSON, or ``@FILE`` holding it (a long one: argv limits each argument)."""
    return json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg)


def main_one(spec: dict[str, Any], measure=measure_artifact) -> int:
    """``python -m edgedistill.bench --one JSON``: measure one artifact, print one JSON line."""
    try:
        out = measure(spec)
    except Exception as e:  # noqa: BLE001 -- reported to the parent as this artifact's error
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(out))
    return 0
