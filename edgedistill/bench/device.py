"""The device side of bench: measure every artifact of a spec, each in a fresh subprocess of this
interpreter (so its peak RSS is its own), plus the machine, its DRAM bandwidth, and the bandwidth
at each artifact's working set (``bytes_per_token``: a model that fits in cache reads at cache
speed, so that is its roofline).

A spec (JSON) is what bench/run.py sends, locally or over SSH::

    {"target": "cpu-x86",
     "settings": {"threads": 2, "thread_sweep": [1, 2], "context": 512, "prompt_tokens": 64,
                  "generate_tokens": 64, "repetitions": 5, "warmup": 1},
     "artifacts": [{"id": "gguf-q4_k_m", "format": "gguf", "precision": "q4_k_m", "path": "...",
                    "bytes": 105500000, "bytes_per_token": 79000000, "providers": [], "gpu_layers": 0}]}

``context`` is the runtime's context length (llama.cpp's n_ctx).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable

from edgedistill import __version__
from edgedistill.bench.host import host_info, measure_bandwidth
from edgedistill.bench.measure import artifact_bytes

log = logging.getLogger(__name__)

KIND_OF_FORMAT = {"gguf": "gguf", "onnx": "onnx", "ortgenai": "ortgenai", "hf": "hf"}


def measure_in_subprocess(one: dict[str, Any], timeout_s: float = 900) -> dict[str, Any]:
    """Run ``python -m edgedistill.bench --one`` for one (artifact, threads); its JSON or an error."""
    arg = json.dumps(one)
    if len(arg) > 32_000:  # a long spec (the eval prompts) goes by file: argv's limit per argument
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="edgedistill-bench-", delete=False) as f:
            f.write(arg)
        arg = "@" + f.name
    cmd = [sys.executable, "-m", "edgedistill.bench", "--one", arg]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if one["kind"] != "hf":
        # a device has no torch: keep transformers (the ONNX tokenizer) from importing it here,
        # which would add its memory and load time to the artifact's figures
        env.setdefault("USE_TORCH", "0")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    finally:
        if arg.startswith("@"):
            os.unlink(arg[1:])
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if proc.returncode != 0 or not isinstance(result, dict):
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        why = result.get("error") if isinstance(result, dict) else None
        return {"error": why or f"exit code {proc.returncode}: {' | '.join(tail) or 'no output'}"}
    return result


def run_spec(spec: dict[str, Any], progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure the machine, then every artifact of ``spec`` (and its thread sweep)."""
    settings = spec["settings"]
    host = host_info()
    progress(f"host: {host['cpu']} ({host['arch']}, {host['cores_logical']} cores)")
    threads = settings.get("threads") or host["cores_logical"]
    bandwidth = measure_bandwidth(threads)
    progress(f"memory bandwidth (numpy copy, {threads} threads): {bandwidth['copy_gbs']} GB/s")
    results = []
    at_size: dict[int, dict[str, Any]] = {}  # bandwidth by working-set size, measured once each
    for art in spec["artifacts"]:
        one = {"kind": KIND_OF_FORMAT[art["format"]], "path": art["path"], "threads": threads,
               "providers": art.get("providers") or [], "gpu_layers": art.get("gpu_layers", 0),
               "n_ctx": settings.get("context"),
               **{k: settings[k] for k in ("prompt_tokens", "generate_tokens", "repetitions", "warmup")}}
        progress(f"{art['id']}: {threads} threads, {settings['repetitions']} runs")
        res = measure_in_subprocess(one, spec.get("timeout_s", 900))
        size = art.get("bytes") or artifact_bytes(art["path"])
        entry = {"id": art["id"], "format": art["format"], "precision": art["precision"],
                 "bytes": size, **res}
        if "error" not in res:
            working = int(art.get("bytes_per_token") or size)
            if working not in at_size:
                at_size[working] = measure_bandwidth(threads, working_set_bytes=working)
            entry["bandwidth"] = at_size[working]
            progress(f"{art['id']}: bandwidth at its working set ({working / 1e6:.3g} MB): "
                     f"{entry['bandwidth']['copy_gbs']} GB/s")
        levels = settings.get("concurrency") or []
        if levels and "error" not in res:
            progress(f"{art['id']}: {len(levels)} concurrency levels ({', '.join(map(str, levels))} users)")
            entry["concurrency"] = measure_in_subprocess({
                **one, "mode": "concurrency", "levels": levels, "prompts": spec.get("prompts") or [],
                "context": settings.get("context"), "requests_per_user": settings.get("concurrency_requests", 2)},
                spec.get("timeout_s", 1800))
        sweep = []
        for t in settings.get("thread_sweep") or []:
            progress(f"{art['id']}: thread sweep, {t} threads")
            r = res if t == threads and "error" not in res else measure_in_subprocess({**one, "threads": t})
            sweep.append({"threads": t, "error": r.get("error")} if "error" in r else {
                "threads": t, "decode_tokens_per_s": r["decode_tokens_per_s"], "ttft_ms": r["ttft_ms"],
                "peak_rss_mb": r["peak_rss_mb"]})
        if sweep:
            entry["thread_sweep"] = sweep
        results.append(entry)
    return {"runner": "edgedistill.bench", "edgedistill_version": __version__,
            "target": spec.get("target"), "host": host, "bandwidth": bandwidth,
            "settings": {**settings, "threads": threads}, "results": results}


def format_table(result: dict[str, Any]) -> str:
    head = f"{'artifact':<20} {'MB':>8} {'load s':>7} {'TTFT p50 ms':>12} {'tok/s p50':>10} " \
           f"{'tok/s p90':>10} {'lat p99 ms':>11} {'RSS MB':>8}"
    rows = [f"bench on {result['host']['hostname']} ({result['host']['cpu']}), "
            f"{result['settings']['threads']} threads; bandwidth {result['bandwidth']['copy_gbs']} GB/s",
            head, "-" * len(head)]
    for r in result["results"]:
        if "error" in r:
            rows.append(f"{r['id']:<20} error: {r['error']}")
            continue
        rows.append(f"{r['id']:<20} {r['bytes'] / 1e6:8.1f} {r['load_s']:7.2f} {r['ttft_ms']['p50']:12.1f} "
                    f"{r['decode_tokens_per_s']['p50']:10.1f} {r['decode_tokens_per_s']['p90']:10.1f} "
                    f"{r['token_latency_ms']['p99']:11.2f} {r['peak_rss_mb']:8.1f}")
        for s in r.get("thread_sweep", []):
            if s.get("error"):
                rows.append(f"  {s['threads']:>2} threads: error: {s['error']}")
            else:
                rows.append(f"  {s['threads']:>2} threads: {s['decode_tokens_per_s']['p50']:.1f} tok/s, "
                            f"TTFT {s['ttft_ms']['p50']:.1f} ms")
    return "\n".join(rows)
