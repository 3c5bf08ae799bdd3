"""What the device side measures: one artifact in this process, the machine, its memory bandwidth,
and its energy sensor. Imports no torch (nor anything heavy at module level): it runs on devices.

Timing of one artifact (``measure_artifact``), after ``warmup`` untimed runs, over
``repetitions`` timed runs of a ``prompt_tokens`` prefill and ``generate_tokens`` greedy tokens
(end-of-turn suppressed, so every run decodes the same count):

- ``load_s``: ``runtimes.load`` in a fresh process (cold: file read, graph build);
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
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

RUNTIME_NAMES = {"gguf": "llama.cpp", "onnx": "onnxruntime", "ortgenai": "onnxruntime-genai", "hf": "transformers"}
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


# ---------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _l3_cache_mb() -> float | None:
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (idx / "level").read_text().strip() == "3":
                size = (idx / "size").read_text().strip().upper()
                mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(size[-1], 1 / (1024 * 1024))
                return round(float(size.rstrip("KMG")) * mult, 2)
        except (OSError, ValueError):
            continue
    return None


def host_info() -> dict[str, Any]:
    """The machine the numbers come from, as it describes itself."""
    import psutil

    return {
        "hostname": platform.node(), "arch": platform.machine(), "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
        "ram_mb": round(psutil.virtual_memory().total / 2**20), "l3_cache_mb": _l3_cache_mb(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
    }


def measure_bandwidth(threads: int = 1, size_mb: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Memory bandwidth by numpy copy (bytes read + bytes written per second), best of
    ``repeats``, over buffers several times the L3 cache so DRAM is what is measured.

    ``threads`` copy disjoint slices at once (numpy lets go of the GIL while it copies): measure
    with the threads the decode uses, since one core alone does not saturate the memory bus."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import psutil

    l3 = _l3_cache_mb() or 32.0
    if size_mb is None:
        size_mb = int(max(256, 2 * l3))
        size_mb = int(min(size_mb, psutil.virtual_memory().available / 2**20 / 6))
    threads = max(1, threads)
    n = size_mb * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    cuts = np.linspace(0, n, threads + 1, dtype=np.int64)
    pieces = [(dst[a:b], src[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):  # the first pass faults the pages in, untimed
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), pieces))
            if i:
                best = min(best, time.perf_counter() - t0)
    gbs = 2 * src.nbytes / best / 1e9
    return {"copy_gbs": round(gbs, 2), "buffer_mb": size_mb, "repeats": repeats, "l3_cache_mb": l3,
            "threads": threads,
            "method": f"numpy copyto on {threads} thread(s), (read + write bytes) / best time"}


# ---------------------------------------------------------------------------------------------
# energy


class RaplMeter:
    """RAPL package energy (/sys/class/powercap/intel-rapl:N/energy_uj), wrap-around handled."""

    note = "RAPL package energy (whole socket, other processes included)"

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self.zones: list[tuple[Path, int]] = []
        self.reason: str | None = None
        self._start: list[int] = []
        if not root.is_dir():
            self.reason = f"no {root} on this machine (no RAPL sensor exposed)"
            return
        for zone in sorted(root.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:
                continue  # sub-zones (core, uncore) are inside the package figure
            try:
                rng = int((zone / "max_energy_range_uj").read_text())
                int((zone / "energy_uj").read_text())
                self.zones.append((zone / "energy_uj", rng))
            except (OSError, ValueError) as e:
                self.reason = f"RAPL present but not readable ({e}); run as root or chmod energy_uj"
        if not self.zones and self.reason is None:
            self.reason = "no RAPL package zone under /sys/class/powercap"

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def _read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.zones]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        total = 0
        for (_, rng), a, b in zip(self.zones, self._start, self._read()):
            total += b - a if b >= a else b + rng - a
        return total / 1e6


# The rail that carries the whole module's input power, by Jetson generation (Orin, Xavier: VDD_IN;
# Nano, TX2: POM_5V_IN; AGX Thor/others: VIN_SYS_5V0). Without one, every rail reported is summed.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def tegrastats_power_mw(line: str) -> tuple[float, str] | None:
    """(instantaneous power in mW, what was read) from one tegrastats line; None without rails."""
    rails = {name: float(now) for name, now, _avg in _RAIL.findall(line)
             if not name.startswith(("RAM", "SWAP", "IRAM", "LFB", "EMC", "GR3D", "APE", "MTS"))}
    for name in _INPUT_RAILS:
        if name in rails:
            return rails[name], name
    if rails:
        return sum(rails.values()), "+".join(sorted(rails))
    return None


class TegrastatsMeter:
    """Jetson board power from ``tegrastats`` (its INA3221 rails), sampled every ``interval_ms``
    while the timed runs go, integrated over time (trapezoids between samples)."""

    def __init__(self, exe: str | None = None, interval_ms: int = 100) -> None:
        import shutil

        self.exe = exe or shutil.which("tegrastats")
        self.interval_ms = interval_ms
        self.reason = None if self.exe else "no tegrastats on PATH (not a Jetson)"
        self.note = "tegrastats"
        self._proc: Any = None
        self._samples: list[tuple[float, float]] = []
        self._thread: Any = None

    @property
    def available(self) -> bool:
        return self.exe is not None

    def _reader(self) -> None:
        for line in self._proc.stdout:
            got = tegrastats_power_mw(line)
            if got is not None:
                self._samples.append((time.monotonic(), got[0]))
                self.note = (f"tegrastats {got[1]} (board power, other processes included), "
                             f"sampled every {self.interval_ms} ms")

    def start(self) -> None:
        import subprocess
        import threading

        self._samples = []
        self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10 * self.interval_ms / 1e3 + 2
        while not self._samples and time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(self.interval_ms / 4e3)  # the timed runs start once power is being read
        self._t0 = time.monotonic()

    def stop(self) -> float | None:
        t1 = time.monotonic()
        time.sleep(self.interval_ms / 1e3 * 1.5)  # one more sample past the end
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - a stuck tegrastats must not sink the bench
            self._proc.kill()
        self._thread.join(timeout=2)
        pts = self._samples
        if len(pts) < 2:
            self.reason = f"tegrastats gave {len(pts)} power samples; need 2"
            return None
        joules = 0.0
        for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
            lo, hi = max(ta, self._t0), min(tb, t1)
            if hi > lo:  # the part of this interval inside the timed window
                joules += (pa + pb) / 2 / 1e3 * (hi - lo)
        return joules


def energy_meter() -> RaplMeter | TegrastatsMeter | None:
    """RAPL where the kernel exposes it, else tegrastats where it exists; None (with the
    reasons, as ``energy_meter.reason``) otherwise."""
    rapl = RaplMeter()
    if rapl.available:
        return rapl
    tegra = TegrastatsMeter()
    if tegra.available:
        return tegra
    energy_meter.reason = f"{rapl.reason}; {tegra.reason}"  # type: ignore[attr-defined]
    return None


# ---------------------------------------------------------------------------------------------
# one artifact


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


def _rss_mb() -> float:
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
    gpu_layers, prompt_tokens, generate_tokens, repetitions, warmup."""
    from edgedistill import runtimes

    kind = spec["kind"]
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    rt = runtimes.load(kind, spec["path"], threads=spec.get("threads"),
                       providers=spec.get("providers") or None, gpu_layers=spec.get("gpu_layers", 0))
    load_s = time.perf_counter() - t0
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
        "kind": kind, "runtime": RUNTIME_NAMES[kind], "runtime_version": runtime_version(kind),
        "threads": spec.get("threads"), "providers": spec.get("providers") or [],
        "gpu_layers": spec.get("gpu_layers", 0),
        "prompt_tokens": len(prompt), "generate_tokens": n_gen, "tokens_per_run": produced // max(1, spec["repetitions"]),
        "repetitions": spec["repetitions"], "warmup": spec["warmup"],
        "load_s": round(load_s, 4),
        "ttft_ms": percentiles(ttft),
        "token_latency_ms": percentiles(gaps),
        "decode_tokens_per_s": {k: (round(1e3 / v, 3) if v else None) for k, v in ms.items()},
        "decode_tokens_per_s_runs": [round(r, 3) for r in rates],
        "decode_cpu_ms_per_token": percentiles(cpu_ms),  # CPU time of all threads; wall time is above
        "peak_rss_mb": round(_rss_mb(), 1), "rss_before_load_mb": round(rss_before, 1),
        "energy_per_token_j": round(energy / produced, 6) if energy is not None and produced else None,
        "energy_note": (meter.note if energy is not None else meter.reason) if meter is not None
        else energy_meter.reason,  # type: ignore[attr-defined]
        "torch_imported": "torch" in sys.modules,
    }


def artifact_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    if p.suffix == ".onnx":  # the graph and its external data beside it (model.onnx.data, model.onnx_data)
        return sum(q.stat().st_size for q in p.parent.iterdir()
                   if q.is_file() and (q.name.startswith(p.name) or q.name.startswith(p.stem + ".onnx")))
    return p.stat().st_size


def main_one(arg: str) -> int:
    """``python -m edgedistill.bench --one JSON``: measure one artifact, print one JSON line."""
    spec = json.loads(arg)
    try:
        out = measure_artifact(spec)
    except Exception as e:  # noqa: BLE001 -- reported to the parent as this artifact's error
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(out))
    return 0
