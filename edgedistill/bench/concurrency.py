"""Users served at once: the concurrency sweep of one artifact, and ``users_supported`` under a
target's service level. Imports no torch (the device side runs it).

For each level N of ``levels`` (e.g. 1, 2, 4, 8, 16), the artifact is served exactly as
``edgedistill serve`` serves it (:mod:`edgedistill.serve`: N parallel slots with continuous batching
for GGUF, one request at a time otherwise, ``context`` tokens per user) on a loopback port of this
process, and N closed-loop clients (threads speaking HTTP, streamed) each send
``requests_per_user`` of the run's eval prompts in turn, through the artifact's chat template,
greedy, to end-of-turn or ``max_tokens``, after ``warmup`` untimed requests. Per level:

- ``tokens_per_s``: output tokens of all requests / the level's wall time (aggregate throughput);
  ``requests_per_s`` likewise;
- ``ttft_ms``: per request, from sending it to its first streamed token (queueing included);
  ``e2e_ms``: to its last byte; ``itl_ms``: the gaps between its streamed tokens;
- ``tokens_per_s_per_user``: per request, (output tokens - 1) / (last token - first token);
- ``peak_rss_mb``: this process's peak RSS during the level (weights, the KV cache of N slots,
  the server, the clients), the peak reset before each level where /proc/self/clear_refs allows.

``users_supported`` is the largest N whose p95 TTFT and median per-user tokens/s meet the target's
``service_level``; 0 with the reason when no level does.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgedistill.bench.measure import FILLER, percentiles, prompt_ids_of_length, rss_mb

log = logging.getLogger(__name__)


def ask(url: str, messages: list[dict], max_tokens: int, timeout_s: float = 900) -> dict[str, Any]:
    """One streamed chat request (stdlib HTTP, no client library): its timings and token count."""
    parts = urlsplit(url)
    body = json.dumps({"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    start = time.perf_counter()
    try:
        conn.request("POST", parts.path.rstrip("/") + "/chat/completions", body,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {resp.read()[:300].decode(errors='replace')}"}
        stamps, first, tokens, finish = [], None, None, None
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("error"):
                return {"error": obj["error"].get("message", "error")}
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            for ch in obj.get("choices") or []:
                now = time.perf_counter()
                if ch["delta"].get("content"):
                    stamps.append(now)
                if (ch["delta"].get("content") or ch.get("finish_reason")) and first is None:
                    first = now
                finish = ch.get("finish_reason") or finish
        end = time.perf_counter()
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    out = {"ttft_s": (first or end) - start, "e2e_s": end - start, "tokens": tokens or len(stamps),
           "finish_reason": finish, "gaps_s": [b - a for a, b in zip(stamps, stamps[1:])]}
    if out["tokens"] >= 2 and len(stamps) >= 2 and stamps[-1] > stamps[0]:
        out["tokens_per_s"] = (out["tokens"] - 1) / (stamps[-1] - stamps[0])
    return out


def closed_loop(url: str, prompts: list[list[dict]], users: int, per_user: int,
                max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    """``users`` clients, each sending ``per_user`` requests back to back (the next prompt in
    turn from ``prompts``); (every request's result, the wall time from first send to last reply)."""
    turn = itertools.count()
    results: list[dict[str, Any]] = []

    def client() -> None:
        for _ in range(per_user):
            results.append(ask(url, prompts[next(turn) % len(prompts)], max_tokens))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def summarize(results: list[dict[str, Any]], wall: float, users: int) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    ms = lambda xs: percentiles([x * 1e3 for x in xs], (50, 95))  # noqa: E731
    tokens = sum(r["tokens"] for r in ok)
    out = {"users": users, "requests": len(results), "errors": len(results) - len(ok),
           "seconds": round(wall, 6), "output_tokens": tokens,
           "tokens_per_s": round(tokens / wall, 3) if wall else None,
           "requests_per_s": round(len(ok) / wall, 4) if wall else None,
           "ttft_ms": ms([r["ttft_s"] for r in ok]), "e2e_ms": ms([r["e2e_s"] for r in ok]),
           "itl_ms": ms([g for r in ok for g in r["gaps_s"]]),
           "tokens_per_s_per_user": percentiles([r["tokens_per_s"] for r in ok if "tokens_per_s" in r], (5, 50)),
           "finish_reasons": {k: sum(1 for r in ok if r["finish_reason"] == k)
                              for k in sorted({str(r["finish_reason"]) for r in ok})}}
    if len(ok) < len(results):
        out["first_error"] = next(r["error"] for r in results if "error" in r)
    return out


def usable_prompts(rt: Any, prompts: list[list[dict]], context: int, max_tokens: int,
                   prompt_tokens: int) -> tuple[list[list[dict]], int]:
    """(the prompts whose chat-template ids and ``max_tokens`` fit ``context``, how many did not).
    Without prompts (a bare artifact), one filler prompt of ``prompt_tokens`` tokens."""
    if not prompts:
        words = FILLER.split()
        n = len(prompt_ids_of_length(rt, prompt_tokens))
        return [[{"role": "user", "content": " ".join(words[i % len(words)] for i in range(n))}]], 0
    fit = [m for m in prompts if len(rt.chat_prompt_ids(m)) + max_tokens <= context]
    return fit, len(prompts) - len(fit)


def measure_concurrency(spec: dict[str, Any]) -> dict[str, Any]:
    """The sweep for one artifact in this process. ``spec``: kind, path, threads, providers,
    gpu_layers, levels, prompts (message lists), generate_tokens (the cap), context (per user),
    requests_per_user, warmup, prompt_tokens (the filler prompt's length without prompts)."""
    from edgedistill import runtimes
    from edgedistill.serve.app import listen, make_app, running
    from edgedistill.serve.engine import make_engine

    kind, cap, context = spec["kind"], spec["generate_tokens"], spec.get("context") or 512
    rt = runtimes.load(kind, spec["path"], threads=spec.get("threads"),
                       providers=spec.get("providers") or None, gpu_layers=spec.get("gpu_layers", 0),
                       n_ctx=256 if kind == "gguf" else None)
    prompts, too_long = usable_prompts(rt, spec.get("prompts") or [], context, cap, spec.get("prompt_tokens", 64))
    if not prompts:
        rt.close()
        return {"error": f"none of the {too_long} eval prompts fits {context} tokens with {cap} to answer"}
    levels, per_user = sorted(set(spec["levels"])), spec.get("requests_per_user", 2)
    out_levels, reset = [], True
    for n in levels:
        engine = make_engine(rt, slots=n, context=context)
        sock = listen("127.0.0.1", 0)
        try:
            with running(make_app(engine, Path(spec["path"]).name), sock) as url:
                for i in range(spec.get("warmup", 1)):
                    ask(url, prompts[i % len(prompts)], cap)
                reset = _reset_peak_rss() and reset
                results, wall = closed_loop(url, prompts, n, per_user, cap)
                level = summarize(results, wall, n)
                level["peak_rss_mb"] = round(rss_mb(), 1)
        finally:
            sock.close()
            engine.close()
        log.info("%d user(s): %.1f tok/s in all, TTFT p95 %s ms", n, level["tokens_per_s"] or 0,
                 level["ttft_ms"]["p95"])
        out_levels.append(level)
    engine_name = "continuous batching" if kind == "gguf" else "one request at a time"
    rt.close()
    return {"levels": out_levels, "engine": engine_name, "via": "loopback HTTP, OpenAI-compatible, streamed",
            "max_tokens": cap, "context_per_user": context, "requests_per_user": per_user,
            "warmup": spec.get("warmup", 1), "prompts": len(prompts), "prompts_too_long": too_long,
            "prompt_source": "the run's eval prompts" if spec.get("prompts") else "a filler prompt",
            "peak_rss_basis": "per level (peak reset before each)" if reset else
            "cumulative (this system cannot reset the peak): each level's peak includes the earlier ones",
            "torch_imported": __import__("sys").modules.get("torch") is not None}


def users_supported(sweep: dict[str, Any] | None, service_level: dict[str, Any]) -> dict[str, Any]:
    """``users_supported`` (the largest level meeting ``service_level``: ``max_ttft_ms_p95``, and
    ``min_tokens_per_s_per_user`` at the median user) and its reason; each level marked."""
    limits = {k: v for k, v in (service_level or {}).items() if v is not None}
    if not sweep or "levels" not in sweep:
        why = (sweep or {}).get("error") or "no concurrency sweep (bench --concurrency 1,2,4,8)"
        return {"users_supported": None, "users_supported_reason": why}
    if not limits:
        return {"users_supported": None,
                "users_supported_reason": "the target sets no service_level to judge the levels by"}
    best, misses = 0, []
    for level in sweep["levels"]:
        why = []
        ttft = level["ttft_ms"].get("p95")
        rate = level["tokens_per_s_per_user"].get("p50")
        if level["errors"]:
            why.append(f"{level['errors']} failed request(s)")
        if "max_ttft_ms_p95" in limits and (ttft is None or ttft > limits["max_ttft_ms_p95"]):
            why.append(f"p95 TTFT {ttft} ms > {limits['max_ttft_ms_p95']} ms")
        if "min_tokens_per_s_per_user" in limits and rate is None:  # every answer was one token
            level["tokens_per_s_per_user_note"] = "no answer of two tokens or more: speed not judged"
        elif "min_tokens_per_s_per_user" in limits and rate < limits["min_tokens_per_s_per_user"]:
            why.append(f"median {rate} tokens/s per user < {limits['min_tokens_per_s_per_user']}")
        level["meets_service_level"] = not why
        if why:
            misses.append(f"{level['users']} users: {', '.join(why)}")
        else:
            best = max(best, level["users"])
    top = max(level["users"] for level in sweep["levels"])
    if best == 0:
        reason = "no level meets the service level: " + "; ".join(misses)
    elif best == top:
        reason = f"every level up to {top} meets it; more users may fit (not tried)" if not misses else \
            f"{best} users meet it (the most tried); missed at {'; '.join(misses)}"
    else:
        reason = f"{best} users meet it; missed at " + "; ".join(misses)
    return {"users_supported": best, "users_supported_reason": reason, "service_level": limits}
