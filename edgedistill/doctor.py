"""`edgedistill doctor`: what is installed, what works, what is missing and the command that fixes it."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

import psutil

from edgedistill.config import cache_dir

INSTALL = "bash scripts/install.sh"
REQUIRED = (
    "torch", "transformers", "peft", "accelerate", "safetensors", "optimum-onnx", "onnx",
    "onnxruntime", "onnxruntime-genai", "llama-cpp-python", "openai", "sentencepiece",
    "pydantic", "click", "pyyaml", "tqdm", "psutil",
)

_LLAMA_PROBE = """
import json, llama_cpp
info = llama_cpp.llama_print_system_info()
info = info.decode() if isinstance(info, bytes) else str(info)
print(json.dumps({"version": llama_cpp.__version__, "system_info": info}))
"""


def _cpu_has_amx() -> bool:
    try:
        return "amx" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def llama_cpp_status() -> tuple[dict | None, str | None]:
    """(version and system info, None) when llama.cpp loads in a fresh process, else (None, why)."""
    try:
        out = subprocess.run([sys.executable, "-c", _LLAMA_PROBE], capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, "loading llama_cpp timed out"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["exit code %d" % out.returncode])[-1]
        return None, last
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def doctor(echo: Callable[[str], None]) -> int:
    """Print a report; return the number of problems found."""
    problems = 0

    def bad(msg: str, fix: str) -> None:
        nonlocal problems
        problems += 1
        echo(f"  ✗ {msg}\n      fix: {fix}")

    echo(f"Python {platform.python_version()} ({sys.executable}) on {platform.machine()}")
    if sys.version_info < (3, 10):
        bad("Python 3.10 or newer is needed", "use a newer Python")

    echo("Packages:")
    for name in REQUIRED:
        try:
            echo(f"  ✓ {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            bad(f"{name} is not installed", INSTALL)
    try:
        torch_v = metadata.version("torch")
        if "+cpu" not in torch_v and not shutil.which("nvidia-smi"):
            echo(f"  ! torch {torch_v} is a CUDA build on a machine without an NVIDIA GPU "
                 "(works, but large); `pip install torch==2.13.0` is the CPU build")
    except metadata.PackageNotFoundError:
        pass

    echo("llama.cpp:")
    info, why = llama_cpp_status()
    if info is None:
        bad(f"llama_cpp does not load: {why}", INSTALL)
    else:
        echo(f"  ✓ llama-cpp-python {info['version']} loads")
        sysinfo = info["system_info"]
        if "AMX_INT8 = 1" in sysinfo and _cpu_has_amx():
            bad("llama.cpp was built with AMX on an AMX CPU: quantized GGUF decode segfaults",
                f"{INSTALL} --rebuild-llama-cpp")
        else:
            echo("  ✓ built without the AMX buffer type (no quantized-decode crash)")

    echo("Resources:")
    cache = cache_dir()
    for label, path in (("working directory", Path.cwd()), ("cache " + str(cache), cache)):
        probe = path if path.exists() else path.parent if path.parent.exists() else Path.home()
        free_gb = shutil.disk_usage(probe).free / 1e9
        mark = "✓" if free_gb >= 5 else "✗"
        line = f"{free_gb:.1f} GB free on {label}"
        if mark == "✓":
            echo(f"  ✓ {line}")
        else:
            bad(line + " (a run of the demo needs about 5 GB)", "free disk space or set EDGEDISTILL_CACHE")
    mem = psutil.virtual_memory()
    echo(f"  {'✓' if mem.available > 4e9 else '!'} {mem.available / 2**30:.1f} GiB memory available "
         f"of {mem.total / 2**30:.1f} GiB, {psutil.cpu_count()} CPUs")
    echo("No problems found." if problems == 0 else f"{problems} problem(s) found.")
    return problems
