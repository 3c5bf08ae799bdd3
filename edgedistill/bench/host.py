"""The machine the bench runs on, as it describes itself, and its memory bandwidth (measured, never
assumed). Imports nothing heavy at module level: it runs on devices."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def l3_cache_mb() -> float | None:
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
        "hostname": platform.node(), "arch": platform.machine(), "cpu": cpu_model(),
        "cores_logical": os.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
        "ram_mb": round(psutil.virtual_memory().total / 2**20), "l3_cache_mb": l3_cache_mb(),
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

    l3 = l3_cache_mb() or 32.0
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
