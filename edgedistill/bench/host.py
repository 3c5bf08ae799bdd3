"""The machine the bench runs on, as it describes itself (CPU, board, cores, RAM, accelerators), and
its memory bandwidth at a given working-set size (measured, never assumed). Imports nothing heavy
at module level: it runs on devices."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

# Tegra SoC (device-tree "nvidia,tegraNNN") → the CUDA generation of its GPU
TEGRA_GPU = {"tegra210": "maxwell", "tegra186": "pascal", "tegra194": "volta", "tegra234": "ampere",
             "tegra264": "blackwell"}
FASTRPC_DEVICES = ("/dev/fastrpc-cdsp", "/dev/fastrpc-cdsp-secure", "/dev/adsprpc-smd")
MIN_WORKING_SET = 2**20  # below 1 MiB Python's per-copy overhead, not memory, is what is timed
BYTES_PER_TIMING = 256 * 2**20  # bytes each timed pass moves (small working sets are copied repeatedly)


def _cmd(*args: str, timeout: float = 10) -> str | None:
    """A command's stdout, or None when it is missing, fails or hangs."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_bytes().replace(b"\0", b" ").decode(errors="replace").strip() or None
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo's model name (x86), else lscpu's (it names ARM cores, e.g.
    Cortex-A76, from their part numbers), else what the platform says."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    for line in (_cmd("lscpu") or "").splitlines():
        if line.lower().startswith("model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def board() -> str | None:
    """The board or SoC: the device tree's model (Raspberry Pi, Jetson), Android's SoC properties."""
    model = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
    if model:
        return model
    soc = " ".join(filter(None, (_cmd("getprop", "ro.soc.manufacturer", timeout=5),
                                 _cmd("getprop", "ro.soc.model", timeout=5))))
    return soc or None


def _cuda_generation(capability: str) -> str | None:
    try:
        major, minor = (int(x) for x in (capability.split(".") + ["0"])[:2])
    except ValueError:
        return None
    if major >= 10:
        return "blackwell"
    if major == 7:
        return "turing" if minor >= 5 else "volta"
    if major == 8:
        return "ada" if minor >= 9 else "ampere"
    return {5: "maxwell", 6: "pascal", 9: "hopper"}.get(major)


def accelerators() -> list[str]:
    """The accelerators this machine has, named as targets list them (hardware.ACCELERATORS):
    NVIDIA GPUs by ``nvidia-smi`` (generation from the compute capability) or the driver's /proc
    entry, Jetson boards by their Tegra device tree, Qualcomm Adreno by /sys/class/kgsl or Android's
    EGL property, Hexagon by a FastRPC device node, Mali by /dev/mali0."""
    found: set[str] = set()
    smi = _cmd("nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader")
    for cap in (smi or "").splitlines():
        found.add("cuda")
        if _cuda_generation(cap.strip()):
            found.add(f"cuda-{_cuda_generation(cap.strip())}")
    if Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir()):
        found.add("cuda")
    compatible = _read("/proc/device-tree/compatible") or ""
    tegra = next((g for soc, g in TEGRA_GPU.items() if f"nvidia,{soc}" in compatible), None)
    if tegra or Path("/etc/nv_tegra_release").is_file():
        found.update({"jetson", "cuda"} | ({f"cuda-{tegra}"} if tegra else set()))
    if Path("/sys/class/kgsl/kgsl-3d0").exists() or (_cmd("getprop", "ro.hardware.egl", timeout=5) or "") == "adreno":
        found.add("adreno-gpu")
    if any(Path(d).exists() for d in FASTRPC_DEVICES):
        found.add("hexagon-npu")
    if Path("/dev/mali0").exists():
        found.add("mali-gpu")
    return sorted(found)


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
        "hostname": platform.node(), "arch": platform.machine(), "cpu": cpu_model(), "board": board(),
        "cores_logical": os.cpu_count(), "cores_physical": psutil.cpu_count(logical=False),
        "ram_mb": round(psutil.virtual_memory().total / 2**20), "l3_cache_mb": l3_cache_mb(),
        "accelerators": accelerators(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
    }


def measure_bandwidth(threads: int = 1, working_set_bytes: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Memory bandwidth by numpy copy at a working-set size: a buffer of ``working_set_bytes``
    (half copied onto the other half; bytes read + bytes written per second), best of ``repeats``.

    Given the bytes a model reads per token, this is the bandwidth the decode can have: a model
    that fits in cache is bounded by cache bandwidth, a larger one by DRAM. Without it, DRAM
    bandwidth: a buffer several times the L3 cache. A larger working set is measured at
    ``max(256 MB, 4 x L3)`` (at most 1 GB: DRAM either way; recorded as ``buffer_mb``).

    ``threads`` copy disjoint slices at once (numpy lets go of the GIL while it copies): measure
    with the threads the decode uses, since one core alone does not saturate the memory bus."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import psutil

    l3 = l3_cache_mb() or 32.0
    dram = int(min(max(256, 4 * l3), 1024) * 2**20)
    asked = working_set_bytes if working_set_bytes else dram
    size = int(min(max(asked, MIN_WORKING_SET), dram, psutil.virtual_memory().available / 4))
    threads = max(1, threads)
    n = max(threads, size // 16)  # float64 elements per half
    buf = np.ones(2 * n, dtype=np.float64)
    src, dst = buf[:n], buf[n:]
    inner = max(1, math.ceil(BYTES_PER_TIMING / (2 * src.nbytes)))
    cuts = np.linspace(0, n, threads + 1, dtype=np.int64)
    pieces = [(dst[a:b], src[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]

    def copy(piece: tuple) -> None:
        for _ in range(inner):
            np.copyto(*piece)

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):  # the first pass faults the pages in, untimed
            t0 = time.perf_counter()
            list(pool.map(copy, pieces))
            if i:
                best = min(best, time.perf_counter() - t0)
    gbs = 2 * src.nbytes * inner / best / 1e9
    return {"copy_gbs": round(gbs, 2), "buffer_mb": round(buf.nbytes / 2**20, 3),
            "working_set_bytes": working_set_bytes, "repeats": repeats, "l3_cache_mb": l3,
            "threads": threads,
            "method": f"numpy copyto on {threads} thread(s) over a {buf.nbytes / 2**20:.3g} MB buffer "
                      f"(half onto half, x{inner} per pass), (read + write bytes) / best time"}
